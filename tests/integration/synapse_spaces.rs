//! Spaces across Hearth and a real Synapse: a Hearth user browses a space that lives on Synapse
//! and a Synapse user one that lives on Hearth, both through federation `/hierarchy`.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::{
    common::{enc, eventually, TestServer, TEST_PASSWORD},
    synapse::Synapse,
};

/// The room IDs of a whole walk on one server (a page of 50 holds them all here).
fn ids(body: &Value) -> BTreeSet<String> {
    body["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["room_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spaces_are_browsed_across_hearth_and_synapse() {
    let hearth = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let (_, alice, _) = hearth.register("alice", TEST_PASSWORD).await;
    let (_, bob) = synapse.register("bob").await;

    // A space on Synapse with three rooms; alice joins the space only.
    let create = |name: &str, space: bool| {
        let mut body = json!({ "preset": "public_chat", "name": name });
        if space {
            body["creation_content"] = json!({ "type": "m.space" });
        }
        body
    };
    let (status, body) = synapse
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&bob),
            create("Synapse space", true),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let s_space = body["room_id"].as_str().unwrap().to_owned();
    let mut on_synapse = BTreeSet::from([s_space.clone()]);
    for i in 0..3 {
        let (status, body) = synapse
            .post(
                "/_matrix/client/v3/createRoom",
                Some(&bob),
                create(&format!("s{i}"), false),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let room = body["room_id"].as_str().unwrap().to_owned();
        let (status, body) = synapse
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                    enc(&s_space),
                    enc(&room)
                ),
                Some(&bob),
                json!({ "via": [synapse.server_name()] }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        on_synapse.insert(room);
    }
    let (status, body) = hearth
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?via={}",
                enc(&s_space),
                synapse.server_name()
            ),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let found = eventually(30, "the Synapse space's rooms on Hearth", || async {
        let (status, body) = hearth
            .get(
                &format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&s_space)),
                Some(&alice),
            )
            .await;
        (status == 200 && ids(&body) == on_synapse).then_some(body)
    })
    .await;
    assert!(
        found["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "s1"),
        "{found}"
    );

    // A space on Hearth with three rooms; bob joins the space only.
    let h_space = hearth
        .create_room(&alice, create("Hearth space", true))
        .await;
    let mut on_hearth = BTreeSet::from([h_space.clone()]);
    for i in 0..3 {
        let room = hearth
            .create_room(&alice, create(&format!("h{i}"), false))
            .await;
        let (status, body) = hearth
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                    enc(&h_space),
                    enc(&room)
                ),
                Some(&alice),
                json!({ "via": [hearth.name()] }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        on_hearth.insert(room);
    }
    let (status, body) = synapse
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&h_space),
                hearth.name()
            ),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let found = eventually(30, "the Hearth space's rooms on Synapse", || async {
        let (status, body) = synapse
            .get(
                &format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&h_space)),
                Some(&bob),
            )
            .await;
        (status == 200 && ids(&body) == on_hearth).then_some(body)
    })
    .await;
    assert!(
        found["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "h2"),
        "{found}"
    );
}
