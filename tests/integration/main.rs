//! Integration tests: each starts Hearth in-process on an ephemeral port with a temporary RocksDB
//! folder and drives it from outside, as a client (matrix-sdk) or with raw HTTP. Interop tests
//! (`synapse_*`) also start a real Synapse next to it (see `synapse.rs`).

mod common;

mod accounts_sdk;
mod admin;
mod appservice;
mod appservice_e2ee;
mod appservice_irc;
mod bad_input;
mod calls;
mod directory;
mod e2ee_sdk;
mod federation;
mod federation_bad_input;
mod federation_rooms;
mod hangup;
mod history_sdk;
mod key_backup;
mod key_backup_sdk;
mod media;
mod media_federation;
mod media_s3;
mod media_sdk;
mod peers;
mod persistence;
mod push_gateway;
mod redactions;
mod relations;
mod room_features;
mod rooms;
mod search;
mod sliding_sync;
mod sliding_sync_sdk;
mod spaces;
mod synapse;
mod synapse_e2ee;
mod synapse_federation;
mod synapse_media;
mod synapse_rooms;
mod synapse_search;
mod synapse_spaces;
mod sync;
mod user_directory;
