//! `/user_directory/search`: users found by part of their name or ID, accents and case aside,
//! only where the spec lets the searcher see them, kept current as names and rooms change.

use serde_json::{json, Value};

use crate::common::{assert_err, enc, eventually, TestServer, TEST_PASSWORD};

const SEARCH: &str = "/_matrix/client/v3/user_directory/search";

/// The user IDs a search finds, and `limited`.
async fn find(s: &TestServer, token: &str, term: &str) -> (Vec<String>, bool) {
    let (status, body) = s
        .post(SEARCH, Some(token), json!({ "search_term": term }))
        .await;
    assert_eq!(status, 200, "{body}");
    let ids = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["user_id"].as_str().unwrap().to_owned())
        .collect();
    (ids, body["limited"].as_bool().unwrap())
}

async fn set_name(s: &TestServer, token: &str, user_id: &str, name: &str) {
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(user_id)),
            Some(token),
            json!({ "displayname": name }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn colleagues_are_found_by_part_of_their_name_where_a_room_is_shared() {
    let s = TestServer::start().await;
    let (_, alice, _) = s.register("alice", TEST_PASSWORD).await;
    let (carol_id, carol, _) = s.register("carol", TEST_PASSWORD).await;
    let (_, dave, _) = s.register("dave", TEST_PASSWORD).await;
    let (erin_id, erin, _) = s.register("erin", TEST_PASSWORD).await;
    set_name(&s, &carol, &carol_id, "Carol Zoë Smith").await;
    set_name(&s, &dave, &format!("@dave:{}", s.name()), "Dave Smith").await;
    // alice and carol share a private room; erin is in a public room alice is not in.
    let private = s
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "invite": [carol_id] }),
        )
        .await;
    s.join(&carol, &private).await;
    s.create_room(&erin, json!({ "preset": "public_chat" }))
        .await;

    // By a word of the name, accents and case aside, by its start, by the user ID.
    assert_eq!(find(&s, &alice, "zoe").await.0, vec![carol_id.clone()]);
    assert_eq!(find(&s, &alice, "ZOË").await.0, vec![carol_id.clone()]);
    assert_eq!(
        find(&s, &alice, "smi").await.0,
        vec![carol_id.clone()],
        "not dave: nothing shared"
    );
    assert_eq!(
        find(&s, &alice, "carol smith").await.0,
        vec![carol_id.clone()]
    );
    assert_eq!(find(&s, &alice, "car").await.0, vec![carol_id.clone()]);
    assert!(
        find(&s, &alice, "carol jones").await.0.is_empty(),
        "every word must match"
    );
    // A member of a public room is found by everyone.
    assert_eq!(find(&s, &alice, "erin").await.0, vec![erin_id.clone()]);
    // dave shares nothing with alice and is in no public room.
    assert!(find(&s, &alice, "dave").await.0.is_empty());

    // A new name is found at once, the old one no longer.
    set_name(&s, &carol, &carol_id, "Carolyn Jones").await;
    assert_eq!(find(&s, &alice, "jones").await.0, vec![carol_id.clone()]);
    assert!(find(&s, &alice, "zoe").await.0.is_empty());
    // When carol leaves the only room she shared with alice, alice no longer finds her.
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&private)),
            Some(&carol),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(find(&s, &alice, "jones").await.0.is_empty());

    // Several matches (dave himself and erin): `limit` cuts, and says so with `limited`.
    let (status, body) = s
        .post(
            SEARCH,
            Some(&dave),
            json!({ "search_term": "localhost", "limit": 1 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["limited"], true, "{body}");

    // A deactivated account is gone from the directory.
    let (status, body) = s
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&erin),
            json!({ "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "erin" }, "password": TEST_PASSWORD } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(find(&s, &alice, "erin").await.0.is_empty());
}

#[tokio::test]
async fn with_search_all_users_every_local_user_is_found() {
    let s = TestServer::start_with(|c| c.user_directory.search_all_users = true).await;
    let (_, alice, _) = s.register("alice", TEST_PASSWORD).await;
    let (dave_id, _, _) = s.register("dave", TEST_PASSWORD).await;
    assert_eq!(find(&s, &alice, "dav").await.0, vec![dave_id]);
}

#[tokio::test]
async fn bad_searches_are_refused() {
    let s = TestServer::start().await;
    let (_, alice, _) = s.register("alice", TEST_PASSWORD).await;
    for term in ["", "   ", "@:."] {
        let resp = s
            .post(SEARCH, Some(&alice), json!({ "search_term": term }))
            .await;
        assert_err(&resp, 400, "M_INVALID_PARAM");
    }
    let resp: (u16, Value) = s.post(SEARCH, Some(&alice), json!({ "limit": 3 })).await;
    assert_eq!(resp.0, 400, "{}", resp.1);
    let resp = s
        .post(SEARCH, Some(&alice), json!({ "search_term": 5 }))
        .await;
    assert_eq!(resp.0, 400, "{}", resp.1);
    assert_err(
        &s.post(SEARCH, None, json!({ "search_term": "a" })).await,
        401,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn users_of_other_servers_in_shared_rooms_are_found() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let (_, alice, _) = a.register("alice", TEST_PASSWORD).await;
    let (bob_id, bob, _) = b.register("bob", TEST_PASSWORD).await;
    set_name(&b, &bob, &bob_id, "Bob Émile").await;
    let room = a
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(&room), a.name()),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let found = eventually(30, "bob in a's directory", || async {
        let (ids, _) = find(&a, &alice, "emile").await;
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    assert_eq!(found, vec![bob_id.clone()]);
    // And the other way: b learned of alice from the room's state when bob joined.
    let alice_id = format!("@alice:{}", a.name());
    assert_eq!(find(&b, &bob, "alice").await.0, vec![alice_id]);
}
