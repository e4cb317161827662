//! Redacted events as clients get them: `unsigned.redacted_because` holds the redaction as a
//! client event (event ID, sender, type, content, `redacts` where the room version puts it) in
//! every room version and from /event, /messages, /sync, /context and /state, for local and
//! remote redactions, while federation keeps serving the redacted PDU exactly as stored. And
//! /messages pages from a /sync `next_batch` (as `from` and as `to`) in both directions.

use ruma::{
    serde::Base64,
    signatures::{verify_event, Verified},
    CanonicalJsonObject, RoomVersionId,
};
use serde_json::{json, Value};

use crate::common::{assert_err, enc, eventually, TestServer, TEST_PASSWORD};

/// Redacts `event` as `token`'s user with a reason; the redaction's event ID.
async fn redact(server: &TestServer, token: &str, room: &str, event: &str, txn: &str) -> String {
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/{txn}",
                enc(room),
                enc(event)
            ),
            Some(token),
            json!({ "reason": "oops" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

async fn get_ok(server: &TestServer, token: &str, path: &str) -> Value {
    let (status, body) = server.get(path, Some(token)).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

async fn event(server: &TestServer, token: &str, room: &str, event: &str) -> Value {
    get_ok(
        server,
        token,
        &format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(room),
            enc(event)
        ),
    )
    .await
}

/// The event with this ID in a list of client events.
fn find<'a>(events: &'a Value, id: &str, what: &str) -> &'a Value {
    events
        .as_array()
        .unwrap_or_else(|| panic!("{what}: not a list"))
        .iter()
        .find(|e| e["event_id"] == id)
        .unwrap_or_else(|| panic!("{what}: {id} missing from {events}"))
}

fn without_unsigned(event: &Value) -> Value {
    let mut e = event.clone();
    e.as_object_mut().unwrap().remove("unsigned");
    e
}

/// What a redaction looks like to clients in this room version.
struct Expected<'a> {
    version: u32,
    room: &'a str,
    redacted: &'a str,
    redaction: &'a str,
    sender: &'a str,
    /// The redaction event as GET /event serves it.
    served: &'a Value,
}

impl Expected<'_> {
    /// Checks that `ev` is the redacted event carrying the redaction as a client event.
    fn check(&self, ev: &Value, what: &str) {
        let v = self.version;
        let ctx = format!("v{v} {what}: {ev}");
        assert_eq!(ev["event_id"], self.redacted, "{ctx}");
        assert_eq!(ev["content"], json!({}), "{ctx}");
        let because = &ev["unsigned"]["redacted_because"];
        assert!(because.is_object(), "{ctx}");
        assert_eq!(because["event_id"], self.redaction, "{ctx}");
        assert_eq!(because["type"], "m.room.redaction", "{ctx}");
        assert_eq!(because["sender"], self.sender, "{ctx}");
        assert_eq!(because["room_id"], self.room, "{ctx}");
        assert!(because["origin_server_ts"].is_u64(), "{ctx}");
        assert_eq!(because["content"]["reason"], "oops", "{ctx}");
        if v >= 11 {
            assert_eq!(because["content"]["redacts"], self.redacted, "{ctx}");
            assert!(because.get("redacts").is_none(), "{ctx}");
        } else {
            assert_eq!(because["redacts"], self.redacted, "{ctx}");
            assert!(because["content"].get("redacts").is_none(), "{ctx}");
        }
        // Nothing of the PDU's federation side.
        for field in [
            "signatures",
            "hashes",
            "auth_events",
            "prev_events",
            "depth",
            "origin",
        ] {
            assert!(because.get(field).is_none(), "{field} in {ctx}");
        }
        // The very event clients get for the redaction itself.
        assert_eq!(
            without_unsigned(because),
            without_unsigned(self.served),
            "{ctx}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_events_carry_the_redaction_as_a_client_event_everywhere() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", TEST_PASSWORD).await;
    let (bob_id, bob, _) = server.register("bob", TEST_PASSWORD).await;
    let big_timeline = enc(&json!({ "room": { "timeline": { "limit": 100 } } }).to_string());
    for version in 1..=12u32 {
        let room = server
            .create_room(
                &alice,
                json!({ "room_version": version.to_string(), "preset": "public_chat" }),
            )
            .await;
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                Some(&bob),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: {body}");
        let since = get_ok(&server, &alice, "/_matrix/client/v3/sync?timeout=0").await
            ["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();

        let message = server.say(&bob, &room, &format!("hello v{version}")).await;
        let after = server
            .say(&alice, &room, &format!("after v{version}"))
            .await;
        let redaction = redact(&server, &bob, &room, &message, &format!("r{version}")).await;
        let served = event(&server, &alice, &room, &redaction).await;
        let expected = Expected {
            version,
            room: &room,
            redacted: &message,
            redaction: &redaction,
            sender: &bob_id,
            served: &served,
        };

        // GET /event.
        expected.check(&event(&server, &alice, &room, &message).await, "/event");

        // /messages, both directions.
        for dir in ["b", "f"] {
            let page = get_ok(
                &server,
                &alice,
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir={dir}&limit=100",
                    enc(&room)
                ),
            )
            .await;
            expected.check(
                find(&page["chunk"], &message, "/messages"),
                &format!("/messages dir={dir}"),
            );
        }

        // /sync: an incremental one and a full one.
        for (what, path) in [
            (
                "incremental /sync",
                format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            ),
            (
                "initial /sync",
                format!("/_matrix/client/v3/sync?timeout=0&filter={big_timeline}"),
            ),
        ] {
            let sync = get_ok(&server, &alice, &path).await;
            let timeline = &sync["rooms"]["join"][room.as_str()]["timeline"]["events"];
            expected.check(find(timeline, &message, what), what);
        }

        // /context, of the redacted event itself and of an event after it.
        let context = get_ok(
            &server,
            &alice,
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=10",
                enc(&room),
                enc(&message)
            ),
        )
        .await;
        expected.check(&context["event"], "/context event");
        let context = get_ok(
            &server,
            &alice,
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=10",
                enc(&room),
                enc(&after)
            ),
        )
        .await;
        expected.check(
            find(
                &context["events_before"],
                &message,
                "/context events_before",
            ),
            "/context events_before",
        );

        // A redacted state event, through /state (and /sync's timeline).
        let (status, body) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                    enc(&room)
                ),
                Some(&alice),
                json!({ "topic": "secret" }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let topic = body["event_id"].as_str().unwrap().to_owned();
        let topic_redaction = redact(&server, &alice, &room, &topic, &format!("t{version}")).await;
        let topic_served = event(&server, &alice, &room, &topic_redaction).await;
        let topic_expected = Expected {
            redacted: &topic,
            redaction: &topic_redaction,
            sender: &alice_id,
            served: &topic_served,
            ..expected
        };
        let state = get_ok(
            &server,
            &bob,
            &format!("/_matrix/client/v3/rooms/{}/state", enc(&room)),
        )
        .await;
        topic_expected.check(find(&state, &topic, "/state"), "/state");
        let sync = get_ok(
            &server,
            &bob,
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
        )
        .await;
        topic_expected.check(
            find(
                &sync["rooms"]["join"][room.as_str()]["timeline"]["events"],
                &topic,
                "/sync",
            ),
            "/sync of a state event",
        );

        // The stored PDU (what federation serves) still holds the redaction as a PDU.
        let rooms = &server.services().rooms;
        let short = rooms
            .events
            .event_short(&ruma::EventId::parse(&message).unwrap())
            .unwrap()
            .unwrap();
        let stored = rooms.events.event_json(short).unwrap().unwrap();
        let stored_because = &stored["unsigned"]["redacted_because"];
        assert!(stored_because["signatures"].is_object(), "v{version}");
        assert_eq!(
            stored_because.get("event_id").is_some(),
            version <= 2,
            "v{version}: {stored_because}"
        );
    }
}

/// A room of `version` on A that bob of B joined: (A, B, alice's token, bob, bob's token, room).
async fn federated_room(version: &str) -> (TestServer, TestServer, String, String, String, String) {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let (_, alice_tok, _) = a.register("alice", TEST_PASSWORD).await;
    let (bob, bob_tok, _) = b.register("bob", TEST_PASSWORD).await;
    let room = a
        .create_room(
            &alice_tok,
            json!({ "room_version": version, "preset": "public_chat" }),
        )
        .await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(&room), a.name()),
            Some(&bob_tok),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    (a, b, alice_tok, bob, bob_tok, room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_redactions_carry_the_redaction_and_federation_serves_the_stored_pdu() {
    for version in [10u32, 12] {
        let (a, b, alice_tok, bob, bob_tok, room) = federated_room(&version.to_string()).await;
        let message = b.say(&bob_tok, &room, "from bob").await;
        eventually(20, "A has bob's message", || async {
            let (status, _) = a
                .get(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/event/{}",
                        enc(&room),
                        enc(&message)
                    ),
                    Some(&alice_tok),
                )
                .await;
            (status == 200).then_some(())
        })
        .await;
        // Bob redacts on B; A gets the redaction over federation.
        let redaction = redact(&b, &bob_tok, &room, &message, "r").await;
        let redacted = eventually(20, "A has bob's message redacted", || async {
            let (status, ev) = a
                .get(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/event/{}",
                        enc(&room),
                        enc(&message)
                    ),
                    Some(&alice_tok),
                )
                .await;
            (status == 200 && ev["content"] == json!({})).then_some(ev)
        })
        .await;
        let served = event(&a, &alice_tok, &room, &redaction).await;
        let expected = Expected {
            version,
            room: &room,
            redacted: &message,
            redaction: &redaction,
            sender: &bob,
            served: &served,
        };
        expected.check(&redacted, "remote /event");
        let page = get_ok(
            &a,
            &alice_tok,
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                enc(&room)
            ),
        )
        .await;
        expected.check(
            find(&page["chunk"], &message, "/messages"),
            "remote /messages",
        );
        let sync = get_ok(&a, &alice_tok, "/_matrix/client/v3/sync?timeout=0").await;
        expected.check(
            find(
                &sync["rooms"]["join"][room.as_str()]["timeline"]["events"],
                &message,
                "/sync",
            ),
            "remote /sync",
        );
        let context = get_ok(
            &a,
            &alice_tok,
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}",
                enc(&room),
                enc(&message)
            ),
        )
        .await;
        expected.check(&context["event"], "remote /context");

        // Over federation, A serves the redacted PDU exactly as it stores it: no client fields,
        // and bob's server's signature still verifies (the content hash no longer matches).
        let rooms = &a.services().rooms;
        let short = rooms
            .events
            .event_short(&ruma::EventId::parse(&message).unwrap())
            .unwrap()
            .unwrap();
        let stored = Value::Object(rooms.events.event_json(short).unwrap().unwrap());
        let got = federation_get(
            &b,
            &a,
            &format!("/_matrix/federation/v1/event/{}", enc(&message)),
        )
        .await;
        let pdu = &got["pdus"][0];
        assert_eq!(pdu, &stored, "v{version}");
        assert!(pdu.get("event_id").is_none(), "v{version}: {pdu}");
        let because = &pdu["unsigned"]["redacted_because"];
        assert!(because.get("event_id").is_none(), "v{version}: {pdu}");
        assert!(because["signatures"].is_object(), "v{version}: {pdu}");
        let backfill = federation_get(
            &b,
            &a,
            &format!(
                "/_matrix/federation/v1/backfill/{}?v={}&limit=100",
                enc(&room),
                enc(&redaction)
            ),
        )
        .await;
        assert!(
            backfill["pdus"].as_array().unwrap().contains(&stored),
            "v{version} backfill: {backfill}"
        );

        let key = &b.services().signing_key;
        let keys = std::collections::BTreeMap::from([(
            b.name(),
            std::collections::BTreeMap::from([(
                key.key_id(),
                Base64::parse(key.public_key_base64()).unwrap(),
            )]),
        )]);
        let object: CanonicalJsonObject = serde_json::from_value(pdu.clone()).unwrap();
        let rules = RoomVersionId::try_from(version.to_string())
            .unwrap()
            .rules()
            .unwrap();
        assert_eq!(
            verify_event(&keys, &object, &rules).expect("signatures verify"),
            Verified::Signatures,
            "v{version}"
        );
    }
}

/// A signed federation GET from `from` to `to`; the body.
async fn federation_get(from: &TestServer, to: &TestServer, path: &str) -> Value {
    let (status, body) = from
        .services()
        .federation
        .request(&to.config.server_name, http::Method::GET, path, None)
        .await
        .expect("the peer answers");
    assert_eq!(status.as_u16(), 200, "{path}: {body}");
    body
}

fn bodies(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["content"]["body"]
                .as_str()
                .unwrap_or("<not a message>")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_pages_from_a_sync_next_batch() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", TEST_PASSWORD).await;
    let room = server.create_room(&alice, json!({})).await;
    for i in 0..5 {
        server.say(&alice, &room, &format!("m{i}")).await;
    }
    let sync = get_ok(&server, &alice, "/_matrix/client/v3/sync?timeout=0").await;
    let next_batch = sync["next_batch"].as_str().unwrap().to_owned();
    assert!(next_batch.starts_with('s'), "{next_batch}");
    let messages = |query: String| {
        let server = &server;
        let alice = &alice;
        let room = &room;
        async move {
            get_ok(
                server,
                alice,
                &format!("/_matrix/client/v3/rooms/{}/messages?{query}", enc(room)),
            )
            .await
        }
    };

    // Backwards from next_batch: the newest events first, then on from `end`.
    let page = messages(format!("dir=b&limit=3&from={next_batch}")).await;
    assert_eq!(bodies(&page["chunk"]), ["m4", "m3", "m2"], "{page}");
    assert_eq!(page["start"], next_batch.as_str());
    let end = page["end"].as_str().unwrap().to_owned();
    let page = messages(format!("dir=b&limit=2&from={end}")).await;
    assert_eq!(bodies(&page["chunk"]), ["m1", "m0"], "{page}");

    // Forwards from the old next_batch: exactly what came after it, in order.
    let page = messages(format!("dir=f&limit=10&from={next_batch}")).await;
    assert!(
        page["chunk"].as_array().is_none_or(Vec::is_empty),
        "nothing new yet: {page}"
    );
    for i in 0..2 {
        server.say(&alice, &room, &format!("n{i}")).await;
    }
    let middle = get_ok(
        &server,
        &alice,
        &format!("/_matrix/client/v3/sync?timeout=0&since={next_batch}"),
    )
    .await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    server.say(&alice, &room, "n2").await;
    let page = messages(format!("dir=f&limit=10&from={next_batch}")).await;
    assert_eq!(bodies(&page["chunk"]), ["n0", "n1", "n2"], "{page}");
    assert_eq!(page["start"], next_batch.as_str());

    // A sync token as `to`, both ways.
    let page = messages(format!("dir=f&limit=10&from={next_batch}&to={middle}")).await;
    assert_eq!(bodies(&page["chunk"]), ["n0", "n1"], "{page}");
    let page = messages(format!("dir=b&limit=10&to={next_batch}")).await;
    assert_eq!(bodies(&page["chunk"]), ["n2", "n1", "n0"], "{page}");
    let page = messages(format!("dir=b&limit=10&from={middle}&to={next_batch}")).await;
    assert_eq!(bodies(&page["chunk"]), ["n1", "n0"], "{page}");

    // A /sync prev_batch still works as before.
    let prev_batch = sync["rooms"]["join"][room.as_str()]["timeline"]["prev_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let page = messages(format!("dir=b&limit=100&from={prev_batch}")).await;
    assert!(!bodies(&page["chunk"]).contains(&"m4".to_owned()), "{page}");

    // Anything else is refused, and changes nothing.
    let before = server.db_fingerprint();
    for bad in [
        "s", "s1", "s1_", "s_1", "sx_1", "s1_x", "s1_2_3", "p", "px", "garbage", "1", "t1_2",
    ] {
        for param in ["from", "to"] {
            let resp = server
                .get(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/messages?dir=b&{param}={}",
                        enc(&room),
                        enc(bad)
                    ),
                    Some(&alice),
                )
                .await;
            assert_err(&resp, 400, "M_INVALID_PARAM");
        }
    }
    assert_eq!(server.db_fingerprint(), before);
}
