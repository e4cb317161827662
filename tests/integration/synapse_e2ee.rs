//! End-to-end encryption across Hearth and Synapse, with a matrix-sdk client on each: device
//! keys queried and one-time keys claimed over federation, room keys sent as to-device messages
//! both ways, and device-list updates telling each side of the other's new devices.

use std::time::Duration;

use matrix_sdk::{
    config::SyncSettings,
    room::MessagesOptions,
    ruma::{
        api::client::room::{create_room, Visibility},
        api::client::uiaa::{AuthData, MatrixUserIdentifier, Password, UserIdentifier},
        events::room::{member::MembershipState, message::RoomMessageEventContent},
        DeviceId, OwnedServerName, RoomId, UserId,
    },
    Client, RoomState,
};
use serde_json::Value;

use crate::{
    common::{eventually, TestServer, TEST_PASSWORD},
    synapse::Synapse,
};

fn settings() -> SyncSettings {
    SyncSettings::default().timeout(Duration::from_millis(200))
}

/// The decrypted text bodies `client` has of a room, after syncing once.
async fn decrypted(client: &Client, room_id: &RoomId) -> Vec<String> {
    let _ = client.sync_once(settings()).await;
    let Some(room) = client.get_room(room_id) else {
        return Vec::new();
    };
    let mut options = MessagesOptions::backward();
    options.limit = ruma::uint!(50);
    let Ok(messages) = room.messages(options).await else {
        return Vec::new();
    };
    messages
        .chunk
        .iter()
        .filter(|ev| ev.encryption_info().is_some())
        .filter_map(|ev| {
            ev.raw()
                .get_field::<Value>("content")
                .ok()
                .flatten()
                .and_then(|c| c["body"].as_str().map(str::to_owned))
        })
        .collect()
}

/// Waits until `client` decrypts `text` in the room.
async fn decrypts(client: &Client, who: &str, room_id: &RoomId, text: &str) {
    eventually(30, &format!("{who} decrypts {text:?}"), || async {
        decrypted(client, room_id)
            .await
            .iter()
            .any(|t| t == text)
            .then_some(())
    })
    .await;
}

/// Waits until `client` has `user` joined to the room.
async fn sees_joined(client: &Client, room_id: &RoomId, user: &UserId) {
    eventually(
        30,
        &format!("{user} joined, as the other side has it"),
        || async {
            client.sync_once(settings()).await.ok()?;
            let room = client.get_room(room_id)?;
            let member = room.get_member_no_sync(user).await.ok().flatten()?;
            (member.membership() == &MembershipState::Join).then_some(())
        },
    )
    .await;
}

/// Sends an encrypted text message as `client`.
async fn say(client: &Client, room_id: &RoomId, text: &str) {
    let room = client.get_room(room_id).expect("the client knows the room");
    room.send(RoomMessageEventContent::text_plain(text))
        .await
        .unwrap_or_else(|e| panic!("sending {text:?}: {e}"));
}

/// `creator` makes a public encrypted room, `joiner` joins it through `via`.
async fn encrypted_room(
    creator: &Client,
    joiner: &Client,
    via: OwnedServerName,
) -> ruma::OwnedRoomId {
    let mut request = create_room::v3::Request::new();
    request.preset = Some(create_room::v3::RoomPreset::PublicChat);
    request.visibility = Visibility::Public;
    let room = creator.create_room(request).await.expect("createRoom");
    room.enable_encryption().await.expect("encryption on");
    joiner
        .join_room_by_id_or_alias(room.room_id().into(), &[via])
        .await
        .expect("joins the other server's room");
    let joiner_id = joiner.user_id().expect("logged in").to_owned();
    sees_joined(creator, room.room_id(), &joiner_id).await;
    room.room_id().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_conversations_between_hearth_and_synapse_decrypt_on_both_sides() {
    let hearth = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let alice = hearth.sdk_user("alice").await;
    let bob = synapse.sdk_user("bob").await;
    // The first syncs upload each device's keys.
    alice.sync_once(settings()).await.expect("alice syncs");
    bob.sync_once(settings()).await.expect("bob syncs");

    // A room on Hearth, then one on Synapse; messages both ways in each.
    let on_hearth = encrypted_room(&alice, &bob, hearth.name().try_into().unwrap()).await;
    let on_synapse = encrypted_room(&bob, &alice, synapse.server_name()).await;
    for room in [&on_hearth, &on_synapse] {
        let from_alice = format!("the secret plan, from Hearth, in {room}");
        say(&alice, room, &from_alice).await;
        decrypts(&bob, "bob on Synapse", room, &from_alice).await;
        let from_bob = format!("agreed, from Synapse, in {room}");
        say(&bob, room, &from_bob).await;
        decrypts(&alice, "alice on Hearth", room, &from_bob).await;
    }

    // Direct messages started by an invite from either side, the first message sent before the
    // invitee joins (its room key goes to the invited user's devices); the invitee joins with no
    // server named, so through the inviter's.
    for (inviter, inviter_name, invitee, invitee_name) in [
        (&bob, "bob", &alice, "alice"),
        (&alice, "alice", &bob, "bob"),
    ] {
        let invitee_id = invitee.user_id().expect("logged in").to_owned();
        let dm = inviter.create_dm(&invitee_id).await.expect("createRoom");
        let dm_id = dm.room_id().to_owned();
        let before = format!("{inviter_name} to {invitee_name}, before the join");
        say(inviter, &dm_id, &before).await;
        eventually(30, &format!("{invitee_name} has the invite"), || async {
            invitee.sync_once(settings()).await.ok()?;
            (invitee.get_room(&dm_id)?.state() == RoomState::Invited).then_some(())
        })
        .await;
        invitee
            .join_room_by_id(&dm_id)
            .await
            .unwrap_or_else(|e| panic!("{invitee_name} accepts the DM: {e}"));
        sees_joined(inviter, &dm_id, &invitee_id).await;
        decrypts(invitee, invitee_name, &dm_id, &before).await;
        let reply = format!("{invitee_name} to {inviter_name}, after the join");
        say(invitee, &dm_id, &reply).await;
        decrypts(inviter, inviter_name, &dm_id, &reply).await;
    }

    // Cross-signing on both sides: each learns of the other's identity (signing-key updates,
    // then the keys in /user/keys/query answers).
    bootstrap_cross_signing(&alice, "alice").await;
    bootstrap_cross_signing(&bob, "bob").await;
    let alice_id = alice.user_id().expect("logged in").to_owned();
    let bob_id = bob.user_id().expect("logged in").to_owned();
    knows_identity(&alice, "alice", &bob_id).await;
    knows_identity(&bob, "bob", &alice_id).await;

    // New devices on both sides: each server tells the other of them (device-list updates),
    // and once their owners sign them, the other side sees them cross-signed.
    let bob2 = synapse.sdk_login("bob").await;
    bob2.sync_once(settings())
        .await
        .expect("bob's second device syncs");
    let alice2 = hearth.sdk_login("alice").await;
    alice2
        .sync_once(settings())
        .await
        .expect("alice's second device syncs");
    let bob2_device = bob2.device_id().expect("logged in").to_owned();
    let alice2_device = alice2.device_id().expect("logged in").to_owned();
    signs_own_device(&bob, "bob", &bob2_device).await;
    signs_own_device(&alice, "alice", &alice2_device).await;
    sees_cross_signed(&alice, "alice", &bob_id, &bob2_device).await;
    sees_cross_signed(&bob, "bob", &alice_id, &alice2_device).await;
    for room in [&on_hearth, &on_synapse] {
        let from_alice = format!("for both of bob's devices, in {room}");
        say(&alice, room, &from_alice).await;
        decrypts(&bob2, "bob's second device", room, &from_alice).await;
        decrypts(&bob, "bob's first device", room, &from_alice).await;
        let from_bob = format!("for both of alice's devices, in {room}");
        say(&bob, room, &from_bob).await;
        decrypts(&alice2, "alice's second device", room, &from_bob).await;
        decrypts(&alice, "alice's first device", room, &from_bob).await;
    }

    // The second devices go away again, and the other side hears of it.
    delete_device(&alice, "alice", &alice2_device).await;
    delete_device(&bob, "bob", &bob2_device).await;
    sees_deleted(&bob, "bob", &alice_id, &alice2_device).await;
    sees_deleted(&alice, "alice", &bob_id, &bob2_device).await;
}

/// Sets up cross-signing for `client`, answering a password challenge if the server asks.
async fn bootstrap_cross_signing(client: &Client, name: &str) {
    let Err(e) = client.encryption().bootstrap_cross_signing(None).await else {
        return;
    };
    let uiaa = e
        .as_uiaa_response()
        .unwrap_or_else(|| panic!("{name} bootstraps cross-signing: {e}"));
    let mut password = Password::new(
        UserIdentifier::Matrix(MatrixUserIdentifier::new(name.to_owned())),
        TEST_PASSWORD.to_owned(),
    );
    password.session = uiaa.session.clone();
    client
        .encryption()
        .bootstrap_cross_signing(Some(AuthData::Password(password)))
        .await
        .unwrap_or_else(|e| panic!("{name} bootstraps cross-signing: {e}"));
}

/// Waits until `client` has `user`'s cross-signing identity.
async fn knows_identity(client: &Client, who: &str, user: &UserId) {
    eventually(30, &format!("{who} knows {user}'s identity"), || async {
        client.sync_once(settings()).await.ok()?;
        client
            .encryption()
            .get_user_identity(user)
            .await
            .ok()
            .flatten()
            .map(|_| ())
    })
    .await;
}

/// `client` signs another device of its own user with its self-signing key, once it knows it.
async fn signs_own_device(client: &Client, who: &str, device: &DeviceId) {
    let user = client.user_id().expect("logged in").to_owned();
    let found = eventually(
        30,
        &format!("{who} knows their device {device}"),
        || async {
            client.sync_once(settings()).await.ok()?;
            client
                .encryption()
                .get_device(&user, device)
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    found
        .verify()
        .await
        .unwrap_or_else(|e| panic!("{who} signs {device}: {e}"));
}

/// Waits until `client` has `user`'s `device`, cross-signed by its owner.
async fn sees_cross_signed(client: &Client, who: &str, user: &UserId, device: &DeviceId) {
    eventually(
        30,
        &format!("{who} has {user}'s {device} cross-signed"),
        || async {
            client.sync_once(settings()).await.ok()?;
            let d = client.encryption().get_device(user, device).await.ok()??;
            d.is_cross_signed_by_owner().then_some(())
        },
    )
    .await;
}

/// Deletes another device of `client`'s user, with the password.
async fn delete_device(client: &Client, name: &str, device: &DeviceId) {
    let devices = [device.to_owned()];
    let err = client
        .delete_devices(&devices, None)
        .await
        .expect_err("deleting a device needs the password");
    let uiaa = err
        .as_uiaa_response()
        .unwrap_or_else(|| panic!("{name} deletes {device}: {err}"));
    let mut password = Password::new(
        UserIdentifier::Matrix(MatrixUserIdentifier::new(name.to_owned())),
        TEST_PASSWORD.to_owned(),
    );
    password.session = uiaa.session.clone();
    client
        .delete_devices(&devices, Some(AuthData::Password(password)))
        .await
        .unwrap_or_else(|e| panic!("{name} deletes {device}: {e}"));
}

/// Waits until `client` no longer has `user`'s `device` as a live one.
async fn sees_deleted(client: &Client, who: &str, user: &UserId, device: &DeviceId) {
    eventually(
        30,
        &format!("{who} sees {user}'s {device} deleted"),
        || async {
            client.sync_once(settings()).await.ok()?;
            let d = client.encryption().get_device(user, device).await.ok()?;
            d.is_none_or(|d| d.is_deleted()).then_some(())
        },
    )
    .await;
}
