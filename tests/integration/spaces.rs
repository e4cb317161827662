//! Spaces: `/hierarchy` walks a space page by page, showing only the rooms the user may see,
//! across servers too; room summaries preview rooms the user is not in.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::common::{assert_err, enc, TestServer, TEST_PASSWORD};

/// Creates a room (a space with `space`), public unless `body` says otherwise.
async fn room(s: &TestServer, token: &str, name: &str, space: bool, extra: Value) -> String {
    let mut body = json!({ "preset": "public_chat", "name": name });
    if space {
        body["creation_content"] = json!({ "type": "m.space" });
    }
    if let Some(o) = extra.as_object() {
        for (k, v) in o {
            body[k] = v.clone();
        }
    }
    s.create_room(token, body).await
}

async fn add_child(s: &TestServer, token: &str, parent: &str, child: &str, extra: Value) {
    let mut content = json!({ "via": [s.name()] });
    if let Some(o) = extra.as_object() {
        for (k, v) in o {
            content[k] = v.clone();
        }
    }
    let (status, body) = s
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                enc(parent),
                enc(child)
            ),
            Some(token),
            content,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Every room of the walk, page by page with `limit`; the pages.
async fn walk(s: &TestServer, token: &str, space: &str, query: &str) -> (Vec<Value>, usize) {
    let mut rooms = Vec::new();
    let mut from: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/_matrix/client/v1/rooms/{}/hierarchy?{query}", enc(space));
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", enc(f)));
        }
        let (status, body) = s.get(&path, Some(token)).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        rooms.extend(body["rooms"].as_array().unwrap().iter().cloned());
        match body["next_batch"].as_str() {
            Some(n) => from = Some(n.to_owned()),
            None => return (rooms, pages),
        }
        assert!(pages < 100, "the walk does not end");
    }
}

fn ids(rooms: &[Value]) -> Vec<String> {
    rooms
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_space_with_nested_sub_spaces_is_walked_page_by_page_showing_only_what_the_user_may_see()
{
    let s = TestServer::start().await;
    let (_, alice, _) = s.register("alice", TEST_PASSWORD).await;
    let (_, bob, _) = s.register("bob", TEST_PASSWORD).await;
    let (_, carol, _) = s.register("carol", TEST_PASSWORD).await;
    let root = room(&s, &alice, "Company", true, json!({})).await;
    let eng = room(&s, &alice, "Engineering", true, json!({})).await;
    let backend = room(&s, &alice, "Backend", true, json!({})).await;
    add_child(&s, &alice, &root, &eng, json!({ "order": "b" })).await;
    add_child(&s, &alice, &eng, &backend, json!({})).await;
    let mut visible = vec![root.clone(), eng.clone(), backend.clone()];
    for (parent, n) in [(&root, 10), (&eng, 10), (&backend, 10)] {
        for i in 0..n {
            let r = room(&s, &alice, &format!("room {i}"), false, json!({})).await;
            add_child(&s, &alice, parent, &r, json!({ "suggested": i < 2 })).await;
            visible.push(r);
        }
    }
    // A private room, and one restricted to members of the company space.
    let private = room(
        &s,
        &alice,
        "Secret",
        false,
        json!({ "preset": "private_chat" }),
    )
    .await;
    add_child(&s, &alice, &root, &private, json!({})).await;
    let restricted = room(
        &s,
        &alice,
        "Staff",
        false,
        json!({ "preset": "private_chat", "room_version": "12", "initial_state": [{
            "type": "m.room.join_rules", "state_key": "",
            "content": { "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": root }] },
        }] }),
    )
    .await;
    add_child(&s, &alice, &root, &restricted, json!({})).await;
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&root)),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // bob is in the company space: 33 public rooms and the restricted one, each once, 7 a page.
    let (rooms, pages) = walk(&s, &bob, &root, "limit=7").await;
    let got = ids(&rooms);
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "a room shown twice");
    let mut want: BTreeSet<&String> = visible.iter().collect();
    want.insert(&restricted);
    assert_eq!(unique, want, "{rooms:?}");
    assert_eq!(pages, 34usize.div_ceil(7));
    assert_eq!(got[0], root, "the root first");
    let first = &rooms[0];
    assert_eq!(first["name"], "Company");
    assert_eq!(first["room_type"], "m.space");
    // A public join rule may be left out: the spec's default.
    assert!(
        first.get("join_rule").is_none_or(|r| r == "public"),
        "{first}"
    );
    assert!(
        first["num_joined_members"].as_u64().unwrap() >= 2,
        "{first}"
    );
    assert!(
        first["children_state"].as_array().unwrap().len() >= 12,
        "{first}"
    );
    let staff = rooms
        .iter()
        .find(|r| r["room_id"] == restricted.as_str())
        .unwrap();
    assert_eq!(staff["join_rule"], "restricted", "{staff}");
    assert_eq!(staff["allowed_room_ids"], json!([root]), "{staff}");

    // carol is in nothing: the restricted and private rooms stay hidden.
    let (rooms, _) = walk(&s, &carol, &root, "limit=50").await;
    let got = ids(&rooms);
    assert_eq!(got.len(), visible.len(), "{got:?}");
    assert!(!got.contains(&restricted) && !got.contains(&private));

    // max_depth 1: the root and its children; suggested_only: only suggested children.
    let (rooms, _) = walk(&s, &carol, &root, "max_depth=1").await;
    assert_eq!(rooms.len(), 1 + 1 + 10, "{:?}", ids(&rooms));
    let (rooms, _) = walk(&s, &carol, &root, "suggested_only=true").await;
    assert_eq!(
        ids(&rooms),
        vec![root.clone(), visible[3].clone(), visible[4].clone()]
    );
}

#[tokio::test]
async fn bad_walks_are_refused() {
    let s = TestServer::start().await;
    let (_, alice, _) = s.register("alice", TEST_PASSWORD).await;
    let (_, bob, _) = s.register("bob", TEST_PASSWORD).await;
    let space = room(&s, &alice, "Space", true, json!({})).await;
    for i in 0..3 {
        let r = room(&s, &alice, &format!("r{i}"), false, json!({})).await;
        add_child(&s, &alice, &space, &r, json!({})).await;
    }
    let private = room(
        &s,
        &alice,
        "Private",
        true,
        json!({ "preset": "private_chat" }),
    )
    .await;
    let path =
        |room: &str, q: &str| format!("/_matrix/client/v1/rooms/{}/hierarchy?{q}", enc(room));
    assert_err(
        &s.get(&path(&private, ""), Some(&bob)).await,
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &s.get(&path("!unknown:localhost", ""), Some(&bob)).await,
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &s.get(&path(&space, "from=nonsense"), Some(&bob)).await,
        400,
        "M_INVALID_PARAM",
    );
    // A token of one walk does not continue another.
    let (status, body) = s.get(&path(&space, "limit=1"), Some(&bob)).await;
    assert_eq!(status, 200, "{body}");
    let next = body["next_batch"].as_str().unwrap().to_owned();
    assert_err(
        &s.get(
            &path(&space, &format!("limit=1&suggested_only=true&from={next}")),
            Some(&bob),
        )
        .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &s.get(&path(&space, ""), None).await,
        401,
        "M_MISSING_TOKEN",
    );
    // The private space's summary is refused too; the public one is shown, to anyone.
    assert_err(
        &s.get(
            &format!("/_matrix/client/v1/room_summary/{}", enc(&private)),
            Some(&bob),
        )
        .await,
        403,
        "M_FORBIDDEN",
    );
    let (status, body) = s
        .get(
            &format!("/_matrix/client/v1/room_summary/{}", enc(&space)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "Space", "{body}");
    assert!(body.get("membership").is_none(), "{body}");
    let (status, body) = s
        .get(
            &format!("/_matrix/client/v1/room_summary/{}", enc(&space)),
            Some(&bob),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["membership"], "leave", "{body}");
}

#[tokio::test]
async fn a_space_on_another_server_is_walked_and_its_rooms_previewed() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let (_, alice, _) = a.register("alice", TEST_PASSWORD).await;
    let (_, bob, _) = b.register("bob", TEST_PASSWORD).await;
    let space = room(&a, &alice, "Remote space", true, json!({})).await;
    let sub = room(&a, &alice, "Remote sub-space", true, json!({})).await;
    add_child(&a, &alice, &space, &sub, json!({})).await;
    let mut rooms_on_a = vec![space.clone(), sub.clone()];
    for (parent, n) in [(&space, 3), (&sub, 2)] {
        for i in 0..n {
            let r = room(
                &a,
                &alice,
                &format!("remote {i}"),
                false,
                json!({ "topic": "on a" }),
            )
            .await;
            add_child(&a, &alice, parent, &r, json!({})).await;
            rooms_on_a.push(r);
        }
    }
    // bob joins the space; its rooms he is not in are asked of a.
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(&space), a.name()),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (rooms, _) = walk(&b, &bob, &space, "limit=3").await;
    let got: BTreeSet<String> = ids(&rooms).into_iter().collect();
    assert_eq!(
        got,
        rooms_on_a.iter().cloned().collect::<BTreeSet<_>>(),
        "{rooms:?}"
    );
    let one = rooms
        .iter()
        .find(|r| r["room_id"] == rooms_on_a[2].as_str())
        .unwrap();
    assert_eq!(one["topic"], "on a", "{one}");
    // A room of a previewed through its server.
    let (status, body) = b
        .get(
            &format!(
                "/_matrix/client/v1/room_summary/{}?via={}",
                enc(&rooms_on_a[3]),
                a.name()
            ),
            Some(&bob),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["topic"], "on a", "{body}");
    assert_eq!(body["membership"], "leave", "{body}");
}
