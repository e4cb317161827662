//! The Matrix application-service API as a library: registration files, namespace matching and
//! the transaction client. It holds no storage.
//!
//! The foundation issue sets up this crate in the workspace; the application-service issue fills
//! it in.
