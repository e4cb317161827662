//! The Matrix server-server protocol as a library: server signing keys, canonical JSON signing
//! and verification, PDU hashing, redaction and event IDs per room version, published server
//! keys, and X-Matrix request authentication. It holds no storage and no HTTP server.

pub mod discovery;
pub mod keys;
pub mod pdu;
pub mod server_keys;
pub mod xmatrix;

pub use keys::ServerSigningKey;
