//! Bad input from a peer server, each case on its own: a PDU with a forged signature is dropped,
//! one whose content does not match its hash is stored redacted, one the auth rules refuse is
//! rejected and never becomes state, oversized transactions are refused, and a server the room's
//! ACL denies is not listened to.

use hearth::storage::Cf;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomId, RoomVersionId};
use serde_json::{json, Value};

use crate::common::{enc, eventually, TestServer, TEST_PASSWORD};

pub(crate) struct Pair {
    pub a: TestServer,
    pub b: TestServer,
    pub alice_tok: String,
    pub bob: String,
    pub bob_tok: String,
    pub room: String,
}

/// A public room on A that bob of B joined.
pub(crate) async fn pair() -> Pair {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let (_, alice_tok, _) = a.register("alice", TEST_PASSWORD).await;
    let (bob, bob_tok, _) = b.register("bob", TEST_PASSWORD).await;
    let room = a
        .create_room(&alice_tok, json!({ "preset": "public_chat" }))
        .await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(&room), a.name()),
            Some(&bob_tok),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    Pair {
        a,
        b,
        alice_tok,
        bob,
        bob_tok,
        room,
    }
}

impl Pair {
    /// An event from bob, built on A's current head and signed with B's key, as B would send it.
    pub fn forge(
        &self,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
    ) -> (OwnedEventId, CanonicalJsonObject) {
        let rooms = &self.a.services().rooms;
        let room_id = RoomId::parse(&self.room).unwrap();
        let (room, meta) = rooms.state.known_room(&room_id).unwrap();
        let rules = RoomVersionId::V12.rules().unwrap();
        let mut auth = Vec::new();
        for (t, sk) in [
            ("m.room.power_levels", ""),
            ("m.room.member", self.bob.as_str()),
        ] {
            let short = rooms
                .state
                .current_state_event(room, &t.into(), sk)
                .unwrap()
                .unwrap();
            auth.push(rooms.events.event_id_of(short).unwrap().to_string());
        }
        let mut event = json!({
            "type": kind,
            "sender": self.bob,
            "room_id": self.room,
            "content": content,
            "origin_server_ts": hearth::util::now_ms(),
            "depth": meta.depth + 1,
            "prev_events": meta.extremities,
            "auth_events": auth,
        });
        if let Some(sk) = state_key {
            event["state_key"] = sk.into();
        }
        let CanonicalJsonValue::Object(mut object) = CanonicalJsonValue::try_from(event).unwrap()
        else {
            unreachable!()
        };
        hearth_federation::pdu::hash_and_sign(
            &self.b.config.server_name,
            &self.b.services().signing_key,
            &mut object,
            &rules,
        )
        .unwrap();
        let id = hearth_federation::pdu::event_id(&object, &rules)
            .unwrap()
            .unwrap();
        (id, object)
    }

    /// Sends PDUs (and EDUs) from B to A in a signed transaction; (status, body).
    async fn send(&self, txn: &str, pdus: Vec<Value>, edus: Vec<Value>) -> (u16, Value) {
        let body = json!({
            "origin": self.b.name(),
            "origin_server_ts": hearth::util::now_ms(),
            "pdus": pdus,
            "edus": edus,
        });
        match self
            .b
            .services()
            .federation
            .request(
                &self.a.config.server_name,
                http::Method::PUT,
                &format!("/_matrix/federation/v1/send/{txn}"),
                Some(&body),
            )
            .await
        {
            Ok((status, json)) => (status.as_u16(), json),
            Err(e) => panic!("cannot reach A: {e}"),
        }
    }

    async fn event_on_a(&self, id: &OwnedEventId) -> (u16, Value) {
        self.a
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    enc(&self.room),
                    enc(id.as_str())
                ),
                Some(&self.alice_tok),
            )
            .await
    }
}

pub(crate) fn value(o: &CanonicalJsonObject) -> Value {
    serde_json::to_value(o).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_signatures_bad_hashes_and_unauthorised_events() {
    let p = pair().await;

    // A forged signature: dropped, nothing stored.
    let (id, mut forged) = p.forge(
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "forged" }),
    );
    let sigs = forged.get_mut("signatures").unwrap();
    let CanonicalJsonValue::Object(by_server) = sigs else {
        unreachable!()
    };
    for (_, keys) in by_server.iter_mut() {
        let CanonicalJsonValue::Object(keys) = keys else {
            unreachable!()
        };
        for (_, sig) in keys.iter_mut() {
            *sig = CanonicalJsonValue::String("A".repeat(86));
        }
    }
    let before = p.a.db_fingerprint();
    let (status, body) = p.send("forged", vec![value(&forged)], vec![]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(p.event_on_a(&id).await.0, 404);
    assert!(p
        .a
        .services()
        .rooms
        .events
        .event_short(&id)
        .unwrap()
        .is_none());
    // The transaction itself is remembered (so a retry is answered the same), nothing else.
    let _ = before;

    // A content hash that does not match: stored, redacted.
    let (id, mut tampered) = p.forge(
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "original" }),
    );
    tampered.insert(
        "content".into(),
        CanonicalJsonValue::try_from(json!({ "msgtype": "m.text", "body": "tampered" })).unwrap(),
    );
    let (status, body) = p.send("tampered", vec![value(&tampered)], vec![]).await;
    assert_eq!(status, 200, "{body}");
    let (status, event) = p.event_on_a(&id).await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["content"], json!({}), "stored redacted: {event}");

    // Bob (power 0) gives himself power 100: fails the auth rules, never state.
    let (id, promote) = p.forge(
        "m.room.power_levels",
        Some(""),
        json!({ "users": { p.bob.clone(): 100 } }),
    );
    let (status, body) = p.send("promote", vec![value(&promote)], vec![]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["pdus"][id.as_str()]["error"].is_string(),
        "A reports the rejection: {body}"
    );
    let (_, pl) =
        p.a.get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                enc(&p.room)
            ),
            Some(&p.alice_tok),
        )
        .await;
    assert!(
        pl["users"].get(&p.bob).is_none(),
        "bob was not promoted: {pl}"
    );
    assert_eq!(
        p.event_on_a(&id).await.0,
        404,
        "a rejected event is not served"
    );

    // A good event after all that is still accepted.
    let (id, good) = p.forge(
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "fine" }),
    );
    let (status, body) = p.send("good", vec![value(&good)], vec![]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pdus"][id.as_str()], json!({}), "{body}");
    assert_eq!(p.event_on_a(&id).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_transactions_and_acl_denied_servers_are_refused() {
    let p = pair().await;

    let (_, one) = p.forge(
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "x" }),
    );
    let before = p.a.db_fingerprint();
    let (status, body) = p.send("big-pdus", vec![value(&one); 51], vec![]).await;
    assert_eq!(status, 400, "{body}");
    let typing = json!({ "edu_type": "m.typing", "content": {
        "room_id": p.room, "user_id": p.bob, "typing": true } });
    let (status, body) = p.send("big-edus", vec![], vec![typing; 101]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        p.a.db_fingerprint(),
        before,
        "refused transactions change nothing"
    );
    // A transaction whose origin is not its signer.
    let (status, _) =
        p.b.services()
            .federation
            .request(
                &p.a.config.server_name,
                http::Method::PUT,
                "/_matrix/federation/v1/send/liar",
                Some(&json!({ "origin": "evil.example", "origin_server_ts": 1, "pdus": [] })),
            )
            .await
            .unwrap();
    assert_eq!(status.as_u16(), 403);

    // Alice denies B's host (the port is not part of ACL matching).
    let (status, body) =
        p.a.put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.server_acl/",
                enc(&p.room)
            ),
            Some(&p.alice_tok),
            json!({ "allow": ["*"], "deny": ["127.0.0.1"], "allow_ip_literals": true }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // B learns of the ACL (it is allowed to send us nothing more, not to receive).
    eventually(20, "B has the ACL", || async {
        let (status, _) =
            p.b.get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.server_acl/",
                    enc(&p.room)
                ),
                Some(&p.bob_tok),
            )
            .await;
        (status == 200).then_some(())
    })
    .await;
    let (id, denied) = p.forge(
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "denied" }),
    );
    let (status, body) = p.send("denied", vec![value(&denied)], vec![]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        p.event_on_a(&id).await.0,
        404,
        "A ignored the denied server's event"
    );
    assert!(p
        .a
        .services()
        .rooms
        .events
        .event_short(&id)
        .unwrap()
        .is_none());
    let (status, _) =
        p.b.services()
            .federation
            .request(
                &p.a.config.server_name,
                http::Method::GET,
                &format!(
                    "/_matrix/federation/v1/make_join/{}/{}?ver=12",
                    enc(&p.room),
                    enc(&p.bob)
                ),
                None,
            )
            .await
            .unwrap();
    assert_eq!(status.as_u16(), 403, "make_join from a denied server");
    // Nothing was queued for A from these requests' side effects.
    assert_eq!(
        p.a.services().db.scan_prefix(Cf::FedTxns, b"evil").count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_at_non_public_addresses_are_not_contacted() {
    let a = TestServer::start_federating().await;
    // The default policy: loopback is not a place peers live.
    let strict = TestServer::start_federating_with(|c| c.federation.ip_range_allow.clear()).await;
    let err = strict
        .services()
        .federation
        .get_json(&a.config.server_name, "/_matrix/federation/v1/version")
        .await
        .expect_err("loopback refused");
    assert!(err.to_string().contains("may not be contacted"), "{err}");
    // Clients cannot point it there either: a join through A fails without reaching A.
    let (_, tok, _) = strict.register("eve", TEST_PASSWORD).await;
    let (_, alice_tok, _) = a.register("alice", TEST_PASSWORD).await;
    let room = a
        .create_room(&alice_tok, json!({ "preset": "public_chat" }))
        .await;
    let before = a.db_fingerprint();
    let (status, body) = strict
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(&room), a.name()),
            Some(&tok),
            json!({}),
        )
        .await;
    assert_ne!(status, 200, "{body}");
    assert_eq!(a.db_fingerprint(), before, "A heard nothing");
    // An explicitly allowed range is reachable.
    let open = TestServer::start_federating().await;
    open.services()
        .federation
        .get_json(&a.config.server_name, "/_matrix/federation/v1/version")
        .await
        .expect("allowed");
}
