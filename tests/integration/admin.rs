//! Admin paths: `hearth register-user` against a running server, shared-secret registration,
//! registration tokens, and the discovery endpoints.

use hmac::{Hmac, Mac};
use serde_json::json;
use sha1::Sha1;

use crate::common::{assert_err, TestServer, SHARED_SECRET};

fn hearth_cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .env_remove("HEARTH_CONFIG")
        .env("HEARTH_DATABASE__PATH", &server.config.database.path)
        .env(
            "HEARTH_LISTEN__CLIENT",
            server.config.listen.client.to_string(),
        )
        .output()
        .expect("hearth runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_user_command_creates_accounts_on_the_running_server() {
    let server = TestServer::start().await;
    let out = hearth_cli(
        &server,
        &[
            "register-user",
            "admin",
            "--admin",
            "--password",
            "admin password",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, login) = server.login("admin", "admin password").await;
    assert_eq!(status, 200, "{login}");

    // The new admin can use the admin API with its own token.
    let token = login["access_token"].as_str().unwrap();
    let (status, user) = server
        .get(
            "/_synapse/admin/v2/users/@admin:localhost:8448",
            Some(token),
        )
        .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["admin"], true);

    // A second run for the same name fails and says why.
    let out = hearth_cli(&server, &["register-user", "admin", "--password", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    // Registration tokens from the CLI work for registration.
    let out = hearth_cli(
        &server,
        &[
            "registration-token",
            "create",
            "--token",
            "cli-token",
            "--uses",
            "1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cli-token");
    let (_, validity) = server
        .get(
            "/_matrix/client/v1/register/m.login.registration_token/validity?token=cli-token",
            None,
        )
        .await;
    assert_eq!(validity["valid"], true);
    let out = hearth_cli(&server, &["registration-token", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cli-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admins_cannot_use_the_admin_api() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("plain", "a long password").await;
    assert_err(
        &server
            .get("/_synapse/admin/v1/registration_tokens", Some(&token))
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &server
            .get("/_synapse/admin/v1/registration_tokens", None)
            .await,
        401,
        "M_MISSING_TOKEN",
    );
}

fn mac(nonce: &str, user: &str, password: &str, admin: bool, secret: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    let admin = if admin { "admin" } else { "notadmin" };
    mac.update(format!("{nonce}\0{user}\0{password}\0{admin}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_secret_registration_checks_the_hmac() {
    let server = TestServer::start().await;
    let (status, nonce) = server.get("/_synapse/admin/v1/register", None).await;
    assert_eq!(status, 200);
    let nonce = nonce["nonce"].as_str().unwrap().to_owned();

    let before = server.db_fingerprint();
    let wrong = server
        .post(
            "/_synapse/admin/v1/register",
            None,
            json!({
                "nonce": nonce, "username": "mallory", "password": "a long password", "admin": true,
                "mac": mac(&nonce, "mallory", "a long password", true, "not the secret"),
            }),
        )
        .await;
    assert_err(&wrong, 403, "M_FORBIDDEN");
    assert_eq!(server.db_fingerprint(), before);
    assert_err(
        &server.login("mallory", "a long password").await,
        403,
        "M_FORBIDDEN",
    );

    // A nonce is single-use, so fetch a fresh one.
    let (_, nonce) = server.get("/_synapse/admin/v1/register", None).await;
    let nonce = nonce["nonce"].as_str().unwrap().to_owned();
    let (status, body) = server
        .post(
            "/_synapse/admin/v1/register",
            None,
            json!({
                "nonce": nonce, "username": "liam", "password": "a long password", "admin": false,
                "mac": mac(&nonce, "liam", "a long password", false, SHARED_SECRET),
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@liam:localhost:8448");
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(
        server
            .get("/_matrix/client/v3/account/whoami", Some(token))
            .await
            .0,
        200
    );
    assert_eq!(server.login("liam", "a long password").await.0, 200);

    // Replaying the used nonce fails.
    let replay = server
        .post(
            "/_synapse/admin/v1/register",
            None,
            json!({
                "nonce": nonce, "username": "liam2", "password": "a long password", "admin": false,
                "mac": mac(&nonce, "liam2", "a long password", false, SHARED_SECRET),
            }),
        )
        .await;
    assert_eq!(replay.0, 400, "{}", replay.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_secret_registration_is_off_without_a_secret() {
    let server = TestServer::start_with(|c| c.registration.shared_secret.clear()).await;
    assert_err(
        &server.get("/_synapse/admin/v1/register", None).await,
        400,
        "M_FORBIDDEN",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_endpoints_describe_the_server() {
    let unconfigured = TestServer::start().await;
    assert_err(
        &unconfigured.get("/.well-known/matrix/client", None).await,
        404,
        "M_NOT_FOUND",
    );
    drop(unconfigured);
    let server =
        TestServer::start_with(|c| c.well_known.client = "https://matrix.example.org/".into())
            .await;
    let (status, versions) = server.get("/_matrix/client/versions", None).await;
    assert_eq!(status, 200);
    let versions: Vec<&str> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(versions.contains(&"v1.19") && versions.contains(&"r0.6.1"));

    let (_, wk) = server.get("/.well-known/matrix/client", None).await;
    assert_eq!(wk["m.homeserver"]["base_url"], "https://matrix.example.org");
    let (_, wk) = server.get("/.well-known/matrix/server", None).await;
    assert_eq!(wk["m.server"], "localhost:8448");

    let (_, login) = server.get("/_matrix/client/v3/login", None).await;
    assert_eq!(login["flows"][0]["type"], "m.login.password");

    let (_, token, _) = server.register("mia", "a long password").await;
    let (_, caps) = server
        .get("/_matrix/client/v3/capabilities", Some(&token))
        .await;
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "12");
    for v in 1..=12 {
        assert_eq!(
            caps["capabilities"]["m.room_versions"]["available"][v.to_string()],
            "stable"
        );
    }
    // An absent m.change_password means enabled; it must not say false.
    assert_ne!(caps["capabilities"]["m.change_password"]["enabled"], false);
    assert_eq!(caps["capabilities"]["m.profile_fields"]["enabled"], true);

    // Browsers get CORS headers.
    let resp = server
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/_matrix/client/v3/login", server.url()),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "*",
        "{:?}",
        resp.headers()
    );
}
