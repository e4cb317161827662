//! A busy room as a real client sees it (matrix-sdk): 1,000 messages between two users, paged
//! back and forth through /messages in exact order, and /context around one of them.

use matrix_sdk::{
    room::{MessagesOptions, Room},
    ruma::{
        api::client::room::create_room, events::room::message::RoomMessageEventContent, uint,
        OwnedEventId, RoomVersionId,
    },
};

use crate::common::TestServer;

const MESSAGES: usize = 1_000;

/// Event IDs of the `m.room.message` events of a page, in the order the server gave them.
fn message_ids(chunk: &[matrix_sdk::deserialized_responses::TimelineEvent]) -> Vec<OwnedEventId> {
    chunk
        .iter()
        .filter(|ev| {
            ev.raw()
                .get_field::<String>("type")
                .ok()
                .flatten()
                .as_deref()
                == Some("m.room.message")
        })
        .map(|ev| ev.event_id().expect("events have IDs"))
        .collect()
}

async fn page_all(room: &Room, forward: bool) -> Vec<OwnedEventId> {
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut options = if forward {
            MessagesOptions::forward()
        } else {
            MessagesOptions::backward()
        };
        options.from = from.clone();
        options.limit = uint!(73);
        let page = room.messages(options).await.expect("/messages");
        seen.extend(message_ids(&page.chunk));
        match page.end {
            Some(end) if !page.chunk.is_empty() => from = Some(end),
            _ => break,
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_messages_page_in_exact_order_with_context() {
    let server = TestServer::start().await;
    let alice = server.sdk_user("alice").await;
    let bob = server.sdk_user("bob").await;
    let bob_id = bob.user_id().expect("bob is logged in").to_owned();

    let room = alice
        .create_room(create_room::v3::Request::new())
        .await
        .expect("createRoom");
    let room_id = room.room_id().to_owned();
    // Version 12 unless asked: the room ID is the create event's hash, with no server part.
    let (_, create) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.create/"),
            Some(alice.access_token().as_deref().expect("token")),
        )
        .await;
    assert_eq!(create["room_version"], RoomVersionId::V12.as_str());
    assert!(!room_id.as_str().contains(':'), "{room_id}");

    room.invite_user_by_id(&bob_id).await.expect("invite");
    let bob_room = bob.join_room_by_id(&room_id).await.expect("bob joins");

    let mut sent = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let (who, r) = if i % 2 == 0 {
            ("alice", &room)
        } else {
            ("bob", &bob_room)
        };
        let response = r
            .send(RoomMessageEventContent::text_plain(format!(
                "{who} says {i}"
            )))
            .await
            .expect("send");
        sent.push(response.response.event_id);
    }

    // Backwards from the end of the room, then forwards from its start: every message, once,
    // in exactly the order it was sent.
    let mut backward = page_all(&bob_room, false).await;
    assert_eq!(backward.len(), MESSAGES);
    backward.reverse();
    assert_eq!(backward, sent);
    assert_eq!(page_all(&room, true).await, sent);

    // /context around the middle message: its neighbours on each side, nearest first before it.
    let middle = MESSAGES / 2;
    let context = bob_room
        .event_with_context(&sent[middle], false, uint!(10), None)
        .await
        .expect("/context");
    assert_eq!(
        context.event.and_then(|e| e.event_id()).as_ref(),
        Some(&sent[middle])
    );
    let before = message_ids(&context.events_before);
    let after = message_ids(&context.events_after);
    let expected_before: Vec<_> = sent[middle - 5..middle].iter().rev().cloned().collect();
    assert_eq!(before, expected_before);
    assert_eq!(after, sent[middle + 1..=middle + 5].to_vec());

    // The context's tokens continue the timeline in both directions through /messages.
    let mut back = MessagesOptions::backward();
    back.from = context.prev_batch_token.clone();
    back.limit = uint!(3);
    let page = bob_room.messages(back).await.expect("/messages from start");
    let expected: Vec<_> = sent[middle - 8..middle - 5].iter().rev().cloned().collect();
    assert_eq!(message_ids(&page.chunk), expected);
    let mut fwd = MessagesOptions::forward();
    fwd.from = context.next_batch_token.clone();
    fwd.limit = uint!(3);
    let page = bob_room.messages(fwd).await.expect("/messages from end");
    assert_eq!(
        message_ids(&page.chunk),
        sent[middle + 6..middle + 9].to_vec()
    );
}
