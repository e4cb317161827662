//! Relations: edits, reactions and threads aggregated in `unsigned.m.relations`, /relations,
//! /threads, redaction of related events, timestamp_to_event and reports.

use serde_json::{json, Value};

use crate::common::{assert_err, enc, TestServer};

const PASSWORD: &str = "a long password";

struct Room<'a> {
    server: &'a TestServer,
    id: String,
}

impl Room<'_> {
    async fn send(&self, token: &str, kind: &str, txn: &str, content: Value) -> (u16, Value) {
        self.server
            .put(
                &format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", self.id),
                Some(token),
                content,
            )
            .await
    }

    async fn sent(&self, token: &str, kind: &str, txn: &str, content: Value) -> String {
        let (status, body) = self.send(token, kind, txn, content).await;
        assert_eq!(status, 200, "{body}");
        body["event_id"].as_str().unwrap().to_owned()
    }

    async fn get(&self, token: &str, rest: &str) -> Value {
        let (status, body) = self
            .server
            .get(
                &format!("/_matrix/client/v1/rooms/{}/{rest}", self.id),
                Some(token),
            )
            .await;
        assert_eq!(status, 200, "{rest}: {body}");
        body
    }

    async fn event(&self, token: &str, event_id: &str) -> Value {
        let (status, body) = self
            .server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    self.id,
                    enc(event_id)
                ),
                Some(token),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

fn ids(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reactions_and_threads_are_aggregated() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (_, bob, _) = server.register("bob", PASSWORD).await;
    let (status, created) = server
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice),
            json!({ "preset": "public_chat" }),
        )
        .await;
    assert_eq!(status, 200);
    let room = Room {
        server: &server,
        id: created["room_id"].as_str().unwrap().to_owned(),
    };
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", room.id),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);

    let root = room
        .sent(
            &alice,
            "m.room.message",
            "root",
            json!({ "msgtype": "m.text", "body": "lunch?" }),
        )
        .await;
    let edit = |n: u32| {
        json!({
            "msgtype": "m.text", "body": format!("* lunch at {n}?"),
            "m.new_content": { "msgtype": "m.text", "body": format!("lunch at {n}?") },
            "m.relates_to": { "rel_type": "m.replace", "event_id": root },
        })
    };
    let _first_edit = room.sent(&alice, "m.room.message", "e1", edit(12)).await;
    let last_edit = room.sent(&alice, "m.room.message", "e2", edit(13)).await;
    // Bob cannot edit alice's message: his "edit" is stored but never applied.
    let bobs_edit = room.sent(&bob, "m.room.message", "e3", edit(99)).await;

    let react = |key: &str| json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": root, "key": key } });
    let thumbs_bob = room.sent(&bob, "m.reaction", "r1", react("👍")).await;
    let thumbs_alice = room.sent(&alice, "m.reaction", "r2", react("👍")).await;
    let heart_bob = room.sent(&bob, "m.reaction", "r3", react("❤️")).await;
    // A second identical reaction from the same user is refused (and changes nothing)...
    let dup = room.send(&bob, "m.reaction", "r4", react("👍")).await;
    assert_err(&dup, 400, "M_DUPLICATE_ANNOTATION");
    // ...but retrying the same transaction returns the original event.
    let (status, retry) = room.send(&bob, "m.reaction", "r1", react("👍")).await;
    assert_eq!(status, 200);
    assert_eq!(retry["event_id"], thumbs_bob.as_str());

    let reply = |who: &str| {
        json!({
            "msgtype": "m.text", "body": format!("{who} is in"),
            "m.relates_to": { "rel_type": "m.thread", "event_id": root,
                "is_falling_back": true, "m.in_reply_to": { "event_id": root } },
        })
    };
    let t1 = room.sent(&bob, "m.room.message", "t1", reply("bob")).await;
    let t2 = room
        .sent(&alice, "m.room.message", "t2", reply("alice"))
        .await;
    let t3 = room
        .sent(&bob, "m.room.message", "t3", reply("bob again"))
        .await;

    // A second thread, started by bob, whose root alice never touches.
    let other_root = room
        .sent(
            &bob,
            "m.room.message",
            "root2",
            json!({ "msgtype": "m.text", "body": "coffee?" }),
        )
        .await;
    let other_reply = json!({
        "msgtype": "m.text", "body": "me",
        "m.relates_to": { "rel_type": "m.thread", "event_id": other_root },
    });
    let t4 = room.sent(&bob, "m.room.message", "t4", other_reply).await;

    // Bundled aggregations, as bob sees the root.
    let ev = room.event(&bob, &root).await;
    let relations = &ev["unsigned"]["m.relations"];
    assert_eq!(
        relations["m.replace"]["event_id"],
        last_edit.as_str(),
        "{ev}"
    );
    assert_eq!(
        relations["m.replace"]["content"]["m.new_content"]["body"],
        "lunch at 13?"
    );
    assert_eq!(relations["m.thread"]["count"], 3, "{ev}");
    assert_eq!(
        relations["m.thread"]["latest_event"]["event_id"],
        t3.as_str()
    );
    assert_eq!(relations["m.thread"]["current_user_participated"], true);
    // The spec has servers leave annotations out of `m.relations`: clients count them from
    // /relations (below).
    assert!(relations.get("m.annotation").is_none(), "{ev}");
    // The original content stays as sent.
    assert_eq!(ev["content"]["body"], "lunch?");

    // /relations: everything, by rel_type, by rel_type and event type, paginated, forwards.
    let all = room
        .get(&bob, &format!("relations/{}?dir=f", enc(&root)))
        .await;
    assert_eq!(ids(&all["chunk"]).len(), 9, "{all}");
    let reactions = room
        .get(
            &bob,
            &format!("relations/{}/m.annotation/m.reaction?dir=f", enc(&root)),
        )
        .await;
    assert_eq!(
        ids(&reactions["chunk"]),
        vec![thumbs_bob.clone(), thumbs_alice.clone(), heart_bob.clone()]
    );
    let edits = room
        .get(&bob, &format!("relations/{}/m.replace", enc(&root)))
        .await;
    // Newest first by default; bob's edit is listed (it relates) though never applied.
    assert_eq!(
        ids(&edits["chunk"]),
        vec![bobs_edit.clone(), last_edit.clone(), _first_edit.clone()]
    );
    let mut paged = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut q = format!("relations/{}/m.thread?limit=2&dir=f", enc(&root));
        if let Some(f) = &from {
            q.push_str(&format!("&from={f}"));
        }
        let page = room.get(&alice, &q).await;
        paged.extend(ids(&page["chunk"]));
        match page["next_batch"].as_str() {
            Some(next) => from = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, vec![t1.clone(), t2.clone(), t3.clone()]);

    // Recursion: a reaction to a thread reply is a relation of a relation.
    let nested = room
        .sent(
            &alice,
            "m.reaction",
            "r5",
            json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": t1, "key": "🎉" } }),
        )
        .await;
    let flat = room
        .get(&bob, &format!("relations/{}/m.thread", enc(&root)))
        .await;
    assert!(!ids(&flat["chunk"]).contains(&nested));
    let deep = room
        .get(
            &bob,
            &format!("relations/{}/m.thread?recurse=true", enc(&root)),
        )
        .await;
    assert!(ids(&deep["chunk"]).contains(&nested), "{deep}");
    assert_eq!(deep["recursion_depth"], 2);

    // /threads: both roots, most recently active first; "participated" narrows alice's list.
    let all_threads = room.get(&alice, "threads").await;
    assert_eq!(
        ids(&all_threads["chunk"]),
        vec![other_root.clone(), root.clone()]
    );
    assert_eq!(
        all_threads["chunk"][1]["unsigned"]["m.relations"]["m.thread"]["count"],
        3
    );
    let mine = room.get(&alice, "threads?include=participated").await;
    assert_eq!(ids(&mine["chunk"]), vec![root.clone()]);
    let first_page = room.get(&alice, "threads?limit=1").await;
    assert_eq!(ids(&first_page["chunk"]), vec![other_root.clone()]);
    let next = first_page["next_batch"].as_str().expect("more threads");
    let second_page = room
        .get(&alice, &format!("threads?limit=1&from={next}"))
        .await;
    assert_eq!(ids(&second_page["chunk"]), vec![root.clone()]);
    let _ = t4;

    // Redacting a reaction removes it from /relations, and bob may react that way again.
    let (status, _) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/x1",
                room.id,
                enc(&thumbs_bob)
            ),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let reactions = room
        .get(
            &bob,
            &format!("relations/{}/m.annotation?dir=f", enc(&root)),
        )
        .await;
    assert_eq!(
        ids(&reactions["chunk"]),
        vec![thumbs_alice.clone(), heart_bob.clone()]
    );
    room.sent(&bob, "m.reaction", "r6", react("👍")).await;

    // Redacting the latest edit falls back to the one before; the redacted event is served
    // stripped per the room version's rules (v12 keeps nothing of a message's content).
    let (status, _) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/x2",
                room.id,
                enc(&last_edit)
            ),
            Some(&alice),
            json!({ "reason": "typo" }),
        )
        .await;
    assert_eq!(status, 200);
    let ev = room.event(&bob, &root).await;
    assert_eq!(
        ev["unsigned"]["m.relations"]["m.replace"]["event_id"],
        _first_edit.as_str()
    );
    let redacted = room.event(&bob, &last_edit).await;
    assert_eq!(redacted["content"], json!({}), "{redacted}");
    assert!(
        redacted["unsigned"]["redacted_because"].is_object(),
        "{redacted}"
    );

    // Outsiders see nothing of any of it.
    let (_, carol, _) = server.register("carol", PASSWORD).await;
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v1/rooms/{}/relations/{}",
                room.id,
                enc(&root)
            ),
            Some(&carol),
        )
        .await;
    assert_err(&(status, body), 403, "M_FORBIDDEN");
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v1/rooms/{}/threads", room.id),
            Some(&carol),
        )
        .await;
    assert_err(&(status, body), 403, "M_FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_lookup_and_reports() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (_, created) = server
        .post("/_matrix/client/v3/createRoom", Some(&alice), json!({}))
        .await;
    let room = Room {
        server: &server,
        id: created["room_id"].as_str().unwrap().to_owned(),
    };
    let first = room
        .sent(
            &alice,
            "m.room.message",
            "a",
            json!({ "msgtype": "m.text", "body": "one" }),
        )
        .await;
    let first_ts = room.event(&alice, &first).await["origin_server_ts"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = room
        .sent(
            &alice,
            "m.room.message",
            "b",
            json!({ "msgtype": "m.text", "body": "two" }),
        )
        .await;
    let second_ts = room.event(&alice, &second).await["origin_server_ts"]
        .as_u64()
        .unwrap();
    assert!(second_ts > first_ts);

    let found = room
        .get(
            &alice,
            &format!("timestamp_to_event?ts={}&dir=f", first_ts + 1),
        )
        .await;
    assert_eq!(found["event_id"], second.as_str());
    assert_eq!(found["origin_server_ts"], second_ts);
    let found = room
        .get(
            &alice,
            &format!("timestamp_to_event?ts={}&dir=b", second_ts - 1),
        )
        .await;
    assert_eq!(found["event_id"], first.as_str());
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={}&dir=f",
                room.id,
                second_ts + 60_000
            ),
            Some(&alice),
        )
        .await;
    assert_err(&(status, body), 404, "M_NOT_FOUND");

    let (status, body) = server
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/report/{}",
                room.id,
                enc(&first)
            ),
            Some(&alice),
            json!({ "reason": "spam" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/report/{}",
                room.id,
                enc("$doesnotexist")
            ),
            Some(&alice),
            json!({ "reason": "spam" }),
        )
        .await;
    assert_err(&(status, body), 404, "M_NOT_FOUND");
}
