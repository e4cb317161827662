//! The Matrix server-server protocol as a library: server signing keys, canonical JSON signing
//! and verification, and PDU hashing, redaction and event IDs per room version. It holds no
//! storage and no HTTP server; X-Matrix, discovery and the outgoing client come with federation.

pub mod keys;
pub mod pdu;

pub use keys::ServerSigningKey;
