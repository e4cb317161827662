//! Simplified sliding sync (MSC4186) over raw HTTP: lists in bump order with counts, rooms sent
//! whole once and then only as they change, long-polls woken by a message, extensions, and the
//! errors a client must get (unknown `pos`, malformed lists).

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{assert_err, enc, TestServer};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn sliding(
    server: &TestServer,
    token: &str,
    pos: Option<&str>,
    timeout_ms: u64,
    body: Value,
) -> (u16, Value) {
    let mut path = format!("{PATH}?timeout={timeout_ms}");
    if let Some(p) = pos {
        path.push_str(&format!("&pos={}", enc(p)));
    }
    server.post(&path, Some(token), body).await
}

fn list(ranges: Value, timeline_limit: u64) -> Value {
    json!({
        "conn_id": "room-list",
        "lists": { "all_rooms": {
            "ranges": ranges,
            "timeline_limit": timeline_limit,
            "required_state": [["m.room.name", ""], ["m.room.member", "$ME"], ["m.room.member", "$LAZY"]],
        }},
    })
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_listed_newest_first_sent_once_and_then_as_they_change() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "a long password").await;
    let (bob_id, bob, _) = server.register("bob", "a long password").await;
    let mut rooms = Vec::new();
    for i in 0..3 {
        let room = server
            .create_room(
                &alice,
                json!({ "preset": "public_chat", "name": format!("room {i}") }),
            )
            .await;
        server.say(&alice, &room, &format!("hello {i}")).await;
        rooms.push(room);
    }

    // The first window holds the two newest rooms; the count says there are three.
    let (status, first) = sliding(&server, &alice, None, 0, list(json!([[0, 1]]), 1)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["lists"]["all_rooms"]["count"], 3, "{first}");
    let sent: Vec<&String> = first["rooms"].as_object().unwrap().keys().collect();
    assert_eq!(sent.len(), 2, "{first}");
    assert!(
        sent.contains(&&rooms[2]) && sent.contains(&&rooms[1]),
        "{first}"
    );
    let newest = &first["rooms"][&rooms[2]];
    assert_eq!(newest["initial"], true);
    assert_eq!(bodies(newest), vec!["hello 2"]);
    assert_eq!(newest["limited"], true, "one event of several: a gap");
    assert!(
        newest["bump_stamp"].as_u64().unwrap()
            > first["rooms"][&rooms[1]]["bump_stamp"].as_u64().unwrap()
    );
    let state_types: Vec<&str> = newest["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(state_types.contains(&"m.room.name"), "{newest}");
    assert!(state_types.contains(&"m.room.member"), "$ME: {newest}");
    assert!(
        !state_types.contains(&"m.room.create"),
        "not asked for: {newest}"
    );
    let pos = first["pos"].as_str().unwrap().to_owned();

    // Nothing changed: a request with the same window waits, then answers with the counts only.
    let (status, quiet) = sliding(&server, &alice, Some(&pos), 200, list(json!([[0, 1]]), 1)).await;
    assert_eq!(status, 200, "{quiet}");
    assert!(
        quiet["rooms"].as_object().is_none_or(|r| r.is_empty()),
        "{quiet}"
    );
    assert_eq!(quiet["lists"]["all_rooms"]["count"], 3);
    let pos = quiet["pos"].as_str().unwrap().to_owned();

    // A message in the oldest room wakes a waiting request and moves that room into the window,
    // sent whole (the connection never had it). Bob's join alone does not: it moves nothing.
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&rooms[0])),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let waiting = {
        let server_url = server.url();
        let alice = alice.clone();
        let pos = pos.clone();
        tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(format!(
                    "{server_url}{PATH}?timeout=20000&pos={}",
                    enc(&pos)
                ))
                .bearer_auth(alice)
                .json(&list(json!([[0, 1]]), 1))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.say(&bob, &rooms[0], "from bob").await;
    let (status, woken) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the long-poll was woken")
        .unwrap();
    assert_eq!(status, 200, "{woken}");
    let room0 = &woken["rooms"][&rooms[0]];
    assert_eq!(room0["initial"], true, "{woken}");
    assert_eq!(bodies(room0), vec!["from bob"], "{room0}");
    let bob_member = |room: &Value| {
        room["required_state"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob_id.as_str())
    };
    assert!(
        bob_member(room0),
        "$LAZY brought bob's member event: {room0}"
    );
    // Room 1 was pushed out of the window: not resent.
    assert!(woken["rooms"].get(&rooms[1]).is_none(), "{woken}");
    let mut pos = woken["pos"].as_str().unwrap().to_owned();
    server.say(&bob, &rooms[0], "again from bob").await;

    // Now only what changed: the new message (not initial, no gap), without bob's member event,
    // which the connection already has.
    let next = loop {
        let (status, next) =
            sliding(&server, &alice, Some(&pos), 5000, list(json!([[0, 1]]), 1)).await;
        assert_eq!(status, 200, "{next}");
        pos = next["pos"].as_str().unwrap().to_owned();
        if next["rooms"].get(&rooms[0]).is_some() {
            break next;
        }
    };
    let room0 = &next["rooms"][&rooms[0]];
    assert!(room0.get("initial").is_none(), "{room0}");
    assert_eq!(bodies(room0), vec!["again from bob"], "{room0}");
    assert_ne!(room0["limited"], true, "{room0}");
    assert!(!bob_member(room0), "{room0}");
    // `prev_batch` pages back through the room with /messages.
    let prev = room0["prev_batch"].as_str().unwrap();
    let (status, page) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10&from={}",
                enc(&rooms[0]),
                enc(prev)
            ),
            Some(&alice),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["content"]["body"] == "hello 0"),
        "{page}"
    );

    // Asking for a longer timeline expands it: the latest events again, marked as expanded.
    let (status, more) = sliding(&server, &alice, Some(&pos), 0, list(json!([[0, 1]]), 3)).await;
    assert_eq!(status, 200, "{more}");
    let room0 = &more["rooms"][&rooms[0]];
    assert_eq!(room0["unstable_expanded_timeline"], true, "{room0}");
    assert_eq!(bodies(room0), vec!["from bob", "again from bob"], "{room0}");
    let pos = more["pos"].as_str().unwrap().to_owned();

    // A subscription to a room out of the window sends it with the subscription's timeline.
    let mut body = list(json!([[0, 0]]), 1);
    body["room_subscriptions"] =
        json!({ rooms[1].clone(): { "timeline_limit": 10, "required_state": [] } });
    let (status, sub) = sliding(&server, &alice, Some(&pos), 0, body).await;
    assert_eq!(status, 200, "{sub}");
    assert_eq!(bodies(&sub["rooms"][&rooms[1]]), vec!["hello 1"], "{sub}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_positions_and_lists_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "a long password").await;
    let (_, bob, _) = server.register("bob", "a long password").await;
    server.create_room(&alice, json!({})).await;
    let (_, first) = sliding(&server, &alice, None, 0, list(json!([[0, 9]]), 1)).await;
    let pos = first["pos"].as_str().unwrap().to_owned();

    // Unknown, malformed, or someone else's position: M_UNKNOWN_POS, and the client starts over.
    for bad in ["12345", "not a position"] {
        let resp = sliding(&server, &alice, Some(bad), 0, list(json!([[0, 9]]), 1)).await;
        assert_err(&resp, 400, "M_UNKNOWN_POS");
    }
    let resp = sliding(&server, &bob, Some(&pos), 0, list(json!([[0, 9]]), 1)).await;
    assert_err(&resp, 400, "M_UNKNOWN_POS");
    // Another connection of alice's does not have this position either.
    let mut other = list(json!([[0, 9]]), 1);
    other["conn_id"] = json!("encryption");
    let resp = sliding(&server, &alice, Some(&pos), 0, other).await;
    assert_err(&resp, 400, "M_UNKNOWN_POS");

    // Malformed lists.
    for (body, errcode) in [
        (list(json!([[5, 1]]), 1), "M_INVALID_PARAM"),
        (list(json!([[0, 9]]), 5000), "M_INVALID_PARAM"),
        (list(json!([["a", 1]]), 1), "M_BAD_JSON"),
        (
            json!({ "lists": { "all_rooms": { "ranges": "everything" } } }),
            "M_BAD_JSON",
        ),
    ] {
        let resp = sliding(&server, &alice, Some(&pos), 0, body).await;
        assert_eq!(resp.0, 400, "{:?}", resp.1);
        assert_eq!(resp.1["errcode"], errcode, "{:?}", resp.1);
    }
    // The position still works: the refused requests changed nothing.
    let (status, again) = sliding(&server, &alice, Some(&pos), 0, list(json!([[0, 9]]), 1)).await;
    assert_eq!(status, 200, "{again}");
    assert!(
        again["rooms"].as_object().is_none_or(|r| r.is_empty()),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extensions_bring_to_device_messages_keys_account_data_receipts_and_typing() {
    let server = TestServer::start().await;
    let (alice_id, alice, alice_device) = server.register("alice", "a long password").await;
    let (_, bob, _) = server.register("bob", "a long password").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob),
            json!({}),
        )
        .await;
    let event = server.say(&bob, &room, "read me").await;

    let ext = |since: Option<&str>| {
        let mut body = list(json!([[0, 9]]), 1);
        body["extensions"] = json!({
            "to_device": { "enabled": true, "since": since },
            "e2ee": { "enabled": true },
            "account_data": { "enabled": true },
            "receipts": { "enabled": true },
            "typing": { "enabled": true },
        });
        body
    };
    let (status, first) = sliding(&server, &alice, None, 0, ext(None)).await;
    assert_eq!(status, 200, "{first}");
    let e = &first["extensions"];
    assert_eq!(
        e["e2ee"]["device_one_time_keys_count"]["signed_curve25519"], 0,
        "{e}"
    );
    assert!(
        e["e2ee"]["device_unused_fallback_key_types"].is_array(),
        "{e}"
    );
    assert!(
        e["account_data"]["global"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["type"] == "m.push_rules"),
        "{e}"
    );
    let mut since = e["to_device"]["next_batch"].as_str().unwrap().to_owned();
    let mut pos = first["pos"].as_str().unwrap().to_owned();

    // Bob sends alice's device a to-device message, reads, types; alice tags the room.
    let (status, body) = server
        .put(
            "/_matrix/client/v3/sendToDevice/m.test/txn1",
            Some(&bob),
            json!({ "messages": { alice_id.as_str(): { alice_device.as_str(): { "hi": 1 } } } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(&event)
            ),
            Some(&bob),
            json!({}),
        )
        .await;
    server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(&room),
                enc(&format!("@bob:{}", server.name()))
            ),
            Some(&bob),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    server
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/tags/u.work",
                enc(&alice_id),
                enc(&room)
            ),
            Some(&alice),
            json!({}),
        )
        .await;
    let mut seen = json!({});
    for _ in 0..20 {
        let (status, next) = sliding(&server, &alice, Some(&pos), 2000, ext(Some(&since))).await;
        assert_eq!(status, 200, "{next}");
        pos = next["pos"].as_str().unwrap().to_owned();
        since = next["extensions"]["to_device"]["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        let e = &next["extensions"];
        for (k, v) in [
            (
                "to_device",
                e["to_device"]["events"]
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .map(|a| a[0].clone()),
            ),
            ("receipt", e["receipts"]["rooms"].get(&room).cloned()),
            ("typing", e["typing"]["rooms"].get(&room).cloned()),
            ("tag", e["account_data"]["rooms"].get(&room).cloned()),
        ] {
            if let Some(v) = v {
                seen[k] = v;
            }
        }
        if seen.as_object().unwrap().len() == 4 {
            break;
        }
    }
    assert_eq!(seen["to_device"]["type"], "m.test", "{seen}");
    assert_eq!(seen["to_device"]["content"]["hi"], 1);
    assert!(
        seen["receipt"]["content"][&event]["m.read"]
            .get(format!("@bob:{}", server.name()))
            .is_some(),
        "{seen}"
    );
    assert_eq!(
        seen["typing"]["content"]["user_ids"],
        json!([format!("@bob:{}", server.name())])
    );
    assert_eq!(seen["tag"][0]["type"], "m.tag", "{seen}");

    // Acknowledged by `since`, the message is not sent again.
    let (_, after) = sliding(&server, &alice, Some(&pos), 0, ext(Some(&since))).await;
    assert!(
        after["extensions"]["to_device"]["events"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{after}"
    );
}

/// What a client knows of a room: its name, latest event, member count and unread count.
#[derive(Debug, Default, Clone, PartialEq)]
struct Known {
    name: Option<String>,
    latest: Option<String>,
    joined: Option<u64>,
    unread: Option<u64>,
}

/// Applies a /sync (v2) response to what a client knows.
fn apply_v2(known: &mut std::collections::BTreeMap<String, Known>, resp: &Value) {
    for (room_id, room) in resp["rooms"]["join"].as_object().into_iter().flatten() {
        let k = known.entry(room_id.clone()).or_default();
        let state = room["state"]["events"].as_array().into_iter().flatten();
        let timeline = room["timeline"]["events"].as_array().into_iter().flatten();
        for e in state.chain(timeline.clone()) {
            if e["type"] == "m.room.name" {
                k.name = e["content"]["name"].as_str().map(str::to_owned);
            }
        }
        if let Some(last) = timeline.last() {
            k.latest = last["event_id"].as_str().map(str::to_owned);
        }
        if let Some(j) = room["summary"]["m.joined_member_count"].as_u64() {
            k.joined = Some(j);
        }
        if let Some(n) = room["unread_notifications"]["notification_count"].as_u64() {
            k.unread = Some(n);
        }
    }
    for room_id in resp["rooms"]["leave"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(r, _)| r)
    {
        known.remove(room_id);
    }
}

/// Applies a sliding sync response to what a client knows.
fn apply_sliding(known: &mut std::collections::BTreeMap<String, Known>, resp: &Value, me: &str) {
    for (room_id, room) in resp["rooms"].as_object().into_iter().flatten() {
        let left = room["required_state"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| {
                e["type"] == "m.room.member"
                    && e["state_key"] == me
                    && e["content"]["membership"] == "leave"
            });
        if left {
            known.remove(room_id);
            continue;
        }
        let k = known.entry(room_id.clone()).or_default();
        for e in room["required_state"].as_array().into_iter().flatten() {
            if e["type"] == "m.room.name" {
                k.name = e["content"]["name"].as_str().map(str::to_owned);
            }
        }
        for e in room["timeline"].as_array().into_iter().flatten() {
            if e["type"] == "m.room.name" {
                k.name = e["content"]["name"].as_str().map(str::to_owned);
            }
        }
        if let Some(last) = room["timeline"].as_array().and_then(|t| t.last()) {
            k.latest = last["event_id"].as_str().map(str::to_owned);
        }
        if let Some(j) = room["joined_count"].as_u64() {
            k.joined = Some(j);
        }
        if let Some(n) = room["notification_count"].as_u64() {
            k.unread = Some(n);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_sync_and_sync_v2_agree_on_rooms_latest_events_and_counts() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", "a long password").await;
    let (_, bob, _) = server.register("bob", "a long password").await;
    let mut rooms = Vec::new();
    for i in 0..5 {
        let room = server
            .create_room(
                &bob,
                json!({ "preset": "public_chat", "name": format!("room {i}") }),
            )
            .await;
        server
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                Some(&alice),
                json!({}),
            )
            .await;
        for m in 0..=i {
            server.say(&bob, &room, &format!("m{m}")).await;
        }
        rooms.push(room);
    }
    let body = json!({
        "conn_id": "compare",
        "lists": { "all": {
            "ranges": [[0, 99]],
            "timeline_limit": 1,
            "required_state": [["m.room.name", ""], ["m.room.member", "$ME"]],
        }},
    });
    let mut v2 = std::collections::BTreeMap::new();
    let mut sliding_known = std::collections::BTreeMap::new();
    let (_, first_v2) = server
        .get("/_matrix/client/v3/sync?timeout=0", Some(&alice))
        .await;
    apply_v2(&mut v2, &first_v2);
    let (_, first) = sliding(&server, &alice, None, 0, body.clone()).await;
    apply_sliding(&mut sliding_known, &first, &alice_id);
    assert_eq!(v2.len(), 5);
    assert_eq!(v2, sliding_known);

    // The same actions seen both ways: messages, a rename, a read receipt, a room left.
    let mut since = first_v2["next_batch"].as_str().unwrap().to_owned();
    let mut pos = first["pos"].as_str().unwrap().to_owned();
    server.say(&bob, &rooms[0], "news").await;
    server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                enc(&rooms[1])
            ),
            Some(&bob),
            json!({ "name": "renamed" }),
        )
        .await;
    let last = server.say(&bob, &rooms[2], "read up to here").await;
    server
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&rooms[2]),
                enc(&last)
            ),
            Some(&alice),
            json!({}),
        )
        .await;
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&rooms[3])),
            Some(&alice),
            json!({}),
        )
        .await;
    server.say(&bob, &rooms[4], "more").await;
    for _ in 0..3 {
        let (_, next_v2) = server
            .get(
                &format!("/_matrix/client/v3/sync?timeout=0&since={}", enc(&since)),
                Some(&alice),
            )
            .await;
        apply_v2(&mut v2, &next_v2);
        since = next_v2["next_batch"].as_str().unwrap().to_owned();
        let (_, next) = sliding(&server, &alice, Some(&pos), 0, body.clone()).await;
        apply_sliding(&mut sliding_known, &next, &alice_id);
        pos = next["pos"].as_str().unwrap().to_owned();
    }
    assert_eq!(v2.len(), 4, "{v2:#?}");
    assert_eq!(v2[&rooms[1]].name.as_deref(), Some("renamed"));
    assert_eq!(v2[&rooms[2]].unread, Some(0));
    assert_eq!(v2, sliding_known);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_pick_invites_encrypted_rooms_direct_chats_and_spaces() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", "a long password").await;
    let (_, bob, _) = server.register("bob", "a long password").await;
    let plain = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let encrypted = server
        .create_room(
            &alice,
            json!({ "initial_state": [{ "type": "m.room.encryption", "state_key": "",
                "content": { "algorithm": "m.megolm.v1.aes-sha2" } }] }),
        )
        .await;
    let space = server
        .create_room(&alice, json!({ "creation_content": { "type": "m.space" } }))
        .await;
    let dm = server
        .create_room(&alice, json!({ "is_direct": true }))
        .await;
    server
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.direct",
                enc(&alice_id)
            ),
            Some(&alice),
            json!({ "@bob:localhost:8448": [dm] }),
        )
        .await;
    let invite = server
        .create_room(&bob, json!({ "invite": [alice_id.as_str()] }))
        .await;

    let lists = json!({
        "invites": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_invite": true } },
        "encrypted": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_encrypted": true } },
        "dms": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_dm": true } },
        "spaces": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "room_types": ["m.space"] } },
        "rooms": { "ranges": [[0, 9]], "timeline_limit": 0,
            "filters": { "not_room_types": ["m.space"], "is_invite": false } },
    });
    let (status, body) = sliding(&server, &alice, None, 0, json!({ "lists": lists })).await;
    assert_eq!(status, 200, "{body}");
    let count = |name: &str| body["lists"][name]["count"].as_u64().unwrap();
    assert_eq!(count("invites"), 1, "{body}");
    assert_eq!(count("encrypted"), 1);
    assert_eq!(count("dms"), 1);
    assert_eq!(count("spaces"), 1);
    assert_eq!(count("rooms"), 3, "plain, encrypted and the DM: {body}");
    // The invite is sent as stripped state, with no timeline.
    let inv = &body["rooms"][&invite];
    assert!(
        inv["invite_state"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "{inv}"
    );
    assert!(inv
        .get("timeline")
        .is_none_or(|t| t.as_array().is_some_and(|t| t.is_empty())));
    for room in [&plain, &encrypted, &space, &dm] {
        assert!(
            body["rooms"].get(room).is_some(),
            "{room} in some list: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_back_in_the_window_brings_the_receipts_and_tags_it_missed() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "a long password").await;
    let (_, bob, _) = server.register("bob", "a long password").await;
    let mut rooms = Vec::new();
    for i in 0..2 {
        let room = server
            .create_room(
                &alice,
                json!({ "preset": "public_chat", "name": format!("r{i}") }),
            )
            .await;
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                Some(&bob),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        rooms.push(room);
    }
    server.say(&alice, &rooms[1], "hello 1").await;
    let read = server.say(&alice, &rooms[0], "hello 0").await;
    // A window of one room, the newest: rooms[0] is sent, then leaves the window.
    let body = || {
        let mut b = list(json!([[0, 0]]), 1);
        b["extensions"] = json!({
            "account_data": { "enabled": true },
            "receipts": { "enabled": true },
        });
        b
    };
    let (status, first) = sliding(&server, &alice, None, 0, body()).await;
    assert_eq!(status, 200, "{first}");
    assert!(first["rooms"].get(&rooms[0]).is_some(), "{first}");
    let pos = first["pos"].as_str().unwrap().to_owned();
    server.say(&alice, &rooms[1], "busy").await;
    let (status, second) = sliding(&server, &alice, Some(&pos), 0, body()).await;
    assert_eq!(status, 200, "{second}");
    assert!(second["rooms"].get(&rooms[1]).is_some(), "{second}");
    let pos = second["pos"].as_str().unwrap().to_owned();

    // While rooms[0] is away, bob reads it and alice tags it; a response passes meanwhile.
    let (status, resp) = server
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&rooms[0]),
                enc(&read)
            ),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    let alice_id = format!("@alice:{}", server.name());
    let (status, resp) = server
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/tags/u.work",
                enc(&alice_id),
                enc(&rooms[0])
            ),
            Some(&alice),
            json!({ "order": 0.5 }),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    server.say(&alice, &rooms[1], "still busy").await;
    let (status, third) = sliding(&server, &alice, Some(&pos), 0, body()).await;
    assert_eq!(status, 200, "{third}");
    assert!(
        third["extensions"]["receipts"]["rooms"]
            .get(&rooms[0])
            .is_none(),
        "{third}"
    );
    let pos = third["pos"].as_str().unwrap().to_owned();

    // A message brings rooms[0] back (as a change, not whole), with what it missed.
    server.say(&alice, &rooms[0], "back").await;
    let (status, fourth) = sliding(&server, &alice, Some(&pos), 0, body()).await;
    assert_eq!(status, 200, "{fourth}");
    let back = &fourth["rooms"][&rooms[0]];
    assert!(
        back.is_object() && back.get("initial").is_none_or(|i| i == false),
        "{fourth}"
    );
    let receipts = &fourth["extensions"]["receipts"]["rooms"][&rooms[0]];
    let bob_id = format!("@bob:{}", server.name());
    assert!(
        receipts["content"][&read]["m.read"].get(&bob_id).is_some(),
        "the receipt made while the room was away: {fourth}"
    );
    let tagged = fourth["extensions"]["account_data"]["rooms"][&rooms[0]]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        tagged
            .iter()
            .any(|t| t["type"] == "m.tag" && t["content"]["tags"].get("u.work").is_some()),
        "the tag set while the room was away: {fourth}"
    );
    // Sent once: the next response does not repeat them.
    let pos = fourth["pos"].as_str().unwrap().to_owned();
    server.say(&alice, &rooms[0], "again").await;
    let (status, fifth) = sliding(&server, &alice, Some(&pos), 0, body()).await;
    assert_eq!(status, 200, "{fifth}");
    assert!(
        fifth["extensions"]["receipts"]["rooms"]
            .get(&rooms[0])
            .is_none(),
        "{fifth}"
    );
    assert!(
        fifth["extensions"]["account_data"]["rooms"]
            .get(&rooms[0])
            .is_none(),
        "{fifth}"
    );
}
