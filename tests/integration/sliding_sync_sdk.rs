//! Element X's stack against Hearth: matrix-sdk-ui 0.18's `SyncService` (room list over
//! simplified sliding sync, encryption sync) and `Timeline`, driven as the app drives them.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use matrix_sdk::{
    config::SyncSettings,
    ruma::{
        api::client::room::create_room, events::room::message::RoomMessageEventContent,
        OwnedRoomId, RoomId,
    },
    RoomState,
};
use matrix_sdk_ui::{
    eyeball_im::Vector,
    room_list_service::filters::new_filter_non_left,
    sync_service::SyncService,
    timeline::{RoomExt as _, TimelineItem},
};
use parking_lot::Mutex;
use serde_json::json;

use crate::common::{enc, eventually, TestServer};

/// Message bodies a timeline shows, oldest first.
fn bodies(items: &Vector<Arc<TimelineItem>>) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| i.as_event())
        .filter_map(|e| e.content().as_message().map(|m| m.body().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn element_x_stack_lists_rooms_shows_timelines_joins_invites_and_decrypts() {
    let server = TestServer::start().await;
    let alice = server.sdk_user("alice").await;
    let alice_token = alice.access_token().unwrap();
    let alice_id = alice.user_id().unwrap().to_owned();
    let (bob_id, bob, _) = server.register("bob", "a long password").await;

    // Fifty rooms alice is in, bob talking in each, oldest first; room 0 has a longer history.
    let mut rooms: Vec<String> = Vec::new();
    for i in 0..50 {
        let room = server
            .create_room(
                &bob,
                json!({ "preset": "public_chat", "name": format!("room {i:02}") }),
            )
            .await;
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                Some(&alice_token),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let messages = if i == 0 { 30 } else { 1 };
        for m in 0..messages {
            server
                .say(&bob, &room, &format!("message {m} in room {i:02}"))
                .await;
        }
        rooms.push(room);
    }

    let sync_service = SyncService::builder(alice.clone())
        .build()
        .await
        .expect("the sync service builds");
    sync_service.start().await;
    let room_list = sync_service.room_list_service();
    let all_rooms = room_list.all_rooms().await.expect("the all_rooms list");

    // The app's view of the list: rooms in the order the SDK shows them, kept by a task.
    let shown: Arc<Mutex<Vec<(OwnedRoomId, String, u64)>>> = Arc::default();
    let list_task = {
        let shown = shown.clone();
        let all_rooms = all_rooms;
        tokio::spawn(async move {
            let (stream, controller) = all_rooms.entries_with_dynamic_adapters(200);
            controller.set_filter(Box::new(new_filter_non_left()));
            futures_util::pin_mut!(stream);
            let mut entries = Vector::new();
            while let Some(diffs) = stream.next().await {
                for diff in diffs {
                    diff.apply(&mut entries);
                }
                *shown.lock() = entries
                    .iter()
                    .map(|r: &matrix_sdk_ui::room_list_service::RoomListItem| {
                        (
                            r.room_id().to_owned(),
                            r.cached_display_name()
                                .map(|n| n.to_string())
                                .unwrap_or_default(),
                            r.unread_notification_counts().notification_count,
                        )
                    })
                    .collect();
            }
        })
    };
    let order = |shown: &[(OwnedRoomId, String, u64)]| -> Vec<String> {
        shown.iter().map(|(id, _, _)| id.to_string()).collect()
    };

    // All fifty, newest first, with their names and one unread message each (room 0: 30).
    let expected: Vec<String> = rooms.iter().rev().cloned().collect();
    let listed = eventually(60, "the fifty rooms in bump order", || {
        let shown = shown.clone();
        let expected = expected.clone();
        async move {
            let s = shown.lock().clone();
            (order(&s) == expected).then_some(s)
        }
    })
    .await;
    for (i, (_, name, unread)) in listed.iter().rev().enumerate() {
        assert_eq!(name, &format!("room {i:02}"));
        assert_eq!(
            *unread,
            if i == 0 { 30 } else { 1 },
            "unread in room {i:02}"
        );
    }

    // A new message moves the oldest room to the top.
    server.say(&bob, &rooms[0], "back on top").await;
    eventually(30, "room 00 first", || {
        let shown = shown.clone();
        let first = rooms[0].clone();
        async move {
            (shown.lock().first().map(|(id, _, _)| id.to_string()) == Some(first)).then_some(())
        }
    })
    .await;

    // The timeline of room 0, opened as the app opens it: subscribed, then paginated back to its
    // first message.
    let room0: &RoomId = <&RoomId>::try_from(rooms[0].as_str()).unwrap();
    room_list.subscribe_to_rooms(&[room0]).await;
    let room = room_list.room(room0).expect("room 00 is known");
    let timeline = room.timeline().await.expect("a timeline");
    let items = eventually(30, "the latest message in the timeline", || {
        let timeline = &timeline;
        async move {
            let items = timeline.items().await;
            bodies(&items)
                .contains(&"back on top".to_owned())
                .then_some(items)
        }
    })
    .await;
    assert!(!bodies(&items).contains(&"message 0 in room 00".to_owned()));
    eventually(30, "the first message after paginating", || {
        let timeline = &timeline;
        async move {
            let _ = timeline.paginate_backwards(20).await;
            bodies(&timeline.items().await)
                .contains(&"message 0 in room 00".to_owned())
                .then_some(())
        }
    })
    .await;
    let all = bodies(&timeline.items().await);
    let in_order: Vec<String> = (0..30)
        .map(|m| format!("message {m} in room 00"))
        .chain(["back on top".to_owned()])
        .collect();
    assert_eq!(all, in_order, "every message once, in order");

    // Typing and read receipts come through the extensions.
    let (_guard, mut typing) = room.subscribe_to_typing_notifications();
    let (status, _) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(&rooms[0]),
                enc(&bob_id)
            ),
            Some(&bob),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    assert_eq!(status, 200);
    let typers = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let users = typing.recv().await.expect("typing updates");
            if !users.is_empty() {
                return users;
            }
        }
    })
    .await
    .expect("bob's typing reached alice");
    assert_eq!(
        typers.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
        vec![bob_id.clone()]
    );
    let last = server.say(&bob, &rooms[0], "read this").await;
    server
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&rooms[0]),
                enc(&last)
            ),
            Some(&bob),
            json!({}),
        )
        .await;
    eventually(30, "bob's read receipt", || {
        let room = &room;
        let last = last.clone();
        let bob_id = bob_id.clone();
        async move {
            let event: matrix_sdk::ruma::OwnedEventId = last.try_into().ok()?;
            let receipts = room
                .load_event_receipts(
                    matrix_sdk::ruma::events::receipt::ReceiptType::Read,
                    matrix_sdk::ruma::events::receipt::ReceiptThread::Unthreaded,
                    &event,
                )
                .await
                .ok()?;
            receipts
                .iter()
                .any(|(u, _)| u.as_str() == bob_id)
                .then_some(())
        }
    })
    .await;

    // An invite appears in the list as an invite; alice accepts it.
    let invited = server
        .create_room(
            &bob,
            json!({ "name": "an invitation", "invite": [alice_id.as_str()] }),
        )
        .await;
    let invited_id: OwnedRoomId = invited.as_str().try_into().unwrap();
    let invite_room = eventually(30, "the invite", || {
        let alice = alice.clone();
        let id = invited_id.clone();
        async move {
            alice
                .get_room(&id)
                .filter(|r| r.state() == RoomState::Invited)
        }
    })
    .await;
    invite_room.join().await.expect("alice accepts");
    eventually(30, "the joined room in the list", || {
        let shown = shown.clone();
        let alice = alice.clone();
        let id = invited_id.clone();
        async move {
            let joined = alice.get_room(&id)?.state() == RoomState::Joined;
            (joined && shown.lock().iter().any(|(r, _, _)| *r == id)).then_some(())
        }
    })
    .await;

    // An encrypted room: bob's client (matrix-sdk over /sync) sends; alice's timeline decrypts,
    // the room key having come through the encryption sync's to-device extension.
    let bob_sdk = server.sdk_login("bob").await;
    bob_sdk
        .sync_once(SyncSettings::default().timeout(Duration::from_millis(200)))
        .await
        .unwrap();
    let secret_room = bob_sdk
        .create_room(create_room::v3::Request::new())
        .await
        .expect("createRoom");
    secret_room
        .enable_encryption()
        .await
        .expect("encryption on");
    secret_room
        .invite_user_by_id(&alice_id)
        .await
        .expect("invite");
    let secret_id = secret_room.room_id().to_owned();
    let alice_room = eventually(30, "the encrypted room's invite", || {
        let alice = alice.clone();
        let id = secret_id.clone();
        async move {
            alice
                .get_room(&id)
                .filter(|r| r.state() == RoomState::Invited)
        }
    })
    .await;
    alice_room
        .join()
        .await
        .expect("alice joins the encrypted room");
    // Bob's client learns of alice's devices, then sends.
    eventually(30, "bob sees alice joined", || {
        let bob_sdk = bob_sdk.clone();
        let id = secret_id.clone();
        let alice_id = alice_id.clone();
        async move {
            bob_sdk
                .sync_once(SyncSettings::default().timeout(Duration::from_millis(200)))
                .await
                .ok()?;
            let room = bob_sdk.get_room(&id)?;
            room.get_member_no_sync(&alice_id)
                .await
                .ok()
                .flatten()
                .filter(|m| {
                    m.membership() == &matrix_sdk::ruma::events::room::member::MembershipState::Join
                })
                .map(|_| ())
        }
    })
    .await;
    secret_room
        .send(RoomMessageEventContent::text_plain(
            "secret via sliding sync",
        ))
        .await
        .expect("encrypted send");
    room_list.subscribe_to_rooms(&[&secret_id]).await;
    let secret = room_list.room(&secret_id).unwrap();
    assert!(secret
        .latest_encryption_state()
        .await
        .unwrap()
        .is_encrypted());
    let secret_timeline = secret.timeline().await.unwrap();
    eventually(60, "the decrypted message", || {
        let t = &secret_timeline;
        async move {
            bodies(&t.items().await)
                .contains(&"secret via sliding sync".to_owned())
                .then_some(())
        }
    })
    .await;

    sync_service.stop().await;
    list_task.abort();
}
