//! `/search`: messages found by their words (ranked, or newest first page by page), only where
//! the searcher may read them, never from encrypted rooms, gone once redacted; the index
//! survives restarts and is rebuilt from the database when lost.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::common::{assert_err, enc, eventually, TestServer, TEST_PASSWORD};

const SEARCH: &str = "/_matrix/client/v3/search";

/// A search request for `term` with extra criteria merged in.
fn criteria(term: &str, extra: Value) -> Value {
    let mut c = json!({ "search_term": term });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    json!({ "search_categories": { "room_events": c } })
}

/// One page: the results' event IDs in order, and the whole `room_events` answer.
async fn search_page(
    s: &TestServer,
    token: &str,
    body: Value,
    next_batch: Option<&str>,
) -> (Vec<String>, Value) {
    let path = match next_batch {
        Some(n) => format!("{SEARCH}?next_batch={}", enc(n)),
        None => SEARCH.to_owned(),
    };
    let (status, resp) = s.post(&path, Some(token), body).await;
    assert_eq!(status, 200, "{resp}");
    let events = resp["search_categories"]["room_events"].clone();
    // No results: the field may be left out.
    let ids = events["results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| r["result"]["event_id"].as_str().unwrap().to_owned())
        .collect();
    (ids, events)
}

async fn find(s: &TestServer, token: &str, term: &str) -> Vec<String> {
    search_page(s, token, criteria(term, json!({})), None)
        .await
        .0
}

/// Waits until the index has taken in everything sent so far.
async fn indexed(s: &TestServer) {
    let search = s.services().search.clone();
    eventually(60, "the search index to catch up", || {
        let search = search.clone();
        async move { (search.backlog().ok()? == 0).then_some(()) }
    })
    .await;
}

/// Sends messages with `texts`, `at_once` at a time; their event IDs in order of `texts`.
async fn send_all(
    s: &TestServer,
    token: &str,
    room: &str,
    texts: Vec<String>,
    at_once: usize,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(at_once) {
        let sends = chunk.iter().map(|text| async move {
            let txn = format!("t{:x}", rand_id(text));
            let (status, body) = s
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                        enc(room)
                    ),
                    Some(token),
                    json!({ "msgtype": "m.text", "body": text }),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            body["event_id"].as_str().unwrap().to_owned()
        });
        ids.extend(futures_util::future::join_all(sends).await);
    }
    ids
}

/// A transaction ID per text (texts are unique within a test).
fn rand_id(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_words_find_the_best_match_first_in_a_room_of_ten_thousand_messages() {
    let s = TestServer::start().await;
    let (_, alice, _) = s.register("alice", TEST_PASSWORD).await;
    let room = s.create_room(&alice, json!({ "name": "General" })).await;
    let mut texts: Vec<String> = (0..10_000)
        .map(|i| format!("chatter number {i} about lunch and the weather"))
        .collect();
    // The planted messages: both words in a short message (best), both in a long one, one
    // word only (not a match: every word must match), another form of the words (stemming).
    texts[2_000] = "Quarterly budget review".into();
    texts[5_000] = "In the meeting we talked about many things, among them the budget of the \
                    office party and, much later and only briefly, a review of the coffee machine"
        .into();
    texts[7_000] = "the budget alone".into();
    texts[9_000] = "reviewing budgets".into();
    let ids = send_all(&s, &alice, &room, texts, 16).await;
    indexed(&s).await;

    let (found, events) = search_page(&s, &alice, criteria("budget review", json!({})), None).await;
    assert_eq!(
        found[0], ids[2_000],
        "the short exact match first: {events}"
    );
    assert_eq!(
        found.iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([ids[2_000].clone(), ids[5_000].clone(), ids[9_000].clone()]),
        "{events}"
    );
    assert_eq!(events["count"], 3);
    assert!(events["results"][0]["rank"].as_f64().unwrap() > 0.0);
    let highlights: BTreeSet<&str> = events["highlights"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        highlights.contains("budget") && highlights.contains("reviewing"),
        "{highlights:?}"
    );
    assert!(events.get("next_batch").is_none(), "{events}");

    // Case and accents aside; a phrase matches its words in order only.
    assert_eq!(
        find(&s, &alice, "QUARTÉRLY").await,
        vec![ids[2_000].clone()]
    );
    assert_eq!(
        find(&s, &alice, "\"budget review\"").await,
        vec![ids[2_000].clone()]
    );
    assert!(find(&s, &alice, "\"review budget\"").await.is_empty());

    // The server still answers what happens next.
    let later = s.say(&alice, &room, "a budget review after the load").await;
    indexed(&s).await;
    assert!(find(&s, &alice, "budget review").await.contains(&later));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_order_pages_through_every_match_with_next_batch() {
    let s = TestServer::start().await;
    let (_, alice, _) = s.register("alice", TEST_PASSWORD).await;
    let room = s.create_room(&alice, json!({})).await;
    let texts = (0..60)
        .map(|i| {
            if i % 2 == 0 {
                format!("release note {i}")
            } else {
                format!("unrelated {i}")
            }
        })
        .collect();
    // One at a time: the order of the sends is the order of the timeline.
    let ids = send_all(&s, &alice, &room, texts, 1).await;
    indexed(&s).await;
    let want: Vec<String> = ids.iter().step_by(2).rev().cloned().collect();

    let body = criteria(
        "release",
        json!({ "order_by": "recent", "filter": { "limit": 7 } }),
    );
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    let mut pages = 0;
    loop {
        let (page, events) = search_page(&s, &alice, body.clone(), next.as_deref()).await;
        assert!(page.len() <= 7);
        assert_eq!(events["count"], 30);
        seen.extend(page);
        pages += 1;
        match events["next_batch"].as_str() {
            Some(n) => next = Some(n.to_owned()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(seen, want, "every match once, newest first");

    // A token from a ranked search does not fit a recent one, nor an invented one.
    let ranked = criteria("release", json!({ "filter": { "limit": 7 } }));
    let (_, events) = search_page(&s, &alice, ranked, None).await;
    let rank_token = events["next_batch"].as_str().unwrap().to_owned();
    let resp = s
        .post(
            &format!("{SEARCH}?next_batch={}", enc(&rank_token)),
            Some(&alice),
            body.clone(),
        )
        .await;
    assert_err(&resp, 400, "M_INVALID_PARAM");
    let resp = s
        .post(
            &format!("{SEARCH}?next_batch=nonsense"),
            Some(&alice),
            body.clone(),
        )
        .await;
    assert_err(&resp, 400, "M_INVALID_PARAM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_redacted_after_indexing_is_no_longer_found() {
    let s = TestServer::start().await;
    let (_, alice, _) = s.register("alice", TEST_PASSWORD).await;
    let room = s.create_room(&alice, json!({})).await;
    let secret = s.say(&alice, &room, "the wifi password is hunter2").await;
    let kept = s.say(&alice, &room, "the wifi is down again").await;
    indexed(&s).await;
    assert_eq!(
        find(&s, &alice, "wifi password").await,
        vec![secret.clone()]
    );

    let (status, body) = s
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                enc(&room),
                enc(&secret)
            ),
            Some(&alice),
            json!({ "reason": "oops" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    indexed(&s).await;
    assert!(find(&s, &alice, "hunter2").await.is_empty());
    assert_eq!(find(&s, &alice, "wifi").await, vec![kept]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_rooms_messages_are_never_returned() {
    let s = TestServer::start().await;
    let (_, alice, _) = s.register("alice", TEST_PASSWORD).await;
    let encrypted = s
        .create_room(
            &alice,
            json!({ "initial_state": [{
                "type": "m.room.encryption",
                "state_key": "",
                "content": { "algorithm": "m.megolm.v1.aes-sha2" }
            }]}),
        )
        .await;
    // A client that sends plain text into an encrypted room, and one that encrypts.
    s.say(&alice, &encrypted, "classified launch plan").await;
    let (status, body) = s
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.encrypted/e1",
                enc(&encrypted)
            ),
            Some(&alice),
            json!({
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": "AwgAEnACgAkLmt6qF84IK++J7UDH2Za1YVchHyprqTqsg",
                "device_id": "DEV",
                "sender_key": "IlRMeOPX2e0MurIyfWEucYBRVOEEUMrOHqn/8mLqMjA",
                "session_id": "X3lUlvLELLYxeTx4yOVu6UDpasGEVO0Jbu+QFnm0cKQ"
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let plain = s.create_room(&alice, json!({})).await;
    let open = s.say(&alice, &plain, "public launch plan").await;
    indexed(&s).await;
    assert_eq!(find(&s, &alice, "launch plan").await, vec![open]);
    assert!(find(&s, &alice, "classified").await.is_empty());
    assert!(find(&s, &alice, "AwgAEnACgAkLmt6qF84IK").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_member_finds_only_what_came_before_their_leave() {
    let s = TestServer::start().await;
    let (_, alice, _) = s.register("alice", TEST_PASSWORD).await;
    let (bob_id, bob, _) = s.register("bob", TEST_PASSWORD).await;
    let room = s
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "invite": [bob_id] }),
        )
        .await;
    s.join(&bob, &room).await;
    let before = s.say(&alice, &room, "roadmap draft one").await;
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let after = s.say(&alice, &room, "roadmap draft two").await;
    indexed(&s).await;
    assert_eq!(find(&s, &bob, "roadmap").await, vec![before.clone()]);
    let mut all = find(&s, &alice, "roadmap").await;
    all.sort();
    let mut want = vec![before, after];
    want.sort();
    assert_eq!(all, want);

    // A user who was never in the room finds nothing of it.
    let (_, carol, _) = s.register("carol", TEST_PASSWORD).await;
    assert!(find(&s, &carol, "roadmap").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_filters_groups_context_and_state_follow_the_request() {
    let s = TestServer::start().await;
    let (alice_id, alice, _) = s.register("alice", TEST_PASSWORD).await;
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice_id)),
            Some(&alice),
            json!({ "displayname": "Alice A." }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let garden = s
        .create_room(
            &alice,
            json!({ "name": "Garden club", "topic": "Tomatoes and roses" }),
        )
        .await;
    let kitchen = s.create_room(&alice, json!({ "name": "Kitchen" })).await;
    s.say(&alice, &garden, "first").await;
    let tomato_g = s.say(&alice, &garden, "my tomatoes are red").await;
    s.say(&alice, &garden, "last").await;
    let tomato_k = s.say(&alice, &kitchen, "tomato soup tonight").await;
    // 会议记录 = meeting minutes: found by a run of its characters.
    let cjk = s.say(&alice, &kitchen, "明天的会议记录在这里").await;
    indexed(&s).await;

    // keys: the topic only, the name only, bodies only.
    let (_, events) = search_page(
        &s,
        &alice,
        criteria("roses", json!({ "keys": ["content.topic"] })),
        None,
    )
    .await;
    assert_eq!(events["results"][0]["result"]["type"], "m.room.topic");
    assert_eq!(events["count"], 1);
    let (_, events) = search_page(
        &s,
        &alice,
        criteria("club", json!({ "keys": ["content.name"] })),
        None,
    )
    .await;
    assert_eq!(events["results"][0]["result"]["type"], "m.room.name");
    let (found, _) = search_page(
        &s,
        &alice,
        criteria("tomato", json!({ "keys": ["content.body"] })),
        None,
    )
    .await;
    assert_eq!(
        found.iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([tomato_g.clone(), tomato_k.clone()])
    );
    assert_eq!(find(&s, &alice, "会议").await, vec![cjk]);

    // A room filter; groups by room; context with profiles; current state.
    let (found, events) = search_page(
        &s,
        &alice,
        criteria(
            "tomato",
            json!({
                "keys": ["content.body"],
                "filter": { "rooms": [garden] },
                "groupings": { "group_by": [{ "key": "room_id" }, { "key": "sender" }] },
                "event_context": { "before_limit": 1, "after_limit": 1, "include_profile": true },
                "include_state": true
            }),
        ),
        None,
    )
    .await;
    assert_eq!(found, vec![tomato_g.clone()]);
    let result = &events["results"][0];
    assert_eq!(
        result["context"]["events_before"][0]["content"]["body"],
        "first"
    );
    assert_eq!(
        result["context"]["events_after"][0]["content"]["body"],
        "last"
    );
    assert_eq!(
        result["context"]["profile_info"][&alice_id]["displayname"],
        "Alice A."
    );
    assert!(result["context"]["start"].is_string() && result["context"]["end"].is_string());
    assert_eq!(
        events["groups"]["room_id"][&garden]["results"],
        json!([tomato_g])
    );
    assert_eq!(
        events["groups"]["sender"][&alice_id]["results"],
        json!([tomato_g])
    );
    let state = events["state"][&garden].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.name"));
    assert!(events["state"].get(&kitchen).is_none());

    // Without event_context, no context.
    let (_, events) = search_page(&s, &alice, criteria("tomato", json!({})), None).await;
    assert!(events["results"][0]["context"]
        .get("events_before")
        .is_none_or(|b| b.as_array().is_some_and(Vec::is_empty)));
}

#[tokio::test]
async fn bad_searches_get_errors() {
    let s = TestServer::start().await;
    let (_, alice, _) = s.register("alice", TEST_PASSWORD).await;
    let room = s.create_room(&alice, json!({})).await;
    s.say(&alice, &room, "hello there").await;
    indexed(&s).await;
    let before = s.db_fingerprint();
    for term in ["", "   ", "!!! ..."] {
        let resp = s
            .post(SEARCH, Some(&alice), criteria(term, json!({})))
            .await;
        assert_err(&resp, 400, "M_INVALID_PARAM");
    }
    let resp = s
        .post(
            SEARCH,
            Some(&alice),
            criteria("hello", json!({ "order_by": "loudest" })),
        )
        .await;
    assert_err(&resp, 400, "M_INVALID_PARAM");
    let resp = s
        .post(
            SEARCH,
            Some(&alice),
            criteria("hello", json!({ "keys": ["content.secret"] })),
        )
        .await;
    assert_err(&resp, 400, "M_INVALID_PARAM");
    let resp = s
        .post(
            SEARCH,
            Some(&alice),
            json!({ "search_categories": { "room_events": { "search_term": 7 } } }),
        )
        .await;
    assert_err(&resp, 400, "M_BAD_JSON");
    let resp = s.post(SEARCH, None, criteria("hello", json!({}))).await;
    assert_err(&resp, 401, "M_MISSING_TOKEN");
    let resp = s
        .post(
            &format!("{SEARCH}?next_batch=r-1"),
            Some(&alice),
            criteria("hello", json!({})),
        )
        .await;
    assert_err(&resp, 400, "M_INVALID_PARAM");
    // None of it stored anything or changed what is found.
    assert_eq!(s.db_fingerprint(), before);
    assert_eq!(find(&s, &alice, "hello").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_survives_a_restart_and_is_rebuilt_when_lost() {
    let mut s = TestServer::start().await;
    let (_, alice, _) = s.register("alice", TEST_PASSWORD).await;
    let room = s.create_room(&alice, json!({})).await;
    let first = s.say(&alice, &room, "persistent penguin").await;
    indexed(&s).await;
    s.restart().await;
    assert_eq!(find(&s, &alice, "penguin").await, vec![first.clone()]);

    // Index lost while stopped: rebuilt from the database at start.
    s.stop().await;
    std::fs::remove_dir_all(s.config.database.path.join("search")).unwrap();
    s.resume().await;
    let second = s.say(&alice, &room, "another penguin").await;
    let found = eventually(60, "the rebuilt index", || {
        let s = &s;
        let alice = &alice;
        async move {
            let found = find(s, alice, "penguin").await;
            (found.len() == 2).then_some(found)
        }
    })
    .await;
    assert_eq!(
        found.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([first, second])
    );
}
