//! The Matrix server-server protocol as a library: server signing keys, canonical JSON signing
//! and verification, the X-Matrix authorization header, server discovery and PDU hashing,
//! redaction and event IDs per room version. It holds no storage and no HTTP server.
//!
//! The foundation issue sets up this crate in the workspace; the rooms and federation issues fill
//! it in.
