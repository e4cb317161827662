//! Bad input gets the spec's errcode and changes nothing that is stored.

use serde_json::json;

use crate::common::{assert_err, TestServer};

const PASSWORD: &str = "a long password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_errcodes_and_change_nothing() {
    let server = TestServer::start().await;
    let (user_id, token, _) = server.register("erin", PASSWORD).await;
    let displayname = format!("/_matrix/client/v3/profile/{user_id}/displayname");
    let before = server.db_fingerprint();

    // Malformed JSON.
    let resp = server
        .http
        .put(format!("{}{displayname}", server.url()))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"displayname\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_NOT_JSON");

    // Wrong field type.
    assert_err(
        &server
            .put(&displayname, Some(&token), json!({ "displayname": 42 }))
            .await,
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &server
            .post(
                "/_matrix/client/v3/login",
                None,
                json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "erin" }, "password": 7 }),
            )
            .await,
        400,
        "M_BAD_JSON",
    );

    // Taken and invalid user names.
    assert_err(
        &server
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({ "username": "erin", "password": PASSWORD }),
            )
            .await,
        400,
        "M_USER_IN_USE",
    );
    assert_err(
        &server
            .get("/_matrix/client/v3/register/available?username=erin", None)
            .await,
        400,
        "M_USER_IN_USE",
    );
    for bad in ["Erin", "er in", "érin", ""] {
        assert_err(
            &server
                .post(
                    "/_matrix/client/v3/register",
                    None,
                    json!({ "username": bad, "password": PASSWORD }),
                )
                .await,
            400,
            "M_INVALID_USERNAME",
        );
    }

    // Wrong password.
    assert_err(
        &server.login("erin", "not the password").await,
        403,
        "M_FORBIDDEN",
    );
    assert_err(&server.login("nobody", PASSWORD).await, 403, "M_FORBIDDEN");

    // No token, and an unknown one.
    assert_err(
        &server.get("/_matrix/client/v3/account/whoami", None).await,
        401,
        "M_MISSING_TOKEN",
    );
    assert_err(
        &server
            .get("/_matrix/client/v3/account/whoami", Some("hat_not_a_token"))
            .await,
        401,
        "M_UNKNOWN_TOKEN",
    );

    // Unknown endpoint, wrong method.
    assert_err(
        &server
            .get("/_matrix/client/v3/no/such/endpoint", None)
            .await,
        404,
        "M_UNRECOGNIZED",
    );
    assert_err(
        &server
            .request(
                reqwest::Method::DELETE,
                "/_matrix/client/v3/login",
                None,
                None,
            )
            .await,
        405,
        "M_UNRECOGNIZED",
    );

    // Body over the limit (1 MiB by default).
    let huge = "x".repeat(2 << 20);
    assert_err(
        &server
            .put(&displayname, Some(&token), json!({ "displayname": huge }))
            .await,
        413,
        "M_TOO_LARGE",
    );

    // Someone else's profile.
    assert_err(
        &server
            .put(
                "/_matrix/client/v3/profile/@someone:localhost:8448/displayname",
                Some(&token),
                json!({ "displayname": "x" }),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );

    // Invalid user ID in a path.
    assert_err(
        &server
            .get("/_matrix/client/v3/profile/not-a-user-id", None)
            .await,
        400,
        "M_INVALID_PARAM",
    );

    assert_eq!(
        server.db_fingerprint(),
        before,
        "bad input changed stored data"
    );
    let (_, profile) = server.get(&displayname, None).await;
    assert_eq!(profile["displayname"], "erin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_logins_are_refused_with_retry_after() {
    let server = TestServer::start_with(|c| {
        c.rate_limits.login = hearth::config::Rate {
            per_second: 0.01,
            burst: 3,
        };
    })
    .await;
    server.register("frank", PASSWORD).await;
    for _ in 0..3 {
        assert_eq!(server.login("frank", PASSWORD).await.0, 200);
    }
    let before = server.db_fingerprint();
    let resp = server.login("frank", PASSWORD).await;
    assert_err(&resp, 429, "M_LIMIT_EXCEEDED");
    assert!(resp.1["retry_after_ms"].as_u64().unwrap() > 0);
    assert_eq!(
        server.db_fingerprint(),
        before,
        "a refused login created a device"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_wrong_passwords_lock_the_account_briefly() {
    let server = TestServer::start_with(|c| {
        c.rate_limits.login_failures = hearth::config::Rate {
            per_second: 0.01,
            burst: 2,
        };
    })
    .await;
    server.register("gina", PASSWORD).await;
    assert_err(&server.login("gina", "wrong one").await, 403, "M_FORBIDDEN");
    assert_err(&server.login("gina", "wrong two").await, 403, "M_FORBIDDEN");
    assert_err(
        &server.login("gina", PASSWORD).await,
        429,
        "M_LIMIT_EXCEEDED",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_needs_a_valid_token() {
    let server = TestServer::start().await;
    let before = server.db_fingerprint();
    let (status, flows) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "henry", "password": PASSWORD }),
        )
        .await;
    assert_eq!(status, 401);
    let session = flows["session"].as_str().unwrap();
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({
                "username": "henry", "password": PASSWORD,
                "auth": { "type": "m.login.registration_token", "token": "wrong", "session": session },
            }),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // m.login.dummy is not offered when registration needs a token.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({
                "username": "henry", "password": PASSWORD,
                "auth": { "type": "m.login.dummy", "session": session },
            }),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(server.db_fingerprint(), before);
    assert_err(&server.login("henry", PASSWORD).await, 403, "M_FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_registration_uses_dummy_stage() {
    let server = TestServer::start_with(|c| {
        c.registration.mode = hearth::config::RegistrationMode::Open;
    })
    .await;
    let (status, flows) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "iris", "password": PASSWORD }),
        )
        .await;
    assert_eq!(status, 401);
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({
                "username": "iris", "password": PASSWORD,
                "auth": { "type": "m.login.dummy", "session": flows["session"] },
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.login("iris", PASSWORD).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_needs_the_old_password_and_logs_out_other_devices() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("jack", PASSWORD).await;
    let (_, other) = server.login("jack", PASSWORD).await;
    let other_token = other["access_token"].as_str().unwrap();
    let (status, uiaa) = server
        .post(
            "/_matrix/client/v3/account/password",
            Some(&token),
            json!({ "new_password": "another long password" }),
        )
        .await;
    assert_eq!(status, 401);
    let before = server.db_fingerprint();
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/password",
            Some(&token),
            json!({
                "new_password": "another long password",
                "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "jack" },
                          "password": "wrong", "session": uiaa["session"] },
            }),
        )
        .await;
    assert_eq!((status, &body["errcode"]), (401, &json!("M_FORBIDDEN")));
    assert_eq!(server.db_fingerprint(), before);
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/password",
            Some(&token),
            json!({
                "new_password": "another long password",
                "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "jack" },
                          "password": PASSWORD, "session": uiaa["session"] },
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        server
            .get("/_matrix/client/v3/account/whoami", Some(&token))
            .await
            .0,
        200
    );
    assert_err(
        &server
            .get("/_matrix/client/v3/account/whoami", Some(other_token))
            .await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    assert_err(&server.login("jack", PASSWORD).await, 403, "M_FORBIDDEN");
    assert_eq!(server.login("jack", "another long password").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivated_accounts_cannot_log_in() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("kate", PASSWORD).await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&token),
            json!({
                "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "kate" },
                          "password": PASSWORD },
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id_server_unbind_result"], "no-support");
    assert_err(
        &server
            .get("/_matrix/client/v3/account/whoami", Some(&token))
            .await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    assert_err(
        &server.login("kate", PASSWORD).await,
        403,
        "M_USER_DEACTIVATED",
    );
    assert_err(
        &server.login("kate", "wrong password").await,
        403,
        "M_FORBIDDEN",
    );
    // The name stays taken.
    assert_err(
        &server
            .get("/_matrix/client/v3/register/available?username=kate", None)
            .await,
        400,
        "M_USER_IN_USE",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uiaa_sessions_cannot_be_carried_to_another_operation_or_account() {
    let server = TestServer::start_with(|c| {
        c.registration.mode = hearth::config::RegistrationMode::Open;
    })
    .await;
    let (_, alice, _) = server.register("nora", PASSWORD).await;
    let (_, eve, _) = server.register("oscar", PASSWORD).await;
    // A registration session offers m.login.dummy; it must not unlock a password change.
    let (_, reg) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "pat", "password": PASSWORD }),
        )
        .await;
    let before = server.db_fingerprint();
    let resp = server
        .post(
            "/_matrix/client/v3/account/password",
            Some(&alice),
            json!({ "new_password": "stolen password!", "auth": { "type": "m.login.dummy", "session": reg["session"] } }),
        )
        .await;
    assert_err(&resp, 403, "M_FORBIDDEN");
    // Eve's own session, proven with Eve's password, must not act on Alice's account.
    let (_, eve_session) = server
        .post(
            "/_matrix/client/v3/delete_devices",
            Some(&eve),
            json!({ "devices": [] }),
        )
        .await;
    let resp = server
        .post(
            "/_matrix/client/v3/delete_devices",
            Some(&alice),
            json!({
                "devices": [],
                "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "oscar" },
                          "password": PASSWORD, "session": eve_session["session"] },
            }),
        )
        .await;
    assert_err(&resp, 403, "M_FORBIDDEN");
    assert_eq!(server.db_fingerprint(), before);
    assert_eq!(server.login("nora", PASSWORD).await.0, 200);
}
