//! Rooms end to end over the client API: every room version, history paging, power levels.

use serde_json::{json, Value};

use crate::common::{assert_err, enc, TestServer};

const PASSWORD: &str = "a long password";

async fn send_text(
    server: &TestServer,
    token: &str,
    room: &str,
    txn: &str,
    body: &str,
) -> (u16, Value) {
    server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            Some(token),
            json!({ "msgtype": "m.text", "body": body }),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_room_version_creates_joins_sends_and_redacts() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (bob_id, bob, _) = server.register("bob", PASSWORD).await;
    for version in 1..=12 {
        let room = server.create_room(&alice,
            json!({ "room_version": version.to_string(), "preset": "public_chat", "name": format!("v{version}") }),
        )
        .await;
        if version == 12 {
            assert!(!room.contains(':'), "v12 room IDs are hashes: {room}");
        } else {
            assert!(room.ends_with(":localhost:8448"), "{room}");
        }
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/join"),
                Some(&bob),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: {body}");
        let (status, sent) = send_text(&server, &bob, &room, "t1", "hello").await;
        assert_eq!(status, 200, "v{version}: {sent}");
        let event_id = sent["event_id"].as_str().unwrap().to_owned();
        if version >= 3 {
            assert!(
                !event_id.contains(':'),
                "v{version} event IDs are hashes: {event_id}"
            );
        }
        // The sender redacts their own message; content is stripped from then on.
        let (status, red) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{room}/redact/{}/r1",
                    enc(&event_id)
                ),
                Some(&bob),
                json!({ "reason": "oops" }),
            )
            .await;
        assert_eq!(status, 200, "v{version}: {red}");
        let (status, ev) = server
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(&event_id)),
                Some(&alice),
            )
            .await;
        assert_eq!(status, 200, "v{version} {room} {event_id}: {ev}");
        assert_eq!(ev["content"], json!({}), "v{version}: {ev}");
        assert_eq!(ev["sender"], bob_id.as_str());
        assert!(
            ev["unsigned"]["redacted_because"].is_object(),
            "v{version}: {ev}"
        );
        let (_, state) = server
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.create/"),
                Some(&alice),
            )
            .await;
        assert_eq!(state["room_version"], version.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_pages_through_history_in_both_directions() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let room = server.create_room(&alice, json!({})).await;
    let mut sent = Vec::new();
    for i in 0..60 {
        let (status, body) =
            send_text(&server, &alice, &room, &format!("txn{i}"), &format!("m{i}")).await;
        assert_eq!(status, 200);
        sent.push(body["event_id"].as_str().unwrap().to_owned());
    }
    // Repeating a transaction ID returns the first event and sends nothing.
    let (_, again) = send_text(&server, &alice, &room, "txn5", "different").await;
    assert_eq!(again["event_id"], sent[5].as_str());

    let page_through = |dir: &'static str| {
        let server = &server;
        let alice = &alice;
        let room = &room;
        async move {
            let mut seen = Vec::new();
            let mut from: Option<String> = None;
            loop {
                let mut path = format!(
                    "/_matrix/client/v3/rooms/{room}/messages?dir={dir}&limit=7&filter=%7B%22types%22%3A%5B%22m.room.message%22%5D%7D"
                );
                if let Some(f) = &from {
                    path.push_str(&format!("&from={f}"));
                }
                let (status, page) = server.get(&path, Some(alice)).await;
                assert_eq!(status, 200, "{page}");
                for ev in page["chunk"].as_array().unwrap() {
                    seen.push(ev["event_id"].as_str().unwrap().to_owned());
                }
                match page["end"].as_str() {
                    Some(end) => from = Some(end.to_owned()),
                    None => break,
                }
            }
            seen
        }
    };
    let backward = page_through("b").await;
    let mut expected = sent.clone();
    expected.reverse();
    assert_eq!(backward, expected);
    assert_eq!(page_through("f").await, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_levels_and_membership_rules_are_enforced() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (bob_id, bob, _) = server.register("bob", PASSWORD).await;
    let (carol_id, carol, _) = server.register("carol", PASSWORD).await;

    // Invite-only room: carol cannot join uninvited.
    let private = server
        .create_room(&alice, json!({ "preset": "private_chat" }))
        .await;
    let join = |token: String, room: String| {
        let server = &server;
        async move {
            server
                .post(
                    &format!("/_matrix/client/v3/rooms/{room}/join"),
                    Some(&token),
                    json!({}),
                )
                .await
        }
    };
    let refused = join(carol.clone(), private.clone()).await;
    assert_err(&refused, 403, "M_FORBIDDEN");
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{private}/invite"),
            Some(&alice),
            json!({ "user_id": carol_id }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(join(carol.clone(), private.clone()).await.0, 200);

    // Public room: bob (power 0) cannot change state, kick, ban or redact others.
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    assert_eq!(join(bob.clone(), room.clone()).await.0, 200);
    assert_eq!(join(carol.clone(), room.clone()).await.0, 200);
    let (_, msg) = send_text(&server, &carol, &room, "c1", "hi").await;
    let carol_event = msg["event_id"].as_str().unwrap();
    assert_err(
        &server
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
                Some(&bob),
                json!({ "name": "bob's room" }),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &server
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/kick"),
                Some(&bob),
                json!({ "user_id": carol_id }),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &server
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/ban"),
                Some(&bob),
                json!({ "user_id": carol_id }),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{room}/redact/{}/x",
                    enc(carol_event)
                ),
                Some(&bob),
                json!({}),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    // Alice bans bob; bob cannot come back.
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/ban"),
            Some(&alice),
            json!({ "user_id": bob_id }),
        )
        .await;
    assert_eq!(status, 200);
    assert_err(&join(bob.clone(), room.clone()).await, 403, "M_FORBIDDEN");

    // Invalid power levels content is refused before anything is sent.
    assert_err(
        &server
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"),
                Some(&alice),
                json!({ "users_default": "high" }),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    // Members and joined rooms reflect all of it.
    let (_, members) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/joined_members"),
            Some(&alice),
        )
        .await;
    let joined: Vec<&String> = members["joined"].as_object().unwrap().keys().collect();
    assert_eq!(joined.len(), 2, "{members}");
    assert!(!joined.iter().any(|u| **u == bob_id));
    let (_, rooms) = server
        .get("/_matrix/client/v3/joined_rooms", Some(&carol))
        .await;
    assert_eq!(rooms["joined_rooms"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_refuse_bad_input_and_outsiders() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (_, eve, _) = server.register("eve", PASSWORD).await;
    let room = server
        .create_room(&alice, json!({ "name": "secret" }))
        .await;
    assert_err(
        &server
            .get("/_matrix/client/v3/rooms/not-a-room/messages", Some(&alice))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state"),
            Some(&eve),
        )
        .await;
    assert_eq!((status, &body["errcode"]), (403, &json!("M_FORBIDDEN")));
    assert!(!body.to_string().contains("secret"));
    assert_err(
        &send_text(&server, &eve, &room, "e1", "hi").await,
        403,
        "M_FORBIDDEN",
    );
    let big = "x".repeat(70_000);
    let before = server.db_fingerprint();
    assert_err(
        &send_text(&server, &alice, &room, "big", &big).await,
        413,
        "M_TOO_LARGE",
    );
    assert_eq!(server.db_fingerprint(), before);
    assert_err(
        &server
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/messages?from=garbage"),
                Some(&alice),
            )
            .await,
        400,
        "M_INVALID_PARAM",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_history_survives_restart() {
    let mut server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let room = server.create_room(&alice, json!({})).await;
    for i in 0..20 {
        assert_eq!(
            send_text(&server, &alice, &room, &format!("a{i}"), "before")
                .await
                .0,
            200
        );
    }
    server.restart().await;
    for i in 0..20 {
        assert_eq!(
            send_text(&server, &alice, &room, &format!("b{i}"), "after")
                .await
                .0,
            200
        );
    }
    let (_, page) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"),
            Some(&alice),
        )
        .await;
    let bodies: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies.len(), 40);
    assert!(bodies[..20].iter().all(|b| *b == "after"));
    assert!(bodies[20..].iter().all(|b| *b == "before"));
    let (status, _) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, 200);
}

/// Sends numbered messages until `count` or the first failure; returns the acknowledged IDs.
async fn sender_loop(
    http: reqwest::Client,
    url: String,
    token: String,
    room: String,
    who: &'static str,
    count: usize,
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<(usize, String)> {
    let mut ids = Vec::new();
    let mut failures = 0;
    let mut i = 0;
    while i < count {
        let resp = http
            .put(format!(
                "{url}/_matrix/client/v3/rooms/{room}/send/m.room.message/{who}{i}"
            ))
            .bearer_auth(&token)
            .json(&json!({ "msgtype": "m.text", "body": format!("{who} {i}") }))
            .send()
            .await;
        match resp {
            Ok(r) if r.status() == 200 => {
                let body: Value = r.json().await.unwrap();
                ids.push((i, body["event_id"].as_str().unwrap().to_owned()));
                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                i += 1;
            }
            // The server is restarting: retry the same transaction until it is back.
            _ => {
                failures += 1;
                assert!(failures < 500, "{who}: the server never came back");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_room_survives_restart_without_losing_acknowledged_events() {
    let mut server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (_, bob, _) = server.register("bob", PASSWORD).await;
    let (_, carol, _) = server.register("carol", PASSWORD).await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    for t in [&bob, &carol] {
        let (status, _) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/join"),
                Some(t),
                json!({}),
            )
            .await;
        assert_eq!(status, 200);
    }
    const EACH: usize = 60;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = [("alice", &alice), ("bob", &bob), ("carol", &carol)]
        .into_iter()
        .map(|(who, token)| {
            tokio::spawn(sender_loop(
                reqwest::Client::new(),
                server.url(),
                token.clone(),
                room.clone(),
                who,
                EACH,
                acked.clone(),
            ))
        })
        .collect();
    // Restart while all three are sending.
    while acked.load(std::sync::atomic::Ordering::SeqCst) < 40 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    server.restart().await;
    let mut sent = Vec::new();
    for t in tasks {
        sent.push(t.await.unwrap());
    }

    // Every acknowledged event is there exactly once, each sender's in its order, and retried
    // transactions produced no second event.
    let mut timeline = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=50&filter=%7B%22types%22%3A%5B%22m.room.message%22%5D%7D"
        );
        if let Some(f) = &from {
            path.push_str(&format!("&from={f}"));
        }
        let (status, page) = server.get(&path, Some(&alice)).await;
        assert_eq!(status, 200, "{page}");
        for ev in page["chunk"].as_array().unwrap() {
            timeline.push(ev["event_id"].as_str().unwrap().to_owned());
        }
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    assert_eq!(timeline.len(), 3 * EACH, "one event per transaction");
    let position = |id: &str| timeline.iter().position(|t| t == id);
    for ids in &sent {
        assert_eq!(ids.len(), EACH);
        let positions: Vec<usize> = ids
            .iter()
            .map(|(_, id)| position(id).expect("acknowledged event present"))
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "sender order kept"
        );
    }
    // The room's state and head are intact: it still takes events and members are all there.
    let (status, state) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, 200);
    let joined = state
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join")
        .count();
    assert_eq!(joined, 3);
    assert_eq!(
        send_text(&server, &bob, &room, "final", "still here")
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_hearth_builds_verify_with_ruma_signatures() {
    use ruma::{
        serde::Base64,
        signatures::{reference_hash, verify_event, Verified},
        RoomVersionId,
    };
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (_, bob, _) = server.register("bob", PASSWORD).await;
    let services = &server.server.as_ref().unwrap().services;
    let key = &services.signing_key;
    let keys = std::collections::BTreeMap::from([(
        "localhost:8448".to_owned(),
        std::collections::BTreeMap::from([(
            key.key_id(),
            Base64::parse(key.public_key_base64()).unwrap(),
        )]),
    )]);
    for version in 1..=12 {
        let version_id = RoomVersionId::try_from(version.to_string()).unwrap();
        let rules = version_id.rules().unwrap();
        let room_id = server.create_room(&alice,
            json!({ "room_version": version.to_string(), "preset": "public_chat", "name": "signed" }),
        )
        .await;
        let (status, _) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{room_id}/join"),
                Some(&bob),
                json!({}),
            )
            .await;
        assert_eq!(status, 200);
        send_text(&server, &bob, &room_id, "kept", "kept").await;
        let (_, gone) = send_text(&server, &bob, &room_id, "gone", "gone").await;
        let gone = gone["event_id"].as_str().unwrap().to_owned();
        let (status, _) = server
            .put(
                &format!("/_matrix/client/v3/rooms/{room_id}/redact/{}/r", enc(&gone)),
                Some(&bob),
                json!({}),
            )
            .await;
        assert_eq!(status, 200);

        let room = services
            .rooms
            .events
            .room_short(&ruma::RoomId::parse(&room_id).unwrap())
            .unwrap()
            .unwrap();
        let events = services
            .rooms
            .timeline
            .timeline(room, 0, true, 1000)
            .unwrap();
        assert!(events.len() >= 9, "v{version}: {} events", events.len());
        for short in events {
            let event_id = services.rooms.events.event_id_of(short).unwrap();
            let object = services
                .rooms
                .events
                .event_canonical(short)
                .unwrap()
                .unwrap();
            let verified = verify_event(&keys, &object, &rules)
                .unwrap_or_else(|e| panic!("v{version} {event_id}: {e}"));
            // A redacted event keeps valid signatures; its content hash no longer matches.
            let expected = if event_id.as_str() == gone {
                Verified::Signatures
            } else {
                Verified::All
            };
            assert_eq!(verified, expected, "v{version} {event_id}");
            if version >= 3 {
                let hash = reference_hash(&object, &rules).unwrap();
                assert_eq!(event_id.as_str(), format!("${hash}"), "v{version}");
            } else {
                assert_eq!(
                    object.get("event_id").and_then(|v| v.as_str()),
                    Some(event_id.as_str()),
                    "v{version}"
                );
            }
            if version == 12 && object.get("type").and_then(|v| v.as_str()) == Some("m.room.create")
            {
                assert_eq!(room_id, format!("!{}", event_id.localpart()));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_creations_make_distinct_rooms() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    // Same user, same body, at once: v12 room IDs are create-event hashes, yet each request
    // must get a room of its own.
    let creations = (0..20).map(|_| server.create_room(&alice, json!({})));
    let rooms = futures_util::future::join_all(creations).await;
    let distinct: std::collections::BTreeSet<&String> = rooms.iter().collect();
    assert_eq!(distinct.len(), rooms.len(), "{rooms:?}");
    let (_, joined) = server
        .get("/_matrix/client/v3/joined_rooms", Some(&alice))
        .await;
    assert_eq!(joined["joined_rooms"].as_array().unwrap().len(), 20);
}
