//! Search across federation: a message a Synapse user sends into a room shared with Hearth is
//! found by the Hearth user's `/search`, like their own.

use serde_json::json;

use crate::{
    common::{enc, eventually, TestServer, TEST_PASSWORD},
    synapse::Synapse,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_a_synapse_user_is_found() {
    let hearth = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let (_, alice, _) = hearth.register("alice", TEST_PASSWORD).await;
    let (_, bob) = synapse.register("bob").await;

    let (status, body) = synapse
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&bob),
            json!({ "preset": "public_chat", "name": "Fruit" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    let (status, body) = hearth
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?via={}",
                enc(&room),
                synapse.server_name()
            ),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = synapse
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/s1",
                enc(&room)
            ),
            Some(&bob),
            json!({ "msgtype": "m.text", "body": "Federated pineapple delivery" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let event_id = body["event_id"].as_str().unwrap().to_owned();

    let found = eventually(30, "the Synapse message in Hearth's search", || async {
        let (status, body) = hearth
            .post(
                "/_matrix/client/v3/search",
                Some(&alice),
                json!({ "search_categories": { "room_events": {
                    "search_term": "pineapple delivery"
                } } }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let results = body["search_categories"]["room_events"]["results"].clone();
        (results.as_array().is_some_and(|r| !r.is_empty())).then_some(results)
    })
    .await;
    assert_eq!(found[0]["result"]["event_id"], event_id.as_str());
    assert_eq!(
        found[0]["result"]["sender"],
        format!("@bob:{}", synapse.server_name())
    );
}
