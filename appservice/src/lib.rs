//! The Matrix application-service API as a library: registration files (parsing, validation,
//! namespace matching) and the client that pushes transactions and queries to appservices. It
//! holds no storage: the server keeps the queue of what each appservice has yet to receive.

pub mod client;
pub mod registration;

pub use client::{Client, ClientError, DeviceLists, Transaction};
pub use registration::{check_together, load_all, Namespaces, Registration, RegistrationError};
