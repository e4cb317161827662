//! Federation between two Hearth servers over TLS on loopback: published keys, the key notary,
//! X-Matrix authentication both ways, and refusal of unsigned or forged requests.

use hearth_federation::{server_keys::verify_key_response, xmatrix, ServerSigningKey};
use ruma::{CanonicalJsonObject, ServerName};
use serde_json::Value;

use crate::common::{assert_err, enc, TestServer};

fn insecure() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

fn name(server: &TestServer) -> ruma::OwnedServerName {
    server.config.server_name.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_publish_signed_keys_and_notarise_each_other() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let http = insecure();

    let version: Value = http
        .get(format!(
            "{}/_matrix/federation/v1/version",
            a.federation_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["server"]["name"], "Hearth");

    // A's own keys verify as A's.
    let keys: CanonicalJsonObject = http
        .get(format!("{}/_matrix/key/v2/server", a.federation_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let parsed = verify_key_response(&keys, &name(&a)).expect("A's keys are self-signed");
    assert!(parsed.valid_until_ts > 0);
    // ...and not as anybody else's.
    assert!(verify_key_response(&keys, &name(&b)).is_err());
    // Synapse signs every federation request, key fetches included: endpoints without
    // authentication must not refuse an X-Matrix header.
    let request = http::Request::get("/_matrix/key/v2/server")
        .body(Vec::<u8>::new())
        .unwrap();
    let auth =
        xmatrix::sign_request(&b.services().signing_key, &name(&b), &name(&a), &request).unwrap();
    let resp = http
        .get(format!("{}/_matrix/key/v2/server", a.federation_url()))
        .header(http::header::AUTHORIZATION, auth)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A, as a notary, serves B's keys signed by B and counter-signed by A.
    let notarised: Value = http
        .get(format!(
            "{}/_matrix/key/v2/query/{}",
            a.federation_url(),
            enc(name(&b).as_str())
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = &notarised["server_keys"][0];
    assert_eq!(entry["server_name"], name(&b).as_str());
    assert!(
        entry["signatures"][name(&b).as_str()].is_object(),
        "{notarised}"
    );
    assert!(
        entry["signatures"][name(&a).as_str()].is_object(),
        "{notarised}"
    );
    let object: CanonicalJsonObject = serde_json::from_value(entry.clone()).unwrap();
    verify_key_response(&object, &name(&b)).expect("B's signature survives notarising");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_requests_are_accepted_and_forged_ones_refused() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let (alice_id, alice, _) = a.register("alice", "a long password").await;
    let (status, _) = a
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice_id)),
            Some(&alice),
            serde_json::json!({ "displayname": "Alice A." }),
        )
        .await;
    assert_eq!(status, 200);

    // B asks A for alice's profile, signing with its key; A fetches B's keys and checks.
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&alice_id)
    );
    let profile = b
        .services()
        .federation
        .get_json(&name(&a), &path)
        .await
        .expect("a signed request is answered");
    assert_eq!(profile["displayname"], "Alice A.");

    let http = insecure();
    let url = format!("{}{path}", a.federation_url());
    let send = |auth: Option<http::HeaderValue>| {
        let mut req = http.get(&url);
        if let Some(a) = auth {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // No signature at all.
    assert_err(&send(None).await, 401, "M_UNAUTHORIZED");
    // Signed with a key that is not B's, though it claims to be B.
    let forger = ServerSigningKey::generate("forged").unwrap();
    let request = http::Request::get(&path).body(Vec::<u8>::new()).unwrap();
    let forged = xmatrix::sign_request(&forger, &name(&b), &name(&a), &request).unwrap();
    assert_err(&send(Some(forged)).await, 401, "M_UNAUTHORIZED");
    // B's real key, but the signature was made for another destination.
    let elsewhere = ServerName::parse("elsewhere.example").unwrap();
    let misdirected =
        xmatrix::sign_request(&b.services().signing_key, &name(&b), &elsewhere, &request).unwrap();
    assert_err(&send(Some(misdirected)).await, 401, "M_UNAUTHORIZED");
    // B's real key for a different request (another user's profile).
    let other = http::Request::get("/_matrix/federation/v1/query/profile?user_id=%40bob%3Ax")
        .body(Vec::<u8>::new())
        .unwrap();
    let replayed =
        xmatrix::sign_request(&b.services().signing_key, &name(&b), &name(&a), &other).unwrap();
    assert_err(&send(Some(replayed)).await, 401, "M_UNAUTHORIZED");
    // A malformed header.
    assert_err(
        &send(Some(http::HeaderValue::from_static(
            "X-Matrix origin=\"nope",
        )))
        .await,
        401,
        "M_UNAUTHORIZED",
    );
    // And the good one still works.
    let good =
        xmatrix::sign_request(&b.services().signing_key, &name(&b), &name(&a), &request).unwrap();
    let (status, body) = send(Some(good)).await;
    assert_eq!(status, 200, "{body}");
}
