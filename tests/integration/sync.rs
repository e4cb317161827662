//! /sync over raw HTTP: initial and incremental syncs, long-poll wake-ups, gappy timelines that
//! page on into /messages, lazy-loaded members, typing, receipts, account data, filters.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{assert_err, enc, TestServer};

const PASSWORD: &str = "a long password";

async fn sync(server: &TestServer, token: &str, query: &str) -> Value {
    let (status, body) = server
        .get(&format!("/_matrix/client/v3/sync?{query}"), Some(token))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_with_the_new_event_and_otherwise_times_out() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (_, bob, _) = server.register("bob", PASSWORD).await;
    let (_, carol, _) = server.register("carol", PASSWORD).await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;

    // Initial sync: the room with its state and recent timeline.
    let first = sync(&server, &bob, "").await;
    let joined = &first["rooms"]["join"][room.as_str()];
    let none = Vec::new();
    assert!(
        joined["state"]["events"]
            .as_array()
            .unwrap_or(&none)
            .iter()
            .chain(joined["timeline"]["events"].as_array().unwrap())
            .any(|e| e["type"] == "m.room.create"),
        "{joined}"
    );
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // A waiting sync is woken by alice's message and carries it.
    let url = server.url();
    let waiting = tokio::spawn({
        let since = since.clone();
        let bob = bob.clone();
        async move {
            let resp = reqwest::Client::new()
                .get(format!(
                    "{url}/_matrix/client/v3/sync?since={since}&timeout=60000"
                ))
                .bearer_auth(bob)
                .send()
                .await
                .unwrap();
            resp.json::<Value>().await.unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "nothing new yet: the sync must hold"
    );
    server.say(&alice, &room, "wake up").await;
    let woken = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the sync was woken")
        .unwrap();
    assert_eq!(
        bodies(&woken["rooms"]["join"][room.as_str()]),
        vec!["wake up"]
    );
    let next = woken["next_batch"].as_str().unwrap().to_owned();
    assert_ne!(next, since);

    // Something in a room carol is not in does not answer carol's sync: it times out empty.
    let carol_first = sync(&server, &carol, "").await;
    let carol_since = carol_first["next_batch"].as_str().unwrap().to_owned();
    let url = server.url();
    let carol_wait = tokio::spawn({
        let carol = carol.clone();
        async move {
            reqwest::Client::new()
                .get(format!(
                    "{url}/_matrix/client/v3/sync?since={carol_since}&timeout=1500"
                ))
                .bearer_auth(carol)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    server.say(&alice, &room, "not for carol").await;
    let carol_resp = carol_wait.await.unwrap();
    assert!(
        carol_resp["rooms"]["join"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "{carol_resp}"
    );

    // Incremental sync with nothing new and no timeout returns at once, with nothing in it.
    let again = sync(&server, &bob, &format!("since={next}&timeout=0")).await;
    assert_eq!(
        bodies(&again["rooms"]["join"][room.as_str()]),
        vec!["not for carol"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gappy_timeline_pages_into_messages_and_members_are_lazy_loaded() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", PASSWORD).await;
    let (bob_id, bob, _) = server.register("bob", PASSWORD).await;
    let (_, carol, _) = server.register("carol", PASSWORD).await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    server.join(&carol, &room).await;
    let first = sync(&server, &carol, "").await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    for i in 0..25 {
        server.say(&bob, &room, &format!("m{i}")).await;
    }
    let filter = enc(&json!({
        "room": { "timeline": { "limit": 5 }, "state": { "lazy_load_members": true } }
    })
    .to_string());
    let resp = sync(&server, &carol, &format!("since={since}&filter={filter}")).await;
    let joined = &resp["rooms"]["join"][room.as_str()];
    assert_eq!(bodies(joined), vec!["m20", "m21", "m22", "m23", "m24"]);
    assert_eq!(joined["timeline"]["limited"], true);
    // Only bob spoke: his member event is the one carol needs (alice's is not sent).
    let members: Vec<&str> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert_eq!(members, vec![bob_id.as_str()], "{joined}");
    assert!(!members.contains(&alice_id.as_str()));

    // prev_batch continues seamlessly into /messages.
    let prev = joined["timeline"]["prev_batch"].as_str().unwrap();
    let (status, page) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20&from={prev}"),
            Some(&carol),
        )
        .await;
    assert_eq!(status, 200);
    let older: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    let expected: Vec<String> = (0..20).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(older, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_receipts_and_account_data_reach_the_other_client() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", PASSWORD).await;
    let (bob_id, bob, _) = server.register("bob", PASSWORD).await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let message = server.say(&alice, &room, "hello").await;
    let bob_since = sync(&server, &bob, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let alice_since = sync(&server, &alice, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Alice types, reads with a public and a private receipt, and sets account data.
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", enc(&alice_id)),
            Some(&alice),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    assert_eq!(status, 200);
    for kind in ["m.read", "m.read.private"] {
        let (status, body) = server
            .post(
                &format!(
                    "/_matrix/client/v3/rooms/{room}/receipt/{kind}/{}",
                    enc(&message)
                ),
                Some(&alice),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = server
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/org.example.settings",
                enc(&alice_id)
            ),
            Some(&alice),
            json!({ "theme": "dark" }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{room}/tags/u.work",
                enc(&alice_id)
            ),
            Some(&alice),
            json!({ "order": 0.5 }),
        )
        .await;
    assert_eq!(status, 200);

    // Bob sees the typing notice and the public receipt, not the private one.
    let resp = sync(&server, &bob, &format!("since={bob_since}")).await;
    let ephemeral = resp["rooms"]["join"][room.as_str()]["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .clone();
    let typing = ephemeral
        .iter()
        .find(|e| e["type"] == "m.typing")
        .expect("typing");
    assert_eq!(typing["content"]["user_ids"], json!([alice_id]));
    let receipts = ephemeral
        .iter()
        .find(|e| e["type"] == "m.receipt")
        .expect("receipts");
    let on_message = &receipts["content"][message.as_str()];
    assert!(
        on_message["m.read"][alice_id.as_str()]["ts"].is_u64(),
        "{receipts}"
    );
    assert!(on_message.get("m.read.private").is_none(), "{receipts}");
    // Alice's own sync has her private receipt, her account data and her tag.
    let resp = sync(&server, &alice, &format!("since={alice_since}")).await;
    let joined = &resp["rooms"]["join"][room.as_str()];
    let receipts = joined["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.receipt")
        .expect("receipts")
        .clone();
    assert!(receipts["content"][message.as_str()]["m.read.private"][alice_id.as_str()].is_object());
    let global = resp["account_data"]["events"].as_array().unwrap();
    assert!(global
        .iter()
        .any(|e| e["type"] == "org.example.settings" && e["content"]["theme"] == "dark"));
    let room_data = joined["account_data"]["events"].as_array().unwrap();
    assert!(room_data
        .iter()
        .any(|e| e["type"] == "m.tag" && e["content"]["tags"]["u.work"]["order"] == 0.5));
    let (_, tags) = server
        .get(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{room}/tags",
                enc(&alice_id)
            ),
            Some(&alice),
        )
        .await;
    assert_eq!(tags["tags"]["u.work"]["order"], 0.5);

    // Typing stops: bob learns that too.
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", enc(&alice_id)),
            Some(&alice),
            json!({ "typing": false }),
        )
        .await;
    assert_eq!(status, 200);
    let next = resp["next_batch"].as_str().unwrap();
    let resp = sync(&server, &bob, &format!("since={next}")).await;
    let typing = resp["rooms"]["join"][room.as_str()]["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.typing")
        .expect("typing stopped")
        .clone();
    assert_eq!(typing["content"]["user_ids"], json!([]));

    // Server-managed types and other users' data are refused.
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.fully_read",
                enc(&alice_id)
            ),
            Some(&alice),
            json!({ "event_id": message }),
        )
        .await;
    assert_err(&(status, body), 405, "M_BAD_JSON");
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/org.example.settings",
                enc(&alice_id)
            ),
            Some(&bob),
        )
        .await;
    assert_err(&(status, body), 403, "M_FORBIDDEN");
    let _ = bob_id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_tokens_are_checked_and_survive_restart() {
    let mut server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", PASSWORD).await;
    let room = server.create_room(&alice, json!({})).await;
    server.say(&alice, &room, "before").await;

    // A stored filter, used by ID.
    let (status, created) = server
        .post(
            &format!("/_matrix/client/v3/user/{}/filter", enc(&alice_id)),
            Some(&alice),
            json!({ "room": { "timeline": { "limit": 1, "types": ["m.room.message"] } } }),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["filter_id"].as_str().unwrap();
    let (status, got) = server
        .get(
            &format!("/_matrix/client/v3/user/{}/filter/{id}", enc(&alice_id)),
            Some(&alice),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["room"]["timeline"]["limit"], 1);
    let resp = sync(&server, &alice, &format!("filter={id}")).await;
    let events = resp["rooms"]["join"][room.as_str()]["timeline"]["events"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["content"]["body"], "before");
    let since = resp["next_batch"].as_str().unwrap().to_owned();

    // Bad input: each refused, nothing stored.
    let before = server.db_fingerprint();
    assert_err(
        &server
            .get("/_matrix/client/v3/sync?filter=999", Some(&alice))
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &server
            .get(
                &format!("/_matrix/client/v3/user/{}/filter/999", enc(&alice_id)),
                Some(&alice),
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/sync?filter={}", enc("{\"room\":")),
            Some(&alice),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(["M_BAD_JSON", "M_INVALID_PARAM"].contains(&body["errcode"].as_str().unwrap()));
    assert_err(
        &server
            .get("/_matrix/client/v3/sync?since=garbage", Some(&alice))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/user/{}/filter", enc(&alice_id)),
            Some(&alice),
            json!({ "room": { "timeline": { "limit": "ten" } } }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(server.db_fingerprint(), before);

    // A since token from before a restart still works after it.
    server.restart().await;
    server.say(&alice, &room, "after").await;
    let resp = sync(&server, &alice, &format!("since={since}&timeout=10000")).await;
    assert_eq!(bodies(&resp["rooms"]["join"][room.as_str()]), vec!["after"]);
}

fn presence_of(resp: &Value, user: &str) -> Option<Value> {
    resp["presence"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["sender"] == user)
        .map(|e| e["content"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_goes_online_then_unavailable_then_offline() {
    use hearth::config::HumanDuration;
    let server = TestServer::start_with(|c| {
        c.presence.idle_timeout = HumanDuration(Duration::from_millis(600));
        c.presence.offline_timeout = HumanDuration(Duration::from_millis(1500));
    })
    .await;
    let (alice_id, alice, _) = server.register("alice", PASSWORD).await;
    let (_, bob, _) = server.register("bob", PASSWORD).await;
    let (_, carol, _) = server.register("carol", PASSWORD).await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;

    // Alice's sync makes her online; bob (who shares a room) sees it, with her status message.
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice_id)),
            Some(&alice),
            json!({ "presence": "online", "status_msg": "at lunch" }),
        )
        .await;
    assert_eq!(status, 200);
    sync(&server, &alice, "timeout=0").await;
    let mut resp = sync(&server, &bob, "set_presence=offline").await;
    let online = presence_of(&resp, &alice_id).expect("alice's presence");
    assert_eq!(online["presence"], "online");
    assert_eq!(online["status_msg"], "at lunch");
    let (status, got) = server
        .get(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice_id)),
            Some(&bob),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["presence"], "online");
    // Carol shares no room with alice: no presence for her.
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice_id)),
            Some(&carol),
        )
        .await;
    assert_err(&(status, body), 403, "M_FORBIDDEN");

    // Alice stops: bob's waiting syncs are woken by her turning unavailable, then offline.
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("offline") {
        let since = resp["next_batch"].as_str().unwrap().to_owned();
        resp = sync(
            &server,
            &bob,
            &format!("since={since}&timeout=20000&set_presence=offline"),
        )
        .await;
        if let Some(p) = presence_of(&resp, &alice_id) {
            seen.push(p["presence"].as_str().unwrap().to_owned());
        }
        assert!(seen.len() < 5, "{seen:?}");
    }
    assert_eq!(seen, vec!["unavailable", "offline"]);
}

/// Syncs until the room's counts satisfy `done` (counts are computed just after the events
/// land, so a sync may come first; each further sync waits to be woken).
async fn sync_until_counts(
    server: &TestServer,
    token: &str,
    room: &str,
    since: &mut String,
    filter: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..20 {
        let resp = sync(
            server,
            token,
            &format!("since={since}&timeout=10000&filter={filter}"),
        )
        .await;
        *since = resp["next_batch"].as_str().unwrap().to_owned();
        let joined = &resp["rooms"]["join"][room];
        if !joined.is_null() && done(joined) {
            return joined.clone();
        }
    }
    panic!("the counts never matched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_rules_produce_unread_counts_and_notifications() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", PASSWORD).await;
    let (_, bob, _) = server.register("bob", PASSWORD).await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let first = sync(&server, &alice, "").await;
    // The first sync carries the default push rules.
    let rules = first["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .expect("push rules")
        .clone();
    assert!(rules["content"]["global"]["override"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["rule_id"] == ".m.rule.is_user_mention"));
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    let plain = enc("{}");

    // Two plain messages and one that mentions alice: three notifications, one highlight.
    server.say(&bob, &room, "one").await;
    server.say(&bob, &room, "two").await;
    let (status, mention) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/m3"),
            Some(&bob),
            json!({ "msgtype": "m.text", "body": "alice, look", "m.mentions": { "user_ids": [alice_id] } }),
        )
        .await;
    assert_eq!(status, 200);
    let mention = mention["event_id"].as_str().unwrap().to_owned();
    let joined = sync_until_counts(&server, &alice, &room, &mut since, &plain, |j| {
        j["unread_notifications"]["notification_count"] == 3
    })
    .await;
    assert_eq!(joined["unread_notifications"]["highlight_count"], 1);
    // Bob's own messages never count for him.
    let bob_view = sync(&server, &bob, "").await;
    assert_eq!(
        bob_view["rooms"]["join"][room.as_str()]["unread_notifications"]["notification_count"],
        0
    );

    // /notifications lists them, newest first; only=highlight narrows to the mention.
    let (status, list) = server
        .get(
            "/_matrix/client/v3/notifications?only=highlight",
            Some(&alice),
        )
        .await;
    assert_eq!(status, 200, "{list}");
    let listed = list["notifications"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["event"]["event_id"], mention.as_str());
    assert_eq!(listed[0]["read"], false);

    // Reading up to the mention clears the counts.
    let (status, _) = server
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{room}/receipt/m.read/{}",
                enc(&mention)
            ),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    sync_until_counts(&server, &alice, &room, &mut since, &plain, |j| {
        j["unread_notifications"]["notification_count"] == 0
    })
    .await;

    // Thread replies are counted per thread when the client asks for that.
    let threaded = enc(r#"{"room":{"timeline":{"unread_thread_notifications":true}}}"#);
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"),
            Some(&bob),
            json!({ "msgtype": "m.text", "body": "in thread",
                    "m.relates_to": { "rel_type": "m.thread", "event_id": mention } }),
        )
        .await;
    assert_eq!(status, 200);
    let joined = sync_until_counts(&server, &alice, &room, &mut since, &threaded, |j| {
        j["unread_thread_notifications"][mention.as_str()]["notification_count"] == 1
    })
    .await;
    assert_eq!(joined["unread_notifications"]["notification_count"], 0);

    // A room rule with no actions silences the room.
    let rule = format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room));
    let (status, body) = server
        .put(&rule, Some(&alice), json!({ "actions": [] }))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, got) = server.get(&rule, Some(&alice)).await;
    assert_eq!(status, 200);
    assert_eq!(got["actions"], json!([]));
    server.say(&bob, &room, "muted").await;
    // Mentions are override rules and still notify; once this one is counted, the muted message
    // before it (evaluated in order) has been evaluated too.
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/m4"),
            Some(&bob),
            json!({ "msgtype": "m.text", "body": "alice!", "m.mentions": { "user_ids": [alice_id] } }),
        )
        .await;
    assert_eq!(status, 200);
    sync_until_counts(&server, &alice, &room, &mut since, &threaded, |j| {
        j["unread_notifications"]["highlight_count"] == 1
    })
    .await;
    let (_, list) = server
        .get("/_matrix/client/v3/notifications", Some(&alice))
        .await;
    assert!(
        list["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["event"]["content"]["body"] != "muted"),
        "{list}"
    );
    let (status, _) = server
        .put(
            &format!("{rule}/enabled"),
            Some(&alice),
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, enabled) = server.get(&format!("{rule}/enabled"), Some(&alice)).await;
    assert_eq!(enabled["enabled"], false);

    // Bad input.
    assert_err(
        &server
            .get(
                "/_matrix/client/v3/pushrules/global/override/no.such.rule",
                Some(&alice),
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
    let (status, _) = server
        .put(
            "/_matrix/client/v3/pushrules/global/override/.m.mine",
            Some(&alice),
            json!({ "actions": [], "conditions": [] }),
        )
        .await;
    assert_eq!(status, 400);
    assert_err(
        &server
            .request(
                reqwest::Method::DELETE,
                "/_matrix/client/v3/pushrules/global/override/.m.rule.master",
                Some(&alice),
                None,
            )
            .await,
        400,
        "M_BAD_JSON",
    );
}

fn device_keys(user_id: &str, device_id: &str) -> Value {
    json!({
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device_id}"): "3C5BFWi2Y8MaVvjM8M22DBmh24PmgR0nPvJOIArzgyI",
            format!("ed25519:{device_id}"): "lEuiRJBit0IG6nUf5pUzWTUEsRVVe/HJkoKuEww9ULI",
        },
        "signatures": { user_id: { format!("ed25519:{device_id}"): "dSO80A01XiigH3uBiDVx/EjzaoycHcjq9lfQX0uWsqxl2giMIiSPR8a4d291W1ihKJL/a+myXS367WT6NAIcBA" } },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_lists_keys_and_transaction_ids() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", PASSWORD).await;
    let (bob_id, bob, bob_device) = server.register("bob", PASSWORD).await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let mut since = sync(&server, &alice, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Keys for another device or another user are refused, and change nothing.
    let before = server.db_fingerprint();
    for keys in [
        device_keys(&bob_id, "NOTMINE"),
        device_keys(&alice_id, &bob_device),
    ] {
        let resp = server
            .post(
                "/_matrix/client/v3/keys/upload",
                Some(&bob),
                json!({ "device_keys": keys }),
            )
            .await;
        assert_err(&resp, 400, "M_INVALID_PARAM");
    }
    // Claiming keys of devices that do not exist gives empty results, not an error.
    let (status, claimed) = server
        .post(
            "/_matrix/client/v3/keys/claim",
            Some(&alice),
            json!({ "one_time_keys": { bob_id.clone(): { "NOSUCHDEVICE": "signed_curve25519" },
                                       "@nobody:localhost:8448": { "X": "signed_curve25519" } } }),
        )
        .await;
    assert_eq!(status, 200, "{claimed}");
    assert!(
        claimed["one_time_keys"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "{claimed}"
    );
    assert_eq!(server.db_fingerprint(), before);

    // Bob's real upload reaches alice as a device-list change; his keys and one-time key too.
    let (status, counts) = server
        .post(
            "/_matrix/client/v3/keys/upload",
            Some(&bob),
            json!({
                "device_keys": device_keys(&bob_id, &bob_device),
                "one_time_keys": { "signed_curve25519:AAAAAQ": { "key": "zKbLg+NrIjpnagy+pIY6uPL4ZwEG2v+8F9lmgsnlZzs", "signatures": {} } },
            }),
        )
        .await;
    assert_eq!(status, 200, "{counts}");
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 1);
    let resp = sync(&server, &alice, &format!("since={since}")).await;
    assert!(resp["device_lists"]["changed"]
        .as_array()
        .unwrap()
        .contains(&json!(bob_id)));
    since = resp["next_batch"].as_str().unwrap().to_owned();
    let (_, queried) = server
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&alice),
            json!({ "device_keys": { bob_id.clone(): [] } }),
        )
        .await;
    assert_eq!(
        queried["device_keys"][bob_id.as_str()][bob_device.as_str()]["keys"],
        device_keys(&bob_id, &bob_device)["keys"]
    );
    let (_, claimed) = server
        .post(
            "/_matrix/client/v3/keys/claim",
            Some(&alice),
            json!({ "one_time_keys": { bob_id.clone(): { bob_device.clone(): "signed_curve25519" } } }),
        )
        .await;
    assert!(
        claimed["one_time_keys"][bob_id.as_str()][bob_device.as_str()]["signed_curve25519:AAAAAQ"]
            .is_object(),
        "{claimed}"
    );

    // Bob leaves the only room they share: his device list is "left" for alice.
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let resp = sync(&server, &alice, &format!("since={since}")).await;
    assert!(
        resp["device_lists"]["left"]
            .as_array()
            .unwrap()
            .contains(&json!(bob_id)),
        "{resp}"
    );

    // The sending device sees its transaction ID on its own event; nobody else does.
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/my-txn-1"),
            Some(&alice),
            json!({ "msgtype": "m.text", "body": "mine" }),
        )
        .await;
    assert_eq!(status, 200);
    let resp = sync(
        &server,
        &alice,
        &format!("since={}", resp["next_batch"].as_str().unwrap()),
    )
    .await;
    let mine = resp["rooms"]["join"][room.as_str()]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["content"]["body"] == "mine")
        .unwrap()
        .clone();
    assert_eq!(mine["unsigned"]["transaction_id"], "my-txn-1");
    let (_, page) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"),
            Some(&alice),
        )
        .await;
    assert_eq!(page["chunk"][0]["unsigned"]["transaction_id"], "my-txn-1");
}

/// A message answers a waiting /sync once, with its unread counts in that same answer: the
/// next long-poll from there has nothing to wake it (the counts are not a second change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_wakes_a_long_poll_once_with_its_counts() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (bob_id, bob, _) = server.register("bob", PASSWORD).await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let mut since = sync(&server, &bob, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mentions = [json!({}), json!({ "user_ids": [bob_id] })];
    for (i, (text, mentions)) in ["hello", "hello bob"].iter().zip(mentions).enumerate() {
        let url = server.url();
        let waiting = tokio::spawn({
            let (bob, since) = (bob.clone(), since.clone());
            async move {
                reqwest::Client::new()
                    .get(format!(
                        "{url}/_matrix/client/v3/sync?since={since}&timeout=30000"
                    ))
                    .bearer_auth(bob)
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, body) = server
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t{i}"),
                Some(&alice),
                json!({ "msgtype": "m.text", "body": text, "m.mentions": mentions }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let woken = waiting.await.unwrap();
        let joined = &woken["rooms"]["join"][room.as_str()];
        assert_eq!(bodies(joined), vec![text.to_string()], "{woken}");
        // Unread since bob's join: one message, then two (the second mentions him).
        assert_eq!(
            joined["unread_notifications"]["notification_count"],
            i + 1,
            "the counts come with the event: {woken}"
        );
        assert_eq!(joined["unread_notifications"]["highlight_count"], i);
        let next = woken["next_batch"].as_str().unwrap();
        let quiet = sync(&server, &bob, &format!("since={next}&timeout=1500")).await;
        assert!(
            quiet["rooms"]["join"]
                .as_object()
                .is_none_or(|m| m.is_empty()),
            "a second answer for the same message: {quiet}"
        );
        since = quiet["next_batch"].as_str().unwrap().to_owned();
    }
}

/// Members on the server's default rules share one evaluation of each event unless the event
/// names them; each one mentioned, or matching a rule of their own, still gets their own
/// highlight, and nobody else does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_member_is_highlighted_only_where_the_event_names_them() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (carol_id, carol, _) = server.register("carol", PASSWORD).await;
    let (_, dave, _) = server.register("dave", PASSWORD).await;
    let (erin_id, erin, _) = server.register("erin", PASSWORD).await;
    let (_, frank, _) = server.register("frank", PASSWORD).await;
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/profile/{carol_id}/displayname"),
            Some(&carol),
            json!({ "displayname": "Captain Marvel" }),
        )
        .await;
    assert_eq!(status, 200);
    // Dave has a keyword of his own: his rules are no longer the defaults.
    let (status, body) = server
        .put(
            "/_matrix/client/v3/pushrules/global/content/deploy",
            Some(&dave),
            json!({ "pattern": "deploy", "actions": ["notify", { "set_tweak": "highlight" }] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    for member in [&carol, &dave, &erin, &frank] {
        server.join(member, &room).await;
    }
    let mut since = Vec::new();
    for member in [&carol, &dave, &erin, &frank] {
        let s = sync(&server, member, "").await;
        since.push(s["next_batch"].as_str().unwrap().to_owned());
    }
    let mut n = 0;
    let mut send = |content: Value| {
        n += 1;
        let (server, alice, room) = (&server, &alice, &room);
        async move {
            let (status, body) = server
                .put(
                    &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t{n}"),
                    Some(alice),
                    content,
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    send(json!({ "msgtype": "m.text", "body": "hello everyone" })).await;
    // A display name in the body is no mention since Matrix 1.17 (the legacy rules are gone).
    send(json!({ "msgtype": "m.text", "body": "where is Captain Marvel?" })).await;
    send(json!({ "msgtype": "m.text", "body": "time to DEPLOY" })).await;
    send(json!({ "msgtype": "m.text", "body": "you there?", "m.mentions": { "user_ids": [erin_id] } }))
        .await;
    send(
        json!({ "msgtype": "m.text", "body": "and you", "m.mentions": { "user_ids": [carol_id] } }),
    )
    .await;
    send(json!({ "msgtype": "m.notice", "body": "a bot's notice" })).await;
    let plain = enc("{}");
    // Five notifying messages each (the notice notifies nobody); one highlight for each member
    // mentioned or matching their keyword, none for frank.
    for ((member, since), highlights) in [&carol, &dave, &erin, &frank]
        .into_iter()
        .zip(since.iter_mut())
        .zip([1, 1, 1, 0])
    {
        let joined = sync_until_counts(&server, member, &room, since, &plain, |j| {
            j["unread_notifications"]["notification_count"] == 5
        })
        .await;
        assert_eq!(
            joined["unread_notifications"]["highlight_count"], highlights,
            "{joined}"
        );
    }
}
