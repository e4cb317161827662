//! Server-side key backups over raw HTTP: versions, keys at the three levels, etags and counts,
//! the spec's replacement rules, wrong and unknown versions, and bad input changing nothing.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{assert_err, TestServer};

const PASSWORD: &str = "a long password";
const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";
const ROOM: &str = "!backup:example.org";
const ROOM2: &str = "!other:example.org";

fn version_body(public_key: &str) -> Value {
    json!({
        "algorithm": ALGORITHM,
        "auth_data": {
            "public_key": public_key,
            "signatures": { "@alice:localhost": { "ed25519:DEV": "sig" } },
        },
    })
}

fn key(is_verified: bool, first_message_index: u64, forwarded_count: u64, tag: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": { "ephemeral": "eph", "ciphertext": tag, "mac": "mac" },
    })
}

fn keys_path(version: &str, room: Option<&str>, session: Option<&str>) -> String {
    let mut path = "/_matrix/client/v3/room_keys/keys".to_owned();
    if let Some(room) = room {
        path.push('/');
        path.push_str(&crate::common::enc(room));
    }
    if let Some(session) = session {
        path.push('/');
        path.push_str(&crate::common::enc(session));
    }
    format!("{path}?version={version}")
}

fn version_path(version: &str) -> String {
    format!("/_matrix/client/v3/room_keys/version/{version}")
}

const LATEST: &str = "/_matrix/client/v3/room_keys/version";

async fn delete(server: &TestServer, path: &str, token: &str) -> (u16, Value) {
    server
        .request(Method::DELETE, path, Some(token), None)
        .await
}

async fn create_version(server: &TestServer, token: &str, public_key: &str) -> String {
    let (status, body) = server
        .post(LATEST, Some(token), version_body(public_key))
        .await;
    assert_eq!(status, 200, "{body}");
    body["version"].as_str().expect("version").to_owned()
}

/// Puts one session's key; returns (etag, count).
async fn put_session(
    server: &TestServer,
    token: &str,
    version: &str,
    room: &str,
    session: &str,
    data: Value,
) -> (String, u64) {
    let (status, body) = server
        .put(
            &keys_path(version, Some(room), Some(session)),
            Some(token),
            data,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    etag_count(&body)
}

fn etag_count(body: &Value) -> (String, u64) {
    (
        body["etag"].as_str().expect("etag").to_owned(),
        body["count"].as_u64().expect("count"),
    )
}

/// Sends a raw (possibly malformed) JSON body.
async fn raw_body(
    server: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, Value) {
    let resp = server
        .http
        .request(method, format!("{}{path}", server.url()))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_created_read_updated_and_deleted() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (_, bob, _) = server.register("bob", PASSWORD).await;

    assert_err(&server.get(LATEST, Some(&alice)).await, 404, "M_NOT_FOUND");
    assert_eq!(create_version(&server, &alice, "key1").await, "1");

    let (status, info) = server.get(LATEST, Some(&alice)).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["version"], "1");
    assert_eq!(info["algorithm"], ALGORITHM);
    assert_eq!(info["auth_data"]["public_key"], "key1");
    assert_eq!(info["count"], 0);
    assert!(info["etag"].is_string(), "{info}");
    let (status, by_number) = server.get(&version_path("1"), Some(&alice)).await;
    assert_eq!(status, 200);
    assert_eq!(by_number, info);

    // Only auth_data changes; the body's version, if given, must match the path.
    let (status, body) = server
        .put(&version_path("1"), Some(&alice), version_body("key1b"))
        .await;
    assert_eq!(status, 200, "{body}");
    let mut with_version = version_body("key1c");
    with_version["version"] = "1".into();
    assert_eq!(
        server
            .put(&version_path("1"), Some(&alice), with_version)
            .await
            .0,
        200
    );
    let (_, info) = server.get(&version_path("1"), Some(&alice)).await;
    assert_eq!(info["auth_data"]["public_key"], "key1c");
    assert_eq!(info["algorithm"], ALGORITHM);

    let before = server.db_fingerprint();
    let other_algorithm = json!({ "algorithm": "org.example.other", "auth_data": {} });
    assert_err(
        &server
            .put(&version_path("1"), Some(&alice), other_algorithm)
            .await,
        400,
        "M_INVALID_PARAM",
    );
    let mut mismatched = version_body("key1d");
    mismatched["version"] = "2".into();
    assert_err(
        &server
            .put(&version_path("1"), Some(&alice), mismatched)
            .await,
        400,
        "M_INVALID_PARAM",
    );
    for unknown in ["9", "0", "abc", "01", "+1"] {
        assert_err(
            &server
                .put(&version_path(unknown), Some(&alice), version_body("x"))
                .await,
            404,
            "M_NOT_FOUND",
        );
        assert_err(
            &server.get(&version_path(unknown), Some(&alice)).await,
            404,
            "M_NOT_FOUND",
        );
        assert_err(
            &delete(&server, &version_path(unknown), &alice).await,
            404,
            "M_NOT_FOUND",
        );
    }
    // Versions are per user: bob sees none of alice's.
    assert_err(&server.get(LATEST, Some(&bob)).await, 404, "M_NOT_FOUND");
    assert_err(
        &server.get(&version_path("1"), Some(&bob)).await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &server
            .put(&version_path("1"), Some(&bob), version_body("evil"))
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &delete(&server, &version_path("1"), &bob).await,
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(
        server.db_fingerprint(),
        before,
        "rejected requests stored nothing"
    );

    // A new version becomes the latest; deleting it makes the previous one current again, a
    // second delete succeeds, and its number is never handed out again.
    assert_eq!(create_version(&server, &alice, "key2").await, "2");
    assert_eq!(server.get(LATEST, Some(&alice)).await.1["version"], "2");
    assert_eq!(delete(&server, &version_path("2"), &alice).await.0, 200);
    assert_err(
        &server.get(&version_path("2"), Some(&alice)).await,
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(server.get(LATEST, Some(&alice)).await.1["version"], "1");
    assert_eq!(delete(&server, &version_path("2"), &alice).await.0, 200);
    assert_eq!(create_version(&server, &alice, "key3").await, "3");
    assert_eq!(server.get(LATEST, Some(&alice)).await.1["version"], "3");
    // Deleting every version leaves no backup.
    assert_eq!(delete(&server, &version_path("3"), &alice).await.0, 200);
    assert_eq!(delete(&server, &version_path("1"), &alice).await.0, 200);
    assert_err(&server.get(LATEST, Some(&alice)).await, 404, "M_NOT_FOUND");
    assert_eq!(create_version(&server, &alice, "key4").await, "4");

    // Bob's numbering is his own.
    assert_eq!(create_version(&server, &bob, "bobkey").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_at_three_levels_with_etags_and_counts() {
    let mut server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let v = create_version(&server, &alice, "key1").await;
    let (etag0, _) = etag_count(&server.get(&version_path(&v), Some(&alice)).await.1);

    // One session.
    let (etag1, count) = put_session(&server, &alice, &v, ROOM, "s1", key(false, 0, 0, "c1")).await;
    assert_eq!(count, 1);
    assert_ne!(etag1, etag0);

    // A room's sessions.
    let (status, body) = server
        .put(
            &keys_path(&v, Some(ROOM), None),
            Some(&alice),
            json!({ "sessions": { "s2": key(false, 0, 0, "c2"), "s3": key(true, 4, 1, "c3") } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (etag2, count) = etag_count(&body);
    assert_eq!(count, 3);
    assert_ne!(etag2, etag1);

    // Several rooms at once.
    let (status, body) = server
        .put(
            &keys_path(&v, None, None),
            Some(&alice),
            json!({ "rooms": {
                ROOM2: { "sessions": { "s4": key(false, 2, 0, "c4") } },
                ROOM: { "sessions": { "s1": key(false, 0, 0, "c1") } },
            } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (etag3, count) = etag_count(&body);
    assert_eq!(count, 4, "s1 was already stored");
    assert_ne!(etag3, etag2);

    // The version info agrees.
    let (_, info) = server.get(&version_path(&v), Some(&alice)).await;
    assert_eq!(
        (info["etag"].as_str().unwrap(), info["count"].as_u64()),
        (etag3.as_str(), Some(4))
    );

    // Reads at the three levels.
    let (status, all) = server.get(&keys_path(&v, None, None), Some(&alice)).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["rooms"][ROOM]["sessions"]["s3"], key(true, 4, 1, "c3"));
    assert_eq!(
        all["rooms"][ROOM2]["sessions"]["s4"],
        key(false, 2, 0, "c4")
    );
    assert_eq!(all["rooms"][ROOM]["sessions"].as_object().unwrap().len(), 3);
    assert_eq!(all["rooms"].as_object().unwrap().len(), 2);
    let (status, room) = server
        .get(&keys_path(&v, Some(ROOM), None), Some(&alice))
        .await;
    assert_eq!(status, 200);
    assert_eq!(room["sessions"], all["rooms"][ROOM]["sessions"]);
    let (status, one) = server
        .get(&keys_path(&v, Some(ROOM), Some("s2")), Some(&alice))
        .await;
    assert_eq!(status, 200);
    assert_eq!(one, key(false, 0, 0, "c2"));
    // A room without keys is an empty object (as the spec says); a missing session is 404.
    let (status, empty) = server
        .get(
            &keys_path(&v, Some("!nothing:example.org"), None),
            Some(&alice),
        )
        .await;
    assert_eq!((status, empty), (200, json!({ "sessions": {} })));
    assert_err(
        &server
            .get(&keys_path(&v, Some(ROOM), Some("nope")), Some(&alice))
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &server
            .get(&keys_path(&v, Some(ROOM2), Some("s1")), Some(&alice))
            .await,
        404,
        "M_NOT_FOUND",
    );

    // Keys survive a restart.
    server.restart().await;
    let (_, again) = server.get(&keys_path(&v, None, None), Some(&alice)).await;
    assert_eq!(again, all);

    // Deletes at the three levels.
    let (status, body) = delete(&server, &keys_path(&v, Some(ROOM), Some("s1")), &alice).await;
    assert_eq!(status, 200, "{body}");
    let (etag4, count) = etag_count(&body);
    assert_eq!(count, 3);
    assert_ne!(etag4, etag3);
    assert_err(
        &server
            .get(&keys_path(&v, Some(ROOM), Some("s1")), Some(&alice))
            .await,
        404,
        "M_NOT_FOUND",
    );
    // Deleting what is not there changes nothing, etag included.
    let before = server.db_fingerprint();
    let (status, body) = delete(&server, &keys_path(&v, Some(ROOM), Some("s1")), &alice).await;
    assert_eq!(status, 200);
    assert_eq!(etag_count(&body), (etag4.clone(), 3));
    assert_eq!(server.db_fingerprint(), before);

    let (status, body) = delete(&server, &keys_path(&v, Some(ROOM), None), &alice).await;
    assert_eq!(status, 200);
    let (etag5, count) = etag_count(&body);
    assert_eq!(count, 1);
    assert_ne!(etag5, etag4);
    let (_, all) = server.get(&keys_path(&v, None, None), Some(&alice)).await;
    assert_eq!(
        all["rooms"].as_object().unwrap().keys().collect::<Vec<_>>(),
        [ROOM2]
    );

    let (status, body) = delete(&server, &keys_path(&v, None, None), &alice).await;
    assert_eq!(status, 200);
    let (etag6, count) = etag_count(&body);
    assert_eq!(count, 0);
    assert_ne!(etag6, etag5);
    let (_, all) = server.get(&keys_path(&v, None, None), Some(&alice)).await;
    assert_eq!(all, json!({ "rooms": {} }));

    // Deleting a version deletes its keys.
    put_session(&server, &alice, &v, ROOM, "s1", key(false, 0, 0, "c1")).await;
    put_session(&server, &alice, &v, ROOM2, "s2", key(false, 0, 0, "c2")).await;
    assert_eq!(delete(&server, &version_path(&v), &alice).await.0, 200);
    let services = &server.server.as_ref().unwrap().services;
    let stored_keys = services
        .db
        .scan_prefix(hearth::storage::Cf::BackupKeys, &[])
        .count();
    assert_eq!(stored_keys, 0, "the deleted version's keys are gone");
    assert_err(
        &server.get(&keys_path(&v, None, None), Some(&alice)).await,
        404,
        "M_NOT_FOUND",
    );
    let v2 = create_version(&server, &alice, "key2").await;
    let (_, all) = server.get(&keys_path(&v2, None, None), Some(&alice)).await;
    assert_eq!(all, json!({ "rooms": {} }));
}

/// The ciphertext of the key stored for session "s" in ROOM.
async fn stored(server: &TestServer, token: &str, version: &str) -> Value {
    let (status, body) = server
        .get(&keys_path(version, Some(ROOM), Some("s")), Some(token))
        .await;
    assert_eq!(status, 200, "{body}");
    body["session_data"]["ciphertext"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_key_is_replaced_only_by_a_better_one() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let v = create_version(&server, &alice, "key1").await;

    let (etag, _) = put_session(&server, &alice, &v, ROOM, "s", key(false, 5, 1, "base")).await;
    // Worse or equal keys are ignored, and the etag stays.
    for (worse, why) in [
        (
            key(false, 6, 0, "later index"),
            "higher first_message_index",
        ),
        (
            key(false, 5, 2, "more forwarded"),
            "same index, higher forwarded_count",
        ),
        (
            key(false, 5, 1, "equal"),
            "equal metadata keeps the stored key",
        ),
    ] {
        let (e, count) = put_session(&server, &alice, &v, ROOM, "s", worse).await;
        assert_eq!((e.as_str(), count), (etag.as_str(), 1), "{why}");
        assert_eq!(stored(&server, &alice, &v).await, "base", "{why}");
    }

    // Same index, fewer forwards: replaced.
    let (etag2, _) = put_session(&server, &alice, &v, ROOM, "s", key(false, 5, 0, "fewer")).await;
    assert_ne!(etag2, etag);
    assert_eq!(stored(&server, &alice, &v).await, "fewer");
    // A lower index wins over the forwarded count.
    put_session(&server, &alice, &v, ROOM, "s", key(false, 3, 9, "lower")).await;
    assert_eq!(stored(&server, &alice, &v).await, "lower");
    // A verified key wins over everything else...
    put_session(
        &server,
        &alice,
        &v,
        ROOM,
        "s",
        key(true, 10, 10, "verified"),
    )
    .await;
    assert_eq!(stored(&server, &alice, &v).await, "verified");
    // ...and an unverified one never replaces it.
    let (etag3, _) = put_session(&server, &alice, &v, ROOM, "s", key(true, 10, 10, "x")).await;
    let (e, count) = put_session(
        &server,
        &alice,
        &v,
        ROOM,
        "s",
        key(false, 0, 0, "unverified"),
    )
    .await;
    assert_eq!((e, count), (etag3, 1));
    assert_eq!(stored(&server, &alice, &v).await, "verified");
    // Among verified keys the index decides again.
    put_session(
        &server,
        &alice,
        &v,
        ROOM,
        "s",
        key(true, 1, 10, "verified lower"),
    )
    .await;
    assert_eq!(stored(&server, &alice, &v).await, "verified lower");

    // In a batch, each session is judged on its own.
    let (status, body) = server
        .put(
            &keys_path(&v, None, None),
            Some(&alice),
            json!({ "rooms": { ROOM: { "sessions": {
                "s": key(false, 0, 0, "ignored"),
                "t": key(false, 0, 0, "new"),
            } } } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 2);
    assert_eq!(stored(&server, &alice, &v).await, "verified lower");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_an_old_version_are_refused_and_unknown_versions_are_not_found() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let (_, bob, _) = server.register("bob", PASSWORD).await;

    // No backup at all.
    assert_err(
        &server
            .put(
                &keys_path("1", Some(ROOM), Some("s")),
                Some(&alice),
                key(false, 0, 0, "c"),
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &server.get(&keys_path("1", None, None), Some(&alice)).await,
        404,
        "M_NOT_FOUND",
    );

    let v1 = create_version(&server, &alice, "key1").await;
    put_session(&server, &alice, &v1, ROOM, "old", key(false, 0, 0, "old")).await;
    let v2 = create_version(&server, &alice, "key2").await;
    assert_eq!(v2, "2");
    put_session(&server, &alice, &v2, ROOM, "new", key(false, 0, 0, "new")).await;
    let before = server.db_fingerprint();

    // Writes to the older version, at each level, name the current one.
    let session = key(false, 0, 0, "late");
    for (path, body) in [
        (keys_path(&v1, Some(ROOM), Some("s")), session.clone()),
        (
            keys_path(&v1, Some(ROOM), None),
            json!({ "sessions": { "s": session.clone() } }),
        ),
        (
            keys_path(&v1, None, None),
            json!({ "rooms": { ROOM: { "sessions": { "s": session.clone() } } } }),
        ),
    ] {
        let resp = server.put(&path, Some(&alice), body).await;
        assert_err(&resp, 403, "M_WRONG_ROOM_KEYS_VERSION");
        assert_eq!(resp.1["current_version"], "2", "{}", resp.1);
    }
    // Versions that do not exist (or not for this user) are 404, reads included.
    for unknown in ["3", "0", "x", "02"] {
        assert_err(
            &server
                .put(
                    &keys_path(unknown, Some(ROOM), Some("s")),
                    Some(&alice),
                    session.clone(),
                )
                .await,
            404,
            "M_NOT_FOUND",
        );
        assert_err(
            &server
                .get(&keys_path(unknown, Some(ROOM), None), Some(&alice))
                .await,
            404,
            "M_NOT_FOUND",
        );
        assert_err(
            &delete(&server, &keys_path(unknown, None, None), &alice).await,
            404,
            "M_NOT_FOUND",
        );
    }
    assert_err(
        &server
            .put(
                &keys_path(&v2, Some(ROOM), Some("s")),
                Some(&bob),
                session.clone(),
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &server.get(&keys_path(&v2, None, None), Some(&bob)).await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &delete(&server, &keys_path(&v2, None, None), &bob).await,
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(
        server.db_fingerprint(),
        before,
        "refused writes stored nothing"
    );

    // The older version can still be read (and cleared, which the spec does not restrict).
    let (status, old) = server.get(&keys_path(&v1, None, None), Some(&alice)).await;
    assert_eq!(status, 200);
    assert_eq!(
        old["rooms"][ROOM]["sessions"]["old"],
        key(false, 0, 0, "old")
    );
    assert!(old["rooms"][ROOM]["sessions"].get("new").is_none());

    // Once the current version is deleted, the older one is current again.
    assert_eq!(delete(&server, &version_path(&v2), &alice).await.0, 200);
    assert_err(
        &server
            .put(
                &keys_path(&v2, Some(ROOM), Some("s")),
                Some(&alice),
                session.clone(),
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
    put_session(&server, &alice, &v1, ROOM, "s", session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backup_input_gets_errcodes_and_changes_nothing() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PASSWORD).await;
    let v = create_version(&server, &alice, "key1").await;
    put_session(&server, &alice, &v, ROOM, "s", key(false, 0, 0, "c")).await;
    let before = server.db_fingerprint();

    // Malformed JSON.
    for (method, path) in [
        (Method::POST, LATEST.to_owned()),
        (Method::PUT, version_path(&v)),
        (Method::PUT, keys_path(&v, None, None)),
        (Method::PUT, keys_path(&v, Some(ROOM), None)),
        (Method::PUT, keys_path(&v, Some(ROOM), Some("s"))),
    ] {
        assert_err(
            &raw_body(&server, method, &path, &alice, "{\"algorithm\": ").await,
            400,
            "M_NOT_JSON",
        );
    }

    // Version bodies of the wrong shape.
    for bad in [
        json!({ "auth_data": { "public_key": "k" } }),
        json!({ "algorithm": ALGORITHM }),
        json!({ "algorithm": 7, "auth_data": { "public_key": "k" } }),
        json!({ "algorithm": ALGORITHM, "auth_data": "k" }),
        json!({ "algorithm": ALGORITHM, "auth_data": {} }),
        json!({ "algorithm": ALGORITHM, "auth_data": { "public_key": 5 } }),
        json!({ "algorithm": ALGORITHM, "auth_data": { "public_key": "k", "signatures": [] } }),
        json!([1, 2]),
    ] {
        assert_err(
            &server.post(LATEST, Some(&alice), bad.clone()).await,
            400,
            "M_BAD_JSON",
        );
        assert_err(
            &server.put(&version_path(&v), Some(&alice), bad).await,
            400,
            "M_BAD_JSON",
        );
    }

    // Keys of the wrong shape, alone or next to a good one: nothing is stored.
    let good = key(false, 0, 0, "good");
    for bad in [
        json!({ "first_message_index": 0, "forwarded_count": 0, "session_data": {} }),
        json!({ "first_message_index": -1, "forwarded_count": 0, "is_verified": false, "session_data": {} }),
        json!({ "first_message_index": 0, "forwarded_count": 1.5, "is_verified": false, "session_data": {} }),
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": "yes", "session_data": {} }),
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": false, "session_data": "x" }),
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": false }),
        json!({ "first_message_index": 9007199254740992u64, "forwarded_count": 0, "is_verified": false, "session_data": {} }),
        json!("key"),
    ] {
        assert_err(
            &server
                .put(
                    &keys_path(&v, Some(ROOM), Some("s2")),
                    Some(&alice),
                    bad.clone(),
                )
                .await,
            400,
            "M_BAD_JSON",
        );
        assert_err(
            &server
                .put(
                    &keys_path(&v, Some(ROOM), None),
                    Some(&alice),
                    json!({ "sessions": { "a": good.clone(), "b": bad.clone() } }),
                )
                .await,
            400,
            "M_BAD_JSON",
        );
        assert_err(
            &server
                .put(
                    &keys_path(&v, None, None),
                    Some(&alice),
                    json!({ "rooms": {
                        ROOM: { "sessions": { "a": good.clone() } },
                        ROOM2: { "sessions": { "b": bad } },
                    } }),
                )
                .await,
            400,
            "M_BAD_JSON",
        );
    }
    // Missing top-level fields, bad room IDs, empty session IDs, a missing version.
    assert_err(
        &server
            .put(&keys_path(&v, None, None), Some(&alice), json!({}))
            .await,
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &server
            .put(
                &keys_path(&v, Some(ROOM), None),
                Some(&alice),
                json!({ "sessions": 1 }),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    let (status, _) = server
        .put(
            &keys_path(&v, None, None),
            Some(&alice),
            json!({ "rooms": { "not a room": { "sessions": { "a": good.clone() } } } }),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        server
            .put(
                &keys_path(&v, Some("not a room"), Some("a")),
                Some(&alice),
                good.clone()
            )
            .await
            .0,
        400
    );
    assert_err(
        &server
            .put(
                &keys_path(&v, Some(ROOM), None),
                Some(&alice),
                json!({ "sessions": { "": good.clone() } }),
            )
            .await,
        400,
        "M_INVALID_PARAM",
    );
    let (status, _) = server
        .put(
            &format!(
                "/_matrix/client/v3/room_keys/keys/{}/a",
                crate::common::enc(ROOM)
            ),
            Some(&alice),
            good.clone(),
        )
        .await;
    assert_eq!(status, 400, "the version query parameter is required");

    // No access token.
    assert_err(&server.get(LATEST, None).await, 401, "M_MISSING_TOKEN");
    assert_err(
        &server
            .put(&keys_path(&v, Some(ROOM), Some("s2")), None, good)
            .await,
        401,
        "M_MISSING_TOKEN",
    );

    assert_eq!(server.db_fingerprint(), before, "bad input stored nothing");
    let (_, all) = server.get(&keys_path(&v, None, None), Some(&alice)).await;
    assert_eq!(
        all,
        json!({ "rooms": { ROOM: { "sessions": { "s": key(false, 0, 0, "c") } } } })
    );
}
