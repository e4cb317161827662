//! End-to-end encryption as real clients do it (matrix-sdk): keys uploaded on sync, queried and
//! claimed, room keys shared over to-device messages, messages decrypted from /sync.

use std::time::Duration;

use matrix_sdk::{
    config::SyncSettings,
    room::MessagesOptions,
    ruma::{api::client::room::create_room, events::room::message::RoomMessageEventContent, uint},
};

use crate::common::TestServer;

fn settings() -> SyncSettings {
    SyncSettings::default().timeout(Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_message_is_decrypted_by_the_other_member() {
    let server = TestServer::start().await;
    let alice = server.sdk_user("alice").await;
    let bob = server.sdk_user("bob").await;
    // The first syncs upload each device's identity and one-time keys.
    alice.sync_once(settings()).await.expect("alice syncs");
    bob.sync_once(settings()).await.expect("bob syncs");
    let counts = server
        .get(
            "/_matrix/client/v3/sync?timeout=0",
            Some(bob.access_token().as_deref().unwrap()),
        )
        .await
        .1;
    assert!(
        counts["device_one_time_keys_count"]["signed_curve25519"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "bob's device uploaded one-time keys: {counts}"
    );

    let room = alice
        .create_room(create_room::v3::Request::new())
        .await
        .expect("createRoom");
    room.enable_encryption().await.expect("encryption enabled");
    let bob_id = bob.user_id().unwrap().to_owned();
    room.invite_user_by_id(&bob_id).await.expect("invite");
    bob.sync_once(settings())
        .await
        .expect("bob sees the invite");
    bob.join_room_by_id(room.room_id())
        .await
        .expect("bob joins");
    alice
        .sync_once(settings())
        .await
        .expect("alice sees bob join");

    room.send(RoomMessageEventContent::text_plain("the secret plan"))
        .await
        .expect("encrypted send");
    // What the server stored is ciphertext.
    let (_, page) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
                room.room_id()
            ),
            Some(bob.access_token().as_deref().unwrap()),
        )
        .await;
    assert_eq!(page["chunk"][0]["type"], "m.room.encrypted", "{page}");
    assert!(!page.to_string().contains("the secret plan"));

    // Bob's next sync brings the room key (to-device) and the message; he reads it.
    bob.sync_once(settings())
        .await
        .expect("bob syncs the message");
    let bob_room = bob.get_room(room.room_id()).expect("bob knows the room");
    let mut options = MessagesOptions::backward();
    options.limit = uint!(5);
    let messages = bob_room.messages(options).await.expect("/messages");
    let decrypted = messages
        .chunk
        .iter()
        .find(|ev| ev.encryption_info().is_some())
        .expect("a decrypted event");
    let body: String = decrypted
        .raw()
        .get_field::<serde_json::Value>("content")
        .unwrap()
        .and_then(|c| c["body"].as_str().map(str::to_owned))
        .unwrap_or_default();
    assert_eq!(body, "the secret plan");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_signed_second_device_decrypts_new_messages() {
    let server = TestServer::start().await;
    let alice = server.sdk_user("alice").await;
    let bob = server.sdk_user("bob").await;
    alice.sync_once(settings()).await.expect("alice syncs");
    bob.sync_once(settings()).await.expect("bob syncs");
    // Bob sets up cross-signing (the first upload needs no password).
    bob.encryption()
        .bootstrap_cross_signing(None)
        .await
        .expect("cross-signing keys uploaded");

    let room = alice
        .create_room(create_room::v3::Request::new())
        .await
        .expect("createRoom");
    room.enable_encryption().await.expect("encryption enabled");
    let bob_id = bob.user_id().unwrap().to_owned();
    room.invite_user_by_id(&bob_id).await.expect("invite");
    bob.sync_once(settings())
        .await
        .expect("bob sees the invite");
    bob.join_room_by_id(room.room_id())
        .await
        .expect("bob joins");

    // Bob logs in on a second device and signs it from the first with his self-signing key.
    let bob2 = server.sdk_login("bob").await;
    bob2.sync_once(settings())
        .await
        .expect("bob's second device syncs");
    let bob2_device = bob2.device_id().unwrap().to_owned();
    bob.sync_once(settings())
        .await
        .expect("bob learns of his new device");
    bob.sync_once(settings())
        .await
        .expect("bob queried its keys");
    let device = bob
        .encryption()
        .get_device(&bob_id, &bob2_device)
        .await
        .expect("device store")
        .expect("bob sees his second device");
    device.verify().await.expect("bob signs his second device");

    // Alice learns of the signature through her device-list updates.
    for _ in 0..3 {
        alice.sync_once(settings()).await.expect("alice syncs");
    }
    let seen = alice
        .encryption()
        .get_device(&bob_id, &bob2_device)
        .await
        .expect("device store")
        .expect("alice sees bob's second device");
    assert!(
        seen.is_cross_signed_by_owner(),
        "bob's new device is cross-signed"
    );

    room.send(RoomMessageEventContent::text_plain(
        "for both of bob's devices",
    ))
    .await
    .expect("encrypted send");
    bob2.sync_once(settings())
        .await
        .expect("bob's second device syncs");
    let bob2_room = bob2.get_room(room.room_id()).expect("the room");
    let mut options = MessagesOptions::backward();
    options.limit = uint!(5);
    let messages = bob2_room.messages(options).await.expect("/messages");
    let decrypted = messages
        .chunk
        .iter()
        .find(|ev| ev.encryption_info().is_some())
        .expect("bob's second device decrypted the message");
    let body = decrypted
        .raw()
        .get_field::<serde_json::Value>("content")
        .unwrap()
        .and_then(|c| c["body"].as_str().map(str::to_owned))
        .unwrap_or_default();
    assert_eq!(body, "for both of bob's devices");
}
