//! Hearth, a Matrix homeserver.
//!
//! Requests enter through `api` (thin axum handlers over ruma types), domain logic lives in
//! `service`, and `storage` is the only code that touches RocksDB.

pub mod api;
pub mod config;
pub mod error;
pub mod federation_listener;
pub mod server;
pub mod service;
pub mod storage;
pub mod util;

pub use error::{Error, Result};
