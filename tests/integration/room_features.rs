//! Knocking, restricted joins through a space, and room upgrades.

use serde_json::{json, Value};

use crate::common::{assert_err, enc, TestServer};

const PASSWORD: &str = "a long password";

async fn join(server: &TestServer, token: &str, room: &str) -> (u16, Value) {
    server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(room)),
            Some(token),
            json!({}),
        )
        .await
}

async fn state(server: &TestServer, token: &str, room: &str, kind: &str, key: &str) -> Value {
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state/{kind}/{}", enc(key)),
            Some(token),
        )
        .await;
    assert_eq!(status, 200, "{kind}: {body}");
    body
}

async fn invite(server: &TestServer, token: &str, room: &str, user: &str) -> (u16, Value) {
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(token),
            json!({ "user_id": user }),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knock_then_invite_then_join() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (bob_id, bob, _) = server.register("bob", PASSWORD).await;
    let room = server.create_room(&alice,
        json!({ "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "knock" } }] }),
    )
    .await;

    // Knocking is not joining.
    assert_err(&join(&server, &bob, &room).await, 403, "M_FORBIDDEN");
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/knock/{}", enc(&room)),
            Some(&bob),
            json!({ "reason": "let me in" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    let member = state(&server, &alice, &room, "m.room.member", &bob_id).await;
    assert_eq!(member["membership"], "knock");
    assert_eq!(member["reason"], "let me in");
    // A knocking user reads nothing of the room yet.
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"),
            Some(&bob),
        )
        .await;
    assert_err(&(status, body), 403, "M_FORBIDDEN");
    let (status, members) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/members?membership=knock"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(members["chunk"].as_array().unwrap().len(), 1, "{members}");

    // Accepted: the knock becomes an invite, and the join goes through.
    let (status, body) = invite(&server, &alice, &room, &bob_id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(join(&server, &bob, &room).await.0, 200);
    let member = state(&server, &alice, &room, "m.room.member", &bob_id).await;
    assert_eq!(member["membership"], "join");

    // Rooms whose join rule is not knock refuse knocks, and room versions before 7 have none.
    let closed = server.create_room(&alice, json!({})).await;
    let knock = |room: String| {
        let server = &server;
        let bob = &bob;
        async move {
            server
                .post(
                    &format!("/_matrix/client/v3/knock/{}", enc(&room)),
                    Some(bob),
                    json!({}),
                )
                .await
        }
    };
    assert_err(&knock(closed).await, 403, "M_FORBIDDEN");
    let old = server.create_room(&alice,
        json!({ "room_version": "6",
                "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "knock" } }] }),
    )
    .await;
    assert_err(&knock(old).await, 403, "M_FORBIDDEN");
    // Unknown rooms and malformed IDs.
    assert_err(
        &knock("!nowhere:localhost:8448".into()).await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(&knock("not a room".into()).await, 400, "M_INVALID_PARAM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_join_through_space_membership() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", PASSWORD).await;
    let (bob_id, bob, _) = server.register("bob", PASSWORD).await;
    let (carol_id, carol, _) = server.register("carol", PASSWORD).await;
    let (dave_id, dave, _) = server.register("dave", PASSWORD).await;

    let space = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "creation_content": { "type": "m.space" } }),
        )
        .await;
    let restricted = |rule: &str| {
        json!({ "initial_state": [{ "type": "m.room.join_rules", "content": {
            "join_rule": rule,
            "allow": [{ "type": "m.room_membership", "room_id": space }],
        } }] })
    };
    let room = server.create_room(&alice, restricted("restricted")).await;

    // Not in the space: refused.
    assert_err(&join(&server, &bob, &room).await, 403, "M_FORBIDDEN");
    // In the space: in, vouched for by a member who may invite.
    assert_eq!(join(&server, &bob, &space).await.0, 200);
    let (status, body) = join(&server, &bob, &room).await;
    assert_eq!(status, 200, "{body}");
    let member = state(&server, &bob, &room, "m.room.member", &bob_id).await;
    assert_eq!(member["membership"], "join");
    assert_eq!(
        member["join_authorised_via_users_server"],
        alice_id.as_str()
    );

    // An invite works without the space.
    assert_eq!(invite(&server, &alice, &room, &carol_id).await.0, 200);
    assert_eq!(join(&server, &carol, &room).await.0, 200);
    let member = state(&server, &alice, &room, "m.room.member", &carol_id).await;
    assert!(member.get("join_authorised_via_users_server").is_none());

    // knock_restricted: outsiders may knock instead; space members join directly.
    let kr = server
        .create_room(&alice, restricted("knock_restricted"))
        .await;
    assert_err(&join(&server, &dave, &kr).await, 403, "M_FORBIDDEN");
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/knock/{}", enc(&kr)),
            Some(&dave),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        state(&server, &alice, &kr, "m.room.member", &dave_id).await["membership"],
        "knock"
    );
    assert_eq!(join(&server, &bob, &kr).await.0, 200);

    // Restricted rooms need room version 8 or later.
    let old = server.create_room(&alice,
        json!({ "room_version": "7", "initial_state": [{ "type": "m.room.join_rules", "content": {
            "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": space }],
        } }] }),
    )
    .await;
    assert_err(&join(&server, &bob, &old).await, 403, "M_FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_moves_state_aliases_and_directory() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", PASSWORD).await;
    let (bob_id, bob, _) = server.register("bob", PASSWORD).await;
    let (carol_id, _, _) = server.register("carol", PASSWORD).await;
    let old = server.create_room(&alice,
        json!({
            "room_version": "11", "preset": "public_chat", "visibility": "public",
            "name": "Plans", "topic": "what we do next", "room_alias_name": "plans",
            "power_level_content_override": { "users": { alice_id.clone(): 100, carol_id.clone(): 50 } },
        }),
    )
    .await;
    assert_eq!(join(&server, &bob, &old).await.0, 200);

    let upgrade = |token: String, room: String, body: Value| {
        let server = &server;
        async move {
            server
                .post(
                    &format!("/_matrix/client/v3/rooms/{room}/upgrade"),
                    Some(&token),
                    body,
                )
                .await
        }
    };
    // Bob may not; unknown versions are refused; nothing changed by either.
    assert_err(
        &upgrade(bob.clone(), old.clone(), json!({ "new_version": "12" })).await,
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &upgrade(alice.clone(), old.clone(), json!({ "new_version": "99" })).await,
        400,
        "M_UNSUPPORTED_ROOM_VERSION",
    );

    let (status, body) = upgrade(
        alice.clone(),
        old.clone(),
        json!({ "new_version": "12", "additional_creators": [bob_id] }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    assert!(!new.contains(':'), "a v12 room ID: {new}");

    // The new room names its predecessor and carries the state over.
    let create = state(&server, &alice, &new, "m.room.create", "").await;
    assert_eq!(create["room_version"], "12");
    assert_eq!(create["predecessor"]["room_id"], old.as_str());
    assert_eq!(create["additional_creators"], json!([bob_id]));
    assert_eq!(
        state(&server, &alice, &new, "m.room.name", "").await["name"],
        "Plans"
    );
    assert_eq!(
        state(&server, &alice, &new, "m.room.topic", "").await["topic"],
        "what we do next"
    );
    assert_eq!(
        state(&server, &alice, &new, "m.room.join_rules", "").await["join_rule"],
        "public"
    );
    // v12 power levels never list creators; other levels move as they were.
    let pl = state(&server, &alice, &new, "m.room.power_levels", "").await;
    assert!(pl["users"].get(alice_id.as_str()).is_none(), "{pl}");
    assert!(pl["users"].get(bob_id.as_str()).is_none(), "{pl}");
    assert_eq!(pl["users"][carol_id.as_str()], 50);

    // The alias, the canonical alias and the directory entry now belong to the new room.
    let alias = "#plans:localhost:8448";
    let (_, resolved) = server
        .get(
            &format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
            None,
        )
        .await;
    assert_eq!(resolved["room_id"], new.as_str());
    assert_eq!(
        state(&server, &alice, &new, "m.room.canonical_alias", "").await["alias"],
        alias
    );
    assert!(state(&server, &alice, &old, "m.room.canonical_alias", "")
        .await
        .get("alias")
        .is_none());
    let (_, public) = server.get("/_matrix/client/v3/publicRooms", None).await;
    let listed: Vec<&str> = public["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![new.as_str()]);

    // The old room is tombstoned and quiet: members below 50 can no longer talk.
    let tombstone = state(&server, &bob, &old, "m.room.tombstone", "").await;
    assert_eq!(tombstone["replacement_room"], new.as_str());
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{old}/send/m.room.message/late"),
            Some(&bob),
            json!({ "msgtype": "m.text", "body": "hello?" }),
        )
        .await;
    assert_err(&(status, body), 403, "M_FORBIDDEN");
    // Bob follows; an upgraded room cannot be upgraded again.
    assert_eq!(join(&server, &bob, &new).await.0, 200);
    assert_err(
        &upgrade(alice.clone(), old.clone(), json!({ "new_version": "12" })).await,
        400,
        "M_BAD_JSON",
    );
}

async fn messages(server: &TestServer, token: &str, room: &str) -> (u16, Vec<String>) {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=100&filter=%7B%22types%22%3A%5B%22m.room.message%22%5D%7D"
            ),
            Some(token),
        )
        .await;
    if status != 200 {
        return (status, Vec::new());
    }
    let bodies = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect();
    (status, bodies)
}

async fn set_visibility(server: &TestServer, token: &str, room: &str, v: &str) {
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/"),
            Some(token),
            json!({ "history_visibility": v }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_visibility_is_applied_per_event() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (bob_id, bob, _) = server.register("bob", PASSWORD).await;
    let (carol_id, carol, _) = server.register("carol", PASSWORD).await;
    let (_, dave, _) = server.register("dave", PASSWORD).await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat", "name": "before" }))
        .await;

    // `joined`: what was said before bob joined stays hidden from him.
    set_visibility(&server, &alice, &room, "joined").await;
    let early = server.say(&alice, &room, "early").await;
    assert_eq!(join(&server, &bob, &room).await.0, 200);
    server.say(&alice, &room, "welcome").await;
    assert_eq!(
        messages(&server, &bob, &room).await,
        (200, vec!["welcome".to_owned()])
    );
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(&early)),
            Some(&bob),
        )
        .await;
    assert_err(&(status, body), 404, "M_NOT_FOUND");
    let (status, _) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/context/{}", enc(&early)),
            Some(&bob),
        )
        .await;
    assert_eq!(status, 404);

    // `shared`: a later member sees everything from the switch on, not what `joined` hid.
    set_visibility(&server, &alice, &room, "shared").await;
    server.say(&alice, &room, "shared-1").await;
    assert_eq!(join(&server, &carol, &room).await.0, 200);
    assert_eq!(
        messages(&server, &carol, &room).await,
        (200, vec!["shared-1".to_owned()])
    );
    // The point before carol's join, for /members?at.
    let (_, page) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"),
            Some(&alice),
        )
        .await;
    let after_carol = page["start"].as_str().unwrap().to_owned();

    // A member who left reads up to their leave, and sees the state as it was then.
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    server.say(&alice, &room, "after-bob").await;
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
            Some(&alice),
            json!({ "name": "after" }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        messages(&server, &bob, &room).await,
        (200, vec!["welcome".to_owned(), "shared-1".to_owned()])
    );
    assert_eq!(
        state(&server, &bob, &room, "m.room.name", "").await["name"],
        "before"
    );
    assert_eq!(
        state(&server, &carol, &room, "m.room.name", "").await["name"],
        "after"
    );
    // Members now, and as of the token taken right after carol joined.
    let member_ids = |body: &Value| -> Vec<String> {
        let mut ids: Vec<String> = body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["state_key"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let (_, now) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/members?membership=join"),
            Some(&carol),
        )
        .await;
    assert!(!member_ids(&now).contains(&bob_id), "{now}");
    let (status, then) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/members?membership=join&at={after_carol}"),
            Some(&carol),
        )
        .await;
    assert_eq!(status, 200, "{then}");
    assert!(member_ids(&then).contains(&bob_id), "{then}");
    assert!(member_ids(&then).contains(&carol_id), "{then}");

    // Never a member: nothing, until the room is world-readable; then everything readable.
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"),
            Some(&dave),
        )
        .await;
    assert_err(&(status, body), 403, "M_FORBIDDEN");
    set_visibility(&server, &alice, &room, "world_readable").await;
    server.say(&alice, &room, "public").await;
    assert_eq!(
        messages(&server, &dave, &room).await,
        (200, vec!["public".to_owned()])
    );
    assert_eq!(
        state(&server, &dave, &room, "m.room.name", "").await["name"],
        "after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_loading_returns_only_the_senders_members() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", PASSWORD).await;
    let (bob_id, bob, _) = server.register("bob", PASSWORD).await;
    let (_, carol, _) = server.register("carol", PASSWORD).await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    for t in [&bob, &carol] {
        assert_eq!(join(&server, t, &room).await.0, 200);
    }
    let mut last = String::new();
    for i in 0..5 {
        last = server.say(&bob, &room, &format!("bob-{i}")).await;
    }
    let members_of = |state: &Value| -> Vec<String> {
        let mut m: Vec<String> = state
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| e["state_key"].as_str().unwrap().to_owned())
            .collect();
        m.sort();
        m
    };
    let filter = enc(r#"{"lazy_load_members":true,"types":["m.room.message"]}"#);
    let (status, page) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=3&filter={filter}"),
            Some(&carol),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["chunk"].as_array().unwrap().len(), 3);
    assert_eq!(members_of(&page["state"]), vec![bob_id.clone()]);
    // Without lazy-loading, /messages sends no state.
    let (_, page) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=3"),
            Some(&carol),
        )
        .await;
    assert!(page
        .get("state")
        .is_none_or(|s| s.as_array().is_some_and(Vec::is_empty)));

    let (status, ctx) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/context/{}?limit=2&filter={}",
                enc(&last),
                enc(r#"{"lazy_load_members":true}"#)
            ),
            Some(&carol),
        )
        .await;
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(members_of(&ctx["state"]), vec![bob_id.clone()]);
    assert!(ctx["state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.create"));
    let (_, full) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/context/{}?limit=2",
                enc(&last)
            ),
            Some(&carol),
        )
        .await;
    assert_eq!(members_of(&full["state"]).len(), 3);
    assert!(members_of(&full["state"]).contains(&alice_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_room_ends_access_to_it() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (_, bob, _) = server.register("bob", PASSWORD).await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    assert_eq!(join(&server, &bob, &room).await.0, 200);
    server.say(&alice, &room, "hello").await;
    let forget = |token: String| {
        let server = &server;
        let room = room.clone();
        async move {
            server
                .post(
                    &format!("/_matrix/client/v3/rooms/{room}/forget"),
                    Some(&token),
                    json!({}),
                )
                .await
        }
    };
    // Members must leave first.
    assert_eq!(forget(bob.clone()).await.0, 400);
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        messages(&server, &bob, &room).await.1,
        vec!["hello".to_owned()]
    );
    assert_eq!(forget(bob.clone()).await.0, 200);
    // Forgotten: no history, no state, and no place among left rooms in /sync.
    let (status, _) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, 403);
    let filter = enc(r#"{"room":{"include_leave":true}}"#);
    let (_, synced) = server
        .get(
            &format!("/_matrix/client/v3/sync?filter={filter}"),
            Some(&bob),
        )
        .await;
    assert!(
        synced["rooms"]["leave"].get(room.as_str()).is_none(),
        "{synced}"
    );
    // Joining again brings it back.
    assert_eq!(join(&server, &bob, &room).await.0, 200);
    assert_eq!(messages(&server, &bob, &room).await.0, 200);
}
