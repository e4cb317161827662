//! Aliases, canonical alias checks and the public room directory.

use serde_json::json;

use crate::common::{assert_err, enc, TestServer};

const PASSWORD: &str = "a long password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_resolve_join_and_guard_the_canonical_alias() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (_, bob, _) = server.register("bob", PASSWORD).await;
    let (status, created) = server
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice),
            json!({ "preset": "public_chat", "room_alias_name": "lounge", "visibility": "public", "name": "Lounge", "topic": "chat" }),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let room = created["room_id"].as_str().unwrap().to_owned();
    // The alias is taken now.
    assert_err(
        &server
            .post(
                "/_matrix/client/v3/createRoom",
                Some(&alice),
                json!({ "room_alias_name": "lounge" }),
            )
            .await,
        400,
        "M_ROOM_IN_USE",
    );
    let alias = "#lounge:localhost:8448";
    let (status, resolved) = server
        .get(
            &format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["room_id"], room.as_str());
    assert_eq!(resolved["servers"], json!(["localhost:8448"]));

    // Bob joins by alias.
    let (status, joined) = server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(alias)),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["room_id"], room.as_str());

    // The canonical alias must point here.
    let (status, _) = server
        .put(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                enc("#other:localhost:8448")
            ),
            Some(&alice),
            json!({ "room_id": room }),
        )
        .await;
    assert_eq!(status, 200);
    assert_err(
        &server
            .put(
                &format!(
                    "/_matrix/client/v3/directory/room/{}",
                    enc("#other:localhost:8448")
                ),
                Some(&alice),
                json!({ "room_id": room }),
            )
            .await,
        409,
        "M_UNKNOWN",
    );
    assert_err(
        &server
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias"),
                Some(&alice),
                json!({ "alias": "#nowhere:localhost:8448" }),
            )
            .await,
        400,
        "M_BAD_ALIAS",
    );
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias"),
            Some(&alice),
            json!({ "alias": alias, "alt_aliases": ["#other:localhost:8448"] }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, list) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/aliases"),
            Some(&bob),
        )
        .await;
    assert_eq!(list["aliases"].as_array().unwrap().len(), 2);

    // Bob (power 0, not the creator) cannot delete the alias; alice can.
    assert_err(
        &server
            .request(
                reqwest::Method::DELETE,
                &format!(
                    "/_matrix/client/v3/directory/room/{}",
                    enc("#other:localhost:8448")
                ),
                Some(&bob),
                None,
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    let (status, _) = server
        .request(
            reqwest::Method::DELETE,
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                enc("#other:localhost:8448")
            ),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_err(
        &server
            .get(
                &format!(
                    "/_matrix/client/v3/directory/room/{}",
                    enc("#other:localhost:8448")
                ),
                None,
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_directory_lists_filters_and_paginates() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let mut public = Vec::new();
    for i in 0..5 {
        let (_, r) = server
            .post(
                "/_matrix/client/v3/createRoom",
                Some(&alice),
                json!({ "visibility": "public", "preset": "public_chat", "name": format!("Room {i}"), "topic": if i == 3 { "gardening" } else { "misc" } }),
            )
            .await;
        public.push(r["room_id"].as_str().unwrap().to_owned());
    }
    let (_, private) = server
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice),
            json!({ "name": "Hidden" }),
        )
        .await;
    let private = private["room_id"].as_str().unwrap().to_owned();

    let mut seen = Vec::new();
    let mut since: Option<String> = None;
    loop {
        let path = match &since {
            Some(s) => format!("/_matrix/client/v3/publicRooms?limit=2&since={s}"),
            None => "/_matrix/client/v3/publicRooms?limit=2".to_owned(),
        };
        let (status, page) = server.get(&path, None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total_room_count_estimate"], 5);
        for c in page["chunk"].as_array().unwrap() {
            assert_eq!(c["num_joined_members"], 1);
            // Absent join_rule means public (the spec's default).
            assert_eq!(c["join_rule"].as_str().unwrap_or("public"), "public");
            seen.push(c["room_id"].as_str().unwrap().to_owned());
        }
        match page["next_batch"].as_str() {
            Some(n) => since = Some(n.to_owned()),
            None => break,
        }
    }
    seen.sort();
    public.sort();
    assert_eq!(seen, public);
    assert!(!seen.contains(&private));

    let (_, found) = server
        .post(
            "/_matrix/client/v3/publicRooms",
            Some(&alice),
            json!({ "filter": { "generic_search_term": "GARDEN" } }),
        )
        .await;
    let chunk = found["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1, "{found}");
    assert_eq!(chunk[0]["name"], "Room 3");

    // Unpublishing removes a room; visibility reads back.
    let room = &public[0];
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/directory/list/room/{room}"),
            Some(&alice),
            json!({ "visibility": "private" }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, vis) = server
        .get(
            &format!("/_matrix/client/v3/directory/list/room/{room}"),
            None,
        )
        .await;
    assert_eq!(vis["visibility"], "private");
    let (_, page) = server.get("/_matrix/client/v3/publicRooms", None).await;
    assert_eq!(page["chunk"].as_array().unwrap().len(), 4);
    assert_err(
        &server
            .get("/_matrix/client/v3/publicRooms?since=bogus", None)
            .await,
        400,
        "M_INVALID_PARAM",
    );
}
