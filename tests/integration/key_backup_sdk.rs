//! Key backup as real clients use it (matrix-sdk): a device enables recovery, which creates a
//! backup and uploads its room keys; a fresh device of the same user recovers with the recovery
//! key, downloads the room keys from the backup and decrypts a message sent before it existed.

use std::time::Duration;

use matrix_sdk::{
    config::SyncSettings,
    room::MessagesOptions,
    ruma::{
        api::client::{
            room::create_room,
            uiaa::{AuthData, MatrixUserIdentifier, Password, UserIdentifier},
        },
        events::room::message::RoomMessageEventContent,
        uint, RoomId,
    },
    Client,
};

use crate::common::TestServer;

const PASSWORD: &str = "a long password";

async fn login(server: &TestServer, name: &str) -> Client {
    let client = Client::builder()
        .homeserver_url(server.url())
        .build()
        .await
        .expect("client builds");
    client
        .matrix_auth()
        .login_username(name, PASSWORD)
        .send()
        .await
        .expect("login");
    client
}

fn settings() -> SyncSettings {
    SyncSettings::default().timeout(Duration::from_millis(200))
}

/// Cross-signing keys go into secret storage next to the backup key; the server asks for the
/// password only when replacing existing ones, so answer a challenge if there is one.
async fn bootstrap_cross_signing(client: &Client, name: &str) {
    let Err(e) = client.encryption().bootstrap_cross_signing(None).await else {
        return;
    };
    let uiaa = e.as_uiaa_response().expect("only a UIAA challenge");
    let mut password = Password::new(
        UserIdentifier::Matrix(MatrixUserIdentifier::new(name.to_owned())),
        PASSWORD.to_owned(),
    );
    password.session = uiaa.session.clone();
    client
        .encryption()
        .bootstrap_cross_signing(Some(AuthData::Password(password)))
        .await
        .expect("cross-signing bootstrapped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_device_restores_room_keys_from_backup() {
    let server = TestServer::start().await;
    server.register("alice", PASSWORD).await;
    let first = login(&server, "alice").await;
    first
        .sync_once(settings())
        .await
        .expect("first device syncs");
    bootstrap_cross_signing(&first, "alice").await;

    let room = first
        .create_room(create_room::v3::Request::new())
        .await
        .expect("createRoom");
    room.enable_encryption().await.expect("encryption enabled");
    first.sync_once(settings()).await.expect("sync");
    room.send(RoomMessageEventContent::text_plain("kept in the backup"))
        .await
        .expect("encrypted send");
    let room_id = room.room_id().to_owned();

    // Enabling recovery creates the backup and waits until the room key is uploaded.
    let recovery_key = first
        .encryption()
        .recovery()
        .enable()
        .wait_for_backups_to_upload()
        .await
        .expect("recovery enabled");
    let token = first.access_token().expect("token");
    let (status, info) = server
        .get("/_matrix/client/v3/room_keys/version", Some(&token))
        .await;
    assert_eq!(status, 200, "{info}");
    assert!(info["count"].as_u64().unwrap_or(0) >= 1, "{info}");

    // A new device knows nothing of the room key until it recovers.
    let second = login(&server, "alice").await;
    second
        .sync_once(settings())
        .await
        .expect("second device syncs");
    assert!(
        decrypted_bodies(&second, &room_id).await.is_empty(),
        "no room key before recovery"
    );
    second
        .encryption()
        .recovery()
        .recover(&recovery_key)
        .await
        .expect("recovered with the recovery key");
    second
        .encryption()
        .backups()
        .download_room_keys_for_room(&room_id)
        .await
        .expect("room keys downloaded");

    assert_eq!(
        decrypted_bodies(&second, &room_id).await,
        ["kept in the backup"]
    );
}

/// Bodies of the room's recent messages that the client could decrypt.
async fn decrypted_bodies(client: &Client, room_id: &RoomId) -> Vec<String> {
    let room = client.get_room(room_id).expect("the device knows the room");
    let mut options = MessagesOptions::backward();
    options.limit = uint!(10);
    let messages = room.messages(options).await.expect("/messages");
    messages
        .chunk
        .iter()
        .filter(|ev| ev.encryption_info().is_some())
        .filter_map(|ev| {
            ev.raw()
                .get_field::<serde_json::Value>("content")
                .ok()
                .flatten()
                .and_then(|c| c["body"].as_str().map(str::to_owned))
        })
        .collect()
}
