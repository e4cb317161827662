//! Federation basics between Hearth and a real Synapse: each fetches and verifies the other's
//! server keys, each notarises the other's, and each accepts the other's X-Matrix requests.

use std::collections::BTreeMap;

use hearth_federation::server_keys::verify_key_response;
use ruma::{serde::Base64, signatures::verify_json, CanonicalJsonObject, ServerName};
use serde_json::{json, Value};

use crate::{
    common::{enc, TestServer},
    synapse::Synapse,
};

/// Checks that `entity`'s signature on `object` verifies with `keys` (a key response of theirs),
/// leaving other signatures aside.
fn assert_signed_by(object: &Value, entity: &ServerName, keys: &CanonicalJsonObject) {
    let keys = verify_key_response(keys, entity).expect("the signer's own keys verify");
    let map = BTreeMap::from([(
        entity.to_string(),
        keys.verify_keys
            .iter()
            .map(|(id, k)| (id.clone(), Base64::parse(k).unwrap()))
            .collect(),
    )]);
    let mut object: CanonicalJsonObject = serde_json::from_value(object.clone()).unwrap();
    if let Some(ruma::CanonicalJsonValue::Object(sigs)) = object.get_mut("signatures") {
        assert!(
            sigs.contains_key(entity.as_str()),
            "no signature of {entity}"
        );
        sigs.retain(|e, _| e == entity.as_str());
    }
    verify_json(&map, &object).unwrap_or_else(|e| panic!("{entity}'s signature: {e}"));
}

/// The one entry of a notary answer, for `server`.
fn notarised_entry<'a>(answer: &'a Value, server: &ServerName) -> &'a Value {
    let entries = answer["server_keys"].as_array().expect("server_keys");
    assert_eq!(entries.len(), 1, "{answer}");
    assert_eq!(entries[0]["server_name"], server.as_str(), "{answer}");
    &entries[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_and_synapse_accept_and_notarise_each_others_keys() {
    let hearth = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let hearth_name = hearth.config.server_name.clone();
    let synapse_name = synapse.server_name();

    // Synapse's keys as it publishes them, for checking its signatures below.
    let (status, published) = synapse
        .federation_request(reqwest::Method::GET, "/_matrix/key/v2/server", None)
        .await;
    assert_eq!(status, 200, "{published}");
    let synapse_keys: CanonicalJsonObject = serde_json::from_value(published).unwrap();
    let hearth_keys = hearth.services().federation.own_keys().unwrap();

    // Hearth fetches Synapse's keys itself, and they verify as Synapse's.
    let (keys, raw) = hearth
        .services()
        .federation
        .server_keys(&synapse_name, None)
        .await
        .expect("Hearth accepts Synapse's keys");
    assert!(!keys.verify_keys.is_empty());
    assert_eq!(
        verify_key_response(&raw, &synapse_name).unwrap(),
        verify_key_response(&synapse_keys, &synapse_name).unwrap()
    );

    // Hearth as a notary: Synapse's keys, Synapse's signature intact, Hearth's added.
    let http = &synapse.federation_http;
    let single: Value = http
        .get(format!(
            "{}/_matrix/key/v2/query/{}",
            hearth.federation_url(),
            enc(synapse_name.as_str())
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch: Value = http
        .post(format!("{}/_matrix/key/v2/query", hearth.federation_url()))
        .json(&json!({ "server_keys": { synapse_name.as_str(): {} } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for answer in [&single, &batch] {
        let entry = notarised_entry(answer, &synapse_name);
        assert_signed_by(entry, &synapse_name, &synapse_keys);
        assert_signed_by(entry, &hearth_name, &hearth_keys);
    }

    // Synapse as a notary: it fetches Hearth's keys, accepts them, and passes them on with
    // Hearth's signature intact and its own added. Synapse only goes to the server when the
    // query names a key ID it lacks; asked for "all keys" it answers from its cache (the spec
    // says it should query), so the forms without a key ID come after. It also insists on
    // minimum_valid_until_ts, which the spec makes optional.
    let hearth_key_id = hearth.services().signing_key.key_id();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (status, by_id) = synapse
        .federation_request(
            reqwest::Method::POST,
            "/_matrix/key/v2/query",
            Some(json!({ "server_keys": { hearth_name.as_str(): {
                &hearth_key_id: { "minimum_valid_until_ts": now_ms },
            } } })),
        )
        .await;
    assert_eq!(status, 200, "{by_id}");
    let (status, all) = synapse
        .federation_request(
            reqwest::Method::POST,
            "/_matrix/key/v2/query",
            Some(json!({ "server_keys": { hearth_name.as_str(): {} } })),
        )
        .await;
    assert_eq!(status, 200, "{all}");
    let (status, single) = synapse
        .federation_request(
            reqwest::Method::GET,
            &format!("/_matrix/key/v2/query/{}", enc(hearth_name.as_str())),
            None,
        )
        .await;
    assert_eq!(status, 200, "{single}");
    for answer in [&by_id, &all, &single] {
        let entry = notarised_entry(answer, &hearth_name);
        assert_signed_by(entry, &hearth_name, &hearth_keys);
        assert_signed_by(entry, &synapse_name, &synapse_keys);
        assert_eq!(
            entry["verify_keys"][&hearth_key_id]["key"],
            hearth.services().signing_key.public_key_base64(),
            "{answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_and_synapse_accept_each_others_signed_requests() {
    let hearth = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let hearth_name = hearth.config.server_name.clone();
    let synapse_name = synapse.server_name();

    let (bob_id, bob) = synapse.register("bob").await;
    let (status, body) = synapse
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob_id)),
            Some(&bob),
            json!({ "displayname": "Bob on Synapse" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (alice_id, alice, _) = hearth.register("alice", "a long password").await;
    let (status, body) = hearth
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice_id)),
            Some(&alice),
            json!({ "displayname": "Alice on Hearth" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Hearth signs, Synapse fetches Hearth's keys and accepts the request.
    let profile = hearth
        .services()
        .federation
        .get_json(
            &synapse_name,
            &format!(
                "/_matrix/federation/v1/query/profile?user_id={}",
                enc(&bob_id)
            ),
        )
        .await
        .expect("Synapse answers Hearth's signed request");
    assert_eq!(profile["displayname"], "Bob on Synapse", "{profile}");

    // Synapse signs (asking for a remote user's profile on behalf of bob), Hearth accepts.
    assert!(alice_id.ends_with(&format!(":{hearth_name}")));
    let (status, profile) = synapse
        .get(
            &format!("/_matrix/client/v3/profile/{}", enc(&alice_id)),
            Some(&bob),
        )
        .await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["displayname"], "Alice on Hearth", "{profile}");
}
