//! Application services: registration files, the `as_token` (registration, login, masquerading,
//! exclusive namespaces), and delivery of events through transactions, with a real bot built on
//! mautrix-python and with a small recording appservice here.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    extract::{Path as UrlPath, State},
    http::HeaderMap,
    routing::put,
    Json, Router,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::common::{assert_err, enc, eventually, TestServer};

const AS_TOKEN: &str = "as-token-of-the-bridge";
const HS_TOKEN: &str = "hs-token-of-the-bridge";

fn registration(url: Option<&str>) -> String {
    let url = url.map_or("null".to_owned(), |u| format!("\"{u}\""));
    format!(
        r##"
id: "test-bridge"
url: {url}
as_token: "{AS_TOKEN}"
hs_token: "{HS_TOKEN}"
sender_localpart: "_bridge"
rate_limited: false
namespaces:
  users:
    - exclusive: true
      regex: "@_bridge_.*"
  aliases:
    - exclusive: true
      regex: "#_bridge_.*"
  rooms: []
"##
    )
}

/// Starts a server with one registration file written into its temporary folder.
async fn start_with_registration(yaml: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bridge.yaml");
    std::fs::write(&file, yaml).unwrap();
    let server = TestServer::start_with(|c| {
        c.appservice.registration_files = vec![file];
        c.appservice.max_backoff = hearth::config::HumanDuration(Duration::from_millis(500));
    })
    .await;
    (server, dir)
}

async fn as_request(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = server
        .http
        .request(method, format!("{}{path}", server.url()))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Joins a namespace user to a room, as the appservice.
async fn join_as(server: &TestServer, room: &str, user: &str) {
    let (status, body) = as_request(
        server,
        reqwest::Method::POST,
        &format!(
            "/_matrix/client/v3/join/{}?user_id={}",
            enc(room),
            enc(user)
        ),
        AS_TOKEN,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Registers a namespace user as the appservice.
async fn register_as(server: &TestServer, name: &str) -> (u16, Value) {
    as_request(
        server,
        reqwest::Method::POST,
        "/_matrix/client/v3/register",
        AS_TOKEN,
        Some(json!({ "type": "m.login.application_service", "username": name, "inhibit_login": true })),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registration_files_stop_the_start_naming_the_file_and_field() {
    let cases = [
        (
            registration(None).replace("exclusive: true", "exclusive: perhaps"),
            "namespaces.users[0].exclusive",
        ),
        (
            registration(None).replace("@_bridge_.*", "@_bridge_(.*"),
            "namespaces.users[0].regex",
        ),
        (
            registration(None).replace("as_token: \"as-token-of-the-bridge\"\n", ""),
            "as_token",
        ),
        (
            registration(None).replace("\"_bridge\"", "\"not valid\""),
            "sender_localpart",
        ),
    ];
    for (yaml, field) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broken.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut config = crate::common::test_config(data.path().join("data"));
        config.appservice.registration_files = vec![dir.path().to_owned()];
        let err = match hearth::server::Server::start(config).await {
            Ok(_) => panic!("a server started with a broken registration ({field})"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains(field), "{field}: {err}");
    }
    // Two registrations claiming the same users exclusively.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), registration(None)).unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        registration(None)
            .replace("test-bridge", "other")
            .replace(AS_TOKEN, "other-as")
            .replace(HS_TOKEN, "other-hs")
            .replace("\"_bridge\"", "\"_other\"")
            .replace("#_bridge_.*", "#_other_.*"),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut config = crate::common::test_config(data.path().join("data"));
    config.appservice.registration_files = vec![dir.path().to_owned()];
    let err = hearth::server::Server::start(config)
        .await
        .err()
        .expect("overlapping exclusive namespaces are refused")
        .to_string();
    assert!(
        err.contains("b.yaml") && err.contains("namespaces.users[0].regex"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_as_token_registers_logs_in_and_masquerades_within_the_namespace_only() {
    let (server, _dir) = start_with_registration(&registration(None)).await;

    // Registration of namespace users, without interactive auth or a password.
    let (status, body) = register_as(&server, "_bridge_alice").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("access_token").is_none(), "{body}");
    assert_err(
        &register_as(&server, "_bridge_alice").await,
        400,
        "M_USER_IN_USE",
    );
    assert_err(&register_as(&server, "carol").await, 400, "M_EXCLUSIVE");
    // The registration type with a wrong token, or none.
    let (status, body) = as_request(
        &server,
        reqwest::Method::POST,
        "/_matrix/client/v3/register",
        "not-a-token",
        Some(json!({ "type": "m.login.application_service", "username": "_bridge_x" })),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNKNOWN_TOKEN")),
        "{body}"
    );
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "type": "m.login.application_service", "username": "_bridge_x" }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_MISSING_TOKEN")),
        "{body}"
    );
    // People cannot take names in the exclusive namespace, nor see them as available.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "_bridge_mallory", "password": "a long password",
                    "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_EXCLUSIVE")),
        "{body}"
    );
    assert_err(
        &server
            .get(
                "/_matrix/client/v3/register/available?username=_bridge_bob",
                None,
            )
            .await,
        400,
        "M_EXCLUSIVE",
    );
    let (_, carol, _) = server.register("carol", "a long password").await;

    // Acting as its users, and as its sender by default.
    let whoami = |user: Option<&str>| {
        let path = match user {
            Some(u) => format!("/_matrix/client/v3/account/whoami?user_id={}", enc(u)),
            None => "/_matrix/client/v3/account/whoami".to_owned(),
        };
        let server = &server;
        async move { as_request(server, reqwest::Method::GET, &path, AS_TOKEN, None).await }
    };
    let name = server.name();
    let alice = format!("@_bridge_alice:{name}");
    let (status, body) = whoami(Some(&alice)).await;
    assert_eq!(
        (status, body["user_id"].as_str()),
        (200, Some(alice.as_str())),
        "{body}"
    );
    let (status, body) = whoami(None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], format!("@_bridge:{name}"));
    // Outside the namespace, or not registered: refused.
    assert_err(
        &whoami(Some(&format!("@carol:{name}"))).await,
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &whoami(Some(&format!("@_bridge_nobody:{name}"))).await,
        403,
        "M_FORBIDDEN",
    );
    // A wrong token is no appservice and no user.
    assert_err(
        &as_request(
            &server,
            reqwest::Method::GET,
            "/_matrix/client/v3/account/whoami",
            "wrong",
            None,
        )
        .await,
        401,
        "M_UNKNOWN_TOKEN",
    );

    // Login as a namespace user, and only those.
    let login = |user: &str| {
        as_request(
            &server,
            reqwest::Method::POST,
            "/_matrix/client/v3/login",
            AS_TOKEN,
            Some(json!({ "type": "m.login.application_service",
                         "identifier": { "type": "m.id.user", "user": user } })),
        )
    };
    let (status, body) = login("_bridge_alice").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], alice.as_str());
    assert_err(&login("carol").await, 400, "M_EXCLUSIVE");

    // Aliases: the exclusive namespace is the appservice's alone.
    let room = server
        .create_room(&carol, json!({ "preset": "public_chat" }))
        .await;
    let alias = format!("#_bridge_chan:{name}");
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/directory/room/{}", enc(&alias)),
            Some(&carol),
            json!({ "room_id": room }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_EXCLUSIVE")),
        "{body}"
    );

    // Masquerading in a room: the event's sender is the namespace user.
    join_as(&server, &room, &alice).await;
    let (status, body) = as_request(
        &server,
        reqwest::Method::PUT,
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/t1?user_id={}",
            enc(&room),
            enc(&alice)
        ),
        AS_TOKEN,
        Some(json!({ "msgtype": "m.text", "body": "from the bridge" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let event_id = body["event_id"].as_str().unwrap().to_owned();
    let (status, event) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(&event_id)
            ),
            Some(&carol),
        )
        .await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["sender"], alice.as_str());
    // The appservice claims the alias for the room, as bridges do.
    let (status, body) = as_request(
        &server,
        reqwest::Method::PUT,
        &format!(
            "/_matrix/client/v3/directory/room/{}?user_id={}",
            enc(&alias),
            enc(&alice)
        ),
        AS_TOKEN,
        Some(json!({ "room_id": room })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Outside its alias namespace: M_EXCLUSIVE for the appservice too.
    let (status, body) = as_request(
        &server,
        reqwest::Method::PUT,
        &format!(
            "/_matrix/client/v3/directory/room/{}?user_id={}",
            enc(&format!("#general:{name}")),
            enc(&alice)
        ),
        AS_TOKEN,
        Some(json!({ "room_id": room })),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_EXCLUSIVE")),
        "{body}"
    );
}

/// What the recording appservice saw.
#[derive(Default)]
struct Seen {
    /// Every attempt: transaction ID, Authorization header, events.
    attempts: Vec<(String, String, Vec<Value>)>,
    /// Transactions processed (the first successful attempt of each ID), in order.
    processed: Vec<(String, Vec<Value>)>,
    /// Ephemeral events of the processed transactions, in order.
    ephemeral: Vec<Value>,
}

#[derive(Clone)]
struct Recorder {
    seen: Arc<Mutex<Seen>>,
    /// Attempts still to fail with a 500.
    fail: Arc<AtomicU32>,
}

async fn record(
    State(r): State<Recorder>,
    UrlPath(txn): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let events = body["events"].as_array().cloned().unwrap_or_default();
    let mut seen = r.seen.lock();
    seen.attempts
        .push((txn.clone(), auth.clone(), events.clone()));
    if auth != format!("Bearer {HS_TOKEN}") {
        return (
            axum::http::StatusCode::FORBIDDEN,
            Json(json!({ "errcode": "M_FORBIDDEN" })),
        );
    }
    if r.fail.load(Ordering::SeqCst) > 0 {
        r.fail.fetch_sub(1, Ordering::SeqCst);
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({})),
        );
    }
    if !seen.processed.iter().any(|(t, _)| *t == txn) {
        seen.processed.push((txn, events));
        let ephemeral = body["ephemeral"].as_array().cloned().unwrap_or_default();
        seen.ephemeral.extend(ephemeral);
    }
    (axum::http::StatusCode::OK, Json(json!({})))
}

/// Starts the recording appservice on `listener`.
fn serve_recorder(listener: std::net::TcpListener, recorder: Recorder) {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let app = Router::new()
        .route("/_matrix/app/v1/transactions/{txn}", put(record))
        .with_state(recorder);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}

fn bodies(seen: &Seen) -> Vec<String> {
    seen.processed
        .iter()
        .flat_map(|(_, events)| events.iter())
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appservice_that_was_down_gets_every_event_once_in_order_across_a_restart() {
    // The appservice's port is reserved but nothing answers yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (mut server, _dir) = start_with_registration(&registration(Some(&url))).await;
    let name = server.name();
    assert_eq!(register_as(&server, "_bridge_watch").await.0, 200);
    let (_, alice, _) = server.register("alice", "a long password").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let watcher = format!("@_bridge_watch:{name}");
    join_as(&server, &room, &watcher).await;
    for i in 0..100 {
        server.say(&alice, &room, &format!("m{i}")).await;
    }
    // Delivery is durable: a restart in between loses nothing.
    let queued = server.services().appservice.queue_states().unwrap();
    assert!(queued[0].queued >= 100, "{queued:?}");
    server.restart().await;
    server.say(&alice, &room, "m100").await;

    // The appservice comes up, failing its first two attempts.
    let recorder = Recorder {
        seen: Arc::default(),
        fail: Arc::new(AtomicU32::new(2)),
    };
    serve_recorder(
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap(),
        recorder.clone(),
    );
    let expected: Vec<String> = (0..=100).map(|i| format!("m{i}")).collect();
    eventually(60, "every event delivered", || {
        let seen = recorder.seen.clone();
        let expected = expected.clone();
        async move { (bodies(&seen.lock()) == expected).then_some(()) }
    })
    .await;
    {
        let seen = recorder.seen.lock();
        // Each message exactly once, in order (checked above), every attempt with the hs_token, and
        // a retried transaction carried exactly what its first attempt did.
        // `unsigned.age` is relative to the moment of sending; everything else is the same.
        let without_age = |events: &Vec<Value>| {
            let mut events = events.clone();
            for e in &mut events {
                if let Some(u) = e.get_mut("unsigned").and_then(Value::as_object_mut) {
                    u.remove("age");
                }
            }
            events
        };
        let mut by_id: HashMap<&str, Vec<Value>> = HashMap::new();
        for (txn, auth, events) in &seen.attempts {
            assert_eq!(auth, &format!("Bearer {HS_TOKEN}"));
            let events = without_age(events);
            if let Some(first) = by_id.insert(txn, events.clone()) {
                assert_eq!(first, events, "transaction {txn} changed between attempts");
            }
        }
        assert!(
            seen.attempts.len() > seen.processed.len(),
            "no attempt was retried"
        );
    }
    eventually(10, "the queue drained", || {
        let services = server.services().clone();
        async move {
            let q = services.appservice.queue_states().unwrap();
            (q[0].queued == 0).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_receipts_and_presence_reach_an_appservice_that_receives_ephemeral_events() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let recorder = Recorder {
        seen: Arc::default(),
        fail: Arc::new(AtomicU32::new(0)),
    };
    serve_recorder(listener, recorder.clone());
    let yaml = registration(Some(&url)).replace(
        "rate_limited: false",
        "rate_limited: false\nreceive_ephemeral: true",
    );
    let (server, _dir) = start_with_registration(&yaml).await;
    let name = server.name();
    assert_eq!(register_as(&server, "_bridge_watch").await.0, 200);
    let (alice_id, alice, _) = server.register("alice", "a long password").await;
    let watched = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    join_as(&server, &watched, &format!("@_bridge_watch:{name}")).await;
    // A room without any of the appservice's users: nothing of it is sent.
    let unwatched = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let event = server.say(&alice, &watched, "read me").await;
    let other = server.say(&alice, &unwatched, "not for the bridge").await;
    for room in [&unwatched, &watched] {
        let (status, body) = server
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/typing/{}", enc(&alice_id)),
                Some(&alice),
                json!({ "typing": true, "timeout": 30000 }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for (room, ev, kind) in [
        (&unwatched, &other, "m.read"),
        (&watched, &event, "m.read.private"),
        (&watched, &event, "m.read"),
    ] {
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/receipt/{kind}/{}", enc(ev)),
                Some(&alice),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice_id)),
            Some(&alice),
            json!({ "presence": "unavailable", "status_msg": "in a meeting" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let ephemeral = eventually(30, "typing, the public receipt and presence", || {
        let seen = recorder.seen.clone();
        async move {
            let seen = seen.lock();
            let has = |t: &str| seen.ephemeral.iter().any(|e| e["type"] == t);
            (has("m.typing") && has("m.receipt") && has("m.presence"))
                .then(|| seen.ephemeral.clone())
        }
    })
    .await;
    let typing: Vec<&Value> = ephemeral
        .iter()
        .filter(|e| e["type"] == "m.typing")
        .collect();
    assert!(
        typing
            .iter()
            .all(|e| e["room_id"] == watched.as_str()
                && e["content"]["user_ids"] == json!([alice_id])),
        "typing of the watched room only, with its room ID: {typing:#?}"
    );
    let receipts: Vec<&Value> = ephemeral
        .iter()
        .filter(|e| e["type"] == "m.receipt")
        .collect();
    assert_eq!(
        receipts.len(),
        1,
        "only the public receipt in the watched room: {receipts:#?}"
    );
    assert_eq!(receipts[0]["room_id"], watched.as_str());
    assert!(
        receipts[0]["content"][event.as_str()]["m.read"][alice_id.as_str()]["ts"].is_u64(),
        "{receipts:#?}"
    );
    let presence = ephemeral
        .iter()
        .find(|e| e["type"] == "m.presence")
        .unwrap();
    assert_eq!(presence["sender"], alice_id.as_str());
    assert_eq!(presence["content"]["presence"], "unavailable");
    assert_eq!(presence["content"]["status_msg"], "in a meeting");
    // The events themselves came too, and nothing of the other room did.
    let seen = recorder.seen.lock();
    assert!(bodies(&seen).contains(&"read me".to_owned()));
    assert!(!bodies(&seen).contains(&"not for the bridge".to_owned()));
}

/// An appservice that answers the homeserver's queries: users and aliases of its namespace that
/// it knows (`_bridge_known_*`, `#_bridge_chan_*`) it creates through the homeserver before it
/// says yes; the rest it does not know. It bridges one protocol, "irc", with one network.
#[derive(Clone)]
struct Answering {
    /// The homeserver's URL and server name.
    hs: Arc<std::sync::OnceLock<(String, String)>>,
    /// Every request: method and path with query, and whether it carried the hs_token.
    asked: Arc<Mutex<Vec<(String, bool)>>>,
}

async fn answer(
    State(a): State<Answering>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> (axum::http::StatusCode, Json<Value>) {
    use axum::http::StatusCode;
    let authorised = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {HS_TOKEN}"));
    let path = uri.path().to_owned();
    let full = uri.to_string();
    a.asked
        .lock()
        .push((format!("{method} {full}"), authorised));
    if !authorised {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({ "errcode": "M_FORBIDDEN" })),
        );
    }
    let (hs, server) = a.hs.get().cloned().unwrap_or_default();
    let http = reqwest::Client::new();
    let not_found = (
        StatusCode::NOT_FOUND,
        Json(json!({ "errcode": "M_NOT_FOUND" })),
    );
    let decoded = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    if let Some(user) = path.strip_prefix("/_matrix/app/v1/users/") {
        let user = decoded(user);
        let Some(name) = user
            .strip_prefix('@')
            .and_then(|u| u.split(':').next())
            .filter(|n| n.starts_with("_bridge_known_"))
        else {
            return not_found;
        };
        let resp = http
            .post(format!("{hs}/_matrix/client/v3/register"))
            .bearer_auth(AS_TOKEN)
            .json(&json!({ "type": "m.login.application_service", "username": name, "inhibit_login": true }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
        return (StatusCode::OK, Json(json!({})));
    }
    if let Some(alias) = path.strip_prefix("/_matrix/app/v1/rooms/") {
        let alias = decoded(alias);
        let Some(local) = alias
            .strip_prefix('#')
            .and_then(|a| a.split(':').next())
            .filter(|n| n.starts_with("_bridge_chan_"))
        else {
            return not_found;
        };
        let resp = http
            .post(format!("{hs}/_matrix/client/v3/createRoom"))
            .bearer_auth(AS_TOKEN)
            .json(&json!({ "room_alias_name": local, "preset": "public_chat", "name": local }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
        return (StatusCode::OK, Json(json!({})));
    }
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    match path.as_str() {
        "/_matrix/app/v1/thirdparty/protocol/irc" => (
            StatusCode::OK,
            Json(json!({
                "user_fields": ["network", "nickname"],
                "location_fields": ["network", "channel"],
                "icon": "mxc://example.org/irc",
                "field_types": {
                    "network": { "regexp": "[a-z]+", "placeholder": "libera" },
                    "nickname": { "regexp": "[^\\s]+", "placeholder": "nick" },
                    "channel": { "regexp": "#[^\\s]+", "placeholder": "#chan" },
                },
                "instances": [{
                    "desc": "Libera Chat",
                    "network_id": "libera",
                    "fields": { "network": "libera" },
                }],
            })),
        ),
        "/_matrix/app/v1/thirdparty/location/irc" => (
            StatusCode::OK,
            Json(json!([{
                "alias": format!("#_bridge_chan_{}:{server}", query.get("channel").cloned().unwrap_or_default()),
                "protocol": "irc",
                "fields": { "network": "libera", "channel": query.get("channel") },
            }])),
        ),
        "/_matrix/app/v1/thirdparty/user/irc" => (
            StatusCode::OK,
            Json(json!([{
                "userid": format!("@_bridge_{}:{server}", query.get("nickname").cloned().unwrap_or_default()),
                "protocol": "irc",
                "fields": { "network": "libera", "nickname": query.get("nickname") },
            }])),
        ),
        "/_matrix/app/v1/thirdparty/location" => (
            StatusCode::OK,
            Json(json!([{
                "alias": query.get("alias"),
                "protocol": "irc",
                "fields": { "network": "libera", "channel": "#rust" },
            }])),
        ),
        "/_matrix/app/v1/thirdparty/user" => (
            StatusCode::OK,
            Json(json!([{
                "userid": query.get("userid"),
                "protocol": "irc",
                "fields": { "network": "libera", "nickname": "bob" },
            }])),
        ),
        _ => not_found,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_aliases_protocols_and_network_directories_are_asked_of_the_appservice() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answering = Answering {
        hs: Arc::default(),
        asked: Arc::default(),
    };
    let app = Router::new().fallback(answer).with_state(answering.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let yaml = registration(Some(&url)).replace(
        "rate_limited: false",
        "rate_limited: false\nprotocols: [\"irc\"]",
    );
    let (server, _dir) = start_with_registration(&yaml).await;
    answering.hs.set((server.url(), server.name())).unwrap();
    let name = server.name();
    let (_, alice, _) = server.register("alice", "a long password").await;

    // A user of the namespace that the appservice knows: created on first sight.
    let carol = format!("@_bridge_known_carol:{name}");
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/profile/{}", enc(&carol)),
            Some(&alice),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(server
        .services()
        .users
        .exists(&ruma::UserId::parse(carol.as_str()).unwrap())
        .unwrap());
    // One it does not know, and one outside every namespace: not found, and the latter is not
    // asked about.
    for user in [format!("@_bridge_nobody:{name}"), format!("@nobody:{name}")] {
        let resp = server
            .get(
                &format!("/_matrix/client/v3/profile/{}", enc(&user)),
                Some(&alice),
            )
            .await;
        assert_err(&resp, 404, "M_NOT_FOUND");
    }
    // Inviting a known bridged user creates it too.
    let room = server
        .create_room(&alice, json!({ "preset": "private_chat" }))
        .await;
    let dave = format!("@_bridge_known_dave:{name}");
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&alice),
            json!({ "user_id": dave }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // An alias of the namespace that the appservice knows: it makes the room, alice joins it.
    let alias = format!("#_bridge_chan_rust:{name}");
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/directory/room/{}", enc(&alias)),
            Some(&alice),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let channel = body["room_id"].as_str().unwrap().to_owned();
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&alias)),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], channel.as_str());
    let resp = server
        .get(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                enc(&format!("#_bridge_none:{name}"))
            ),
            Some(&alice),
        )
        .await;
    assert_err(&resp, 404, "M_NOT_FOUND");
    {
        let asked = answering.asked.lock();
        assert!(asked.iter().all(|(_, authorised)| *authorised), "{asked:?}");
        assert!(
            !asked.iter().any(|(r, _)| r.contains("%40nobody")),
            "{asked:?}"
        );
    }

    // Protocols, with the instance ID the directory takes; look-ups passed through.
    let (status, protocols) = server
        .get("/_matrix/client/v3/thirdparty/protocols", Some(&alice))
        .await;
    assert_eq!(status, 200, "{protocols}");
    assert_eq!(
        protocols["irc"]["instances"][0]["instance_id"], "test-bridge|libera",
        "{protocols}"
    );
    assert_eq!(
        protocols["irc"]["user_fields"],
        json!(["network", "nickname"])
    );
    let (status, irc) = server
        .get("/_matrix/client/v3/thirdparty/protocol/irc", Some(&alice))
        .await;
    assert_eq!(status, 200, "{irc}");
    assert_eq!(irc["instances"][0]["network_id"], "libera");
    let resp = server
        .get("/_matrix/client/v3/thirdparty/protocol/xmpp", Some(&alice))
        .await;
    assert_err(&resp, 404, "M_NOT_FOUND");
    let (status, locations) = server
        .get(
            "/_matrix/client/v3/thirdparty/location/irc?channel=rust",
            Some(&alice),
        )
        .await;
    assert_eq!(status, 200, "{locations}");
    assert_eq!(locations[0]["alias"], alias.as_str(), "{locations}");
    let (status, users) = server
        .get(
            "/_matrix/client/v3/thirdparty/user/irc?nickname=bob",
            Some(&alice),
        )
        .await;
    assert_eq!(status, 200, "{users}");
    assert_eq!(
        users[0]["userid"],
        format!("@_bridge_bob:{name}"),
        "{users}"
    );
    let (status, by_alias) = server
        .get(
            &format!(
                "/_matrix/client/v3/thirdparty/location?alias={}",
                enc(&alias)
            ),
            Some(&alice),
        )
        .await;
    assert_eq!(status, 200, "{by_alias}");
    assert_eq!(by_alias[0]["fields"]["channel"], "#rust");
    let (status, by_id) = server
        .get(
            &format!("/_matrix/client/v3/thirdparty/user?userid={}", enc(&carol)),
            Some(&alice),
        )
        .await;
    assert_eq!(status, 200, "{by_id}");
    assert_eq!(by_id[0]["userid"], carol.as_str());

    // The network's own directory: the appservice lists the channel there, not in Matrix's.
    let path = format!(
        "/_matrix/client/v3/directory/list/appservice/libera/{}",
        enc(&channel)
    );
    let resp = server
        .put(&path, Some(&alice), json!({ "visibility": "public" }))
        .await;
    assert_err(&resp, 401, "M_UNKNOWN_TOKEN");
    let (status, body) = as_request(
        &server,
        reqwest::Method::PUT,
        &path,
        AS_TOKEN,
        Some(json!({ "visibility": "public" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let listed = |body: &Value| -> Vec<String> {
        body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["room_id"].as_str().map(str::to_owned))
            .collect()
    };
    let (_, network) = server
        .post(
            "/_matrix/client/v3/publicRooms",
            Some(&alice),
            json!({ "third_party_instance_id": "test-bridge|libera" }),
        )
        .await;
    assert_eq!(listed(&network), vec![channel.clone()], "{network}");
    let (_, matrix) = server
        .post("/_matrix/client/v3/publicRooms", Some(&alice), json!({}))
        .await;
    assert!(!listed(&matrix).contains(&channel), "{matrix}");
    let (_, all) = server
        .post(
            "/_matrix/client/v3/publicRooms",
            Some(&alice),
            json!({ "include_all_networks": true }),
        )
        .await;
    assert!(listed(&all).contains(&channel), "{all}");
    let (status, _) = as_request(
        &server,
        reqwest::Method::PUT,
        &path,
        AS_TOKEN,
        Some(json!({ "visibility": "private" })),
    )
    .await;
    assert_eq!(status, 200);
    let (_, network) = server
        .post(
            "/_matrix/client/v3/publicRooms",
            Some(&alice),
            json!({ "third_party_instance_id": "test-bridge|libera" }),
        )
        .await;
    assert!(listed(&network).is_empty(), "{network}");
}

/// The bot's script, next to the tests.
fn bot_script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mautrix_bot.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mautrix_bot_joins_when_invited_answers_and_speaks_as_its_users() {
    let venv = crate::peers::python_env();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let yaml = registration(Some(&url))
        .replace("test-bridge", "mautrix-bot")
        .replace("\"_bridge\"", "\"_mbot\"")
        .replace("@_bridge_.*", "@_mbot_.*")
        .replace("#_bridge_.*", "#_mbot_.*");
    let (server, _dir) = start_with_registration(&yaml).await;
    let name = server.name();
    let mut bot = tokio::process::Command::new(venv.join("bin/python"))
        .arg(bot_script())
        .args([&server.url(), &name, &port.to_string(), AS_TOKEN, HS_TOKEN])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the bot starts");
    let stdout = bot.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.trim() == "ready" {
                return;
            }
        }
        panic!("the bot exited before it was ready");
    })
    .await
    .expect("the bot is ready within 60 s");

    let (_, alice, _) = server.register("alice", "a long password").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let bot_id = format!("@_mbot:{name}");
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&alice),
            json!({ "user_id": bot_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let joined = |user: String| {
        let server = &server;
        let alice = alice.clone();
        let room = room.clone();
        async move {
            let (_, members) = server
                .get(
                    &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)),
                    Some(&alice),
                )
                .await;
            members["joined"].get(&user).is_some().then_some(())
        }
    };
    eventually(30, "the bot joined on its invite", || {
        joined(bot_id.clone())
    })
    .await;

    server.say(&alice, &room, "ping").await;
    server.say(&alice, &room, "echo hello from a puppet").await;
    let puppet = format!("@_mbot_echo:{name}");
    let messages = eventually(30, "the bot answered and its puppet spoke", || {
        let server = &server;
        let alice = alice.clone();
        let room = room.clone();
        let (bot_id, puppet) = (bot_id.clone(), puppet.clone());
        async move {
            let (_, page) = server
                .get(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                        enc(&room)
                    ),
                    Some(&alice),
                )
                .await;
            let said = |who: &str, what: &str| {
                page["chunk"].as_array().into_iter().flatten().any(|e| {
                    e["type"] == "m.room.message"
                        && e["sender"] == who
                        && e["content"]["body"] == what
                })
            };
            (said(&bot_id, "pong") && said(&puppet, "hello from a puppet")).then_some(page)
        }
    })
    .await;
    assert!(messages["chunk"].is_array());
}
