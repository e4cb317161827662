//! Media across servers: bob on B asks for alice's media on A; B fetches it from A over the
//! authenticated federation media endpoints once, then serves it from its cache. A counts the
//! federation media requests it serves, so the tests see A's side of each fetch. An older peer,
//! scripted here, exercises the fallback to the deprecated endpoints and `Location` answers.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hearth::config::{ByteSize, MaxAge};
use hearth_federation::xmatrix;
use rand::RngCore;
use reqwest::header;
use ruma::api::{
    federation::authenticated_media::{get_content, FileOrLocation},
    IncomingResponse,
};
use serde_json::Value;

use crate::{
    common::{assert_err, TestServer, TEST_PASSWORD},
    media_sdk::png,
};

fn name(server: &TestServer) -> String {
    server.config.server_name.to_string()
}

fn served(server: &TestServer) -> u64 {
    server.services().media.federation_served()
}

async fn upload(
    server: &TestServer,
    token: &str,
    content_type: &str,
    filename: &str,
    body: Vec<u8>,
) -> String {
    let resp = server
        .http
        .post(format!(
            "{}/_matrix/media/v3/upload?filename={filename}",
            server.url()
        ))
        .bearer_auth(token)
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let uri = body["content_uri"].as_str().unwrap();
    uri.rsplit('/').next().unwrap().to_owned()
}

async fn get(server: &TestServer, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = server.http.get(format!("{}{path}", server.url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn status_and_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    data
}

fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                // New files are written under tmp/ first; none may be left there either.
                files_under(&path)
            } else {
                1
            }
        })
        .sum()
}

fn media_files(server: &TestServer) -> usize {
    files_under(&server.config.media.folder(&server.config.database))
}

/// Two federating servers with alice on A and bob on B; (A, B, alice's token, bob's token).
async fn two_servers() -> (TestServer, TestServer, String, String) {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let (_, alice, _) = a.register("alice", TEST_PASSWORD).await;
    let (_, bob, _) = b.register("bob", TEST_PASSWORD).await;
    (a, b, alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_media_is_fetched_from_its_origin_once_then_served_from_the_cache() {
    let (a, b, alice, bob) = two_servers().await;
    let data = random_bytes(300_000);
    let id = upload(&a, &alice, "application/pdf", "report.pdf", data.clone()).await;
    let path = format!("/_matrix/client/v1/media/download/{}/{id}", name(&a));
    assert_eq!(served(&a), 0);

    for round in 0..2 {
        let resp = get(&b, &path, Some(&bob)).await;
        assert_eq!(resp.status(), 200, "round {round}");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/pdf");
        assert_eq!(
            resp.headers()[header::CONTENT_DISPOSITION],
            "attachment; filename=\"report.pdf\""
        );
        assert_eq!(resp.bytes().await.unwrap(), data, "round {round}");
        // The second download is B's cached copy: A served one request in all.
        assert_eq!(served(&a), 1, "round {round}");
    }

    // B's cache answers range requests like local media.
    let resp = b
        .http
        .get(format!("{}{path}", b.url()))
        .bearer_auth(&bob)
        .header(header::RANGE, "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap(), data[10..20]);
    assert_eq!(served(&a), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_remote_media_expires_under_remote_max_age_and_is_fetched_again() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating_with(|c| {
        c.media.retention.remote_max_age = MaxAge(Some(Duration::from_secs(2)));
    })
    .await;
    let (_, alice, _) = a.register("alice", TEST_PASSWORD).await;
    let (_, bob, _) = b.register("bob", TEST_PASSWORD).await;
    let id = upload(&a, &alice, "image/png", "cat.png", png(200, 100)).await;
    let download = format!("/_matrix/client/v1/media/download/{}/{id}", name(&a));
    let thumb = format!(
        "/_matrix/client/v1/media/thumbnail/{}/{id}?width=16&height=16",
        name(&a)
    );
    assert_eq!(get(&b, &thumb, Some(&bob)).await.status(), 200);
    assert_eq!(get(&b, &download, Some(&bob)).await.status(), 200);
    assert_eq!(served(&a), 2);
    assert_eq!(media_files(&b), 2, "the thumbnail and the original");

    // The retention job is observed, not timed: B's cache empties, and its files go with it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while media_files(&b) > 0 {
        assert!(
            Instant::now() < deadline,
            "the cached media was never purged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&b, &download, Some(&bob)).await.status(), 200);
    assert_eq!(served(&a), 3, "fetched again after expiring");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_remote_media_share_one_download() {
    let (a, b, alice, bob) = two_servers().await;
    let data = random_bytes(4 << 20);
    let id = upload(&a, &alice, "application/octet-stream", "blob", data.clone()).await;
    let path = format!("/_matrix/client/v1/media/download/{}/{id}", name(&a));
    let requests = (0..8).map(|_| async {
        let resp = get(&b, &path, Some(&bob)).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap()
    });
    for body in futures_util::future::join_all(requests).await {
        assert_eq!(body, data);
    }
    assert_eq!(served(&a), 1, "eight requests at B, one download from A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_thumbnails_come_from_the_origin_and_are_cached() {
    let (a, b, alice, bob) = two_servers().await;
    let id = upload(&a, &alice, "image/png", "cat.png", png(640, 480)).await;
    let thumb = |w: u32, h: u32| {
        format!(
            "/_matrix/client/v1/media/thumbnail/{}/{id}?width={w}&height={h}&method=crop",
            name(&a)
        )
    };

    for round in 0..2 {
        let resp = get(&b, &thumb(64, 64), Some(&bob)).await;
        assert_eq!(resp.status(), 200, "round {round}");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "image/png");
        let img = image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
        assert_eq!(
            served(&a),
            1,
            "round {round}: the thumbnail came from A once"
        );
    }

    // Once the original is cached at B, B makes other sizes itself.
    let resp = get(
        &b,
        &format!("/_matrix/client/v1/media/download/{}/{id}", name(&a)),
        Some(&bob),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(served(&a), 2);
    let resp = get(&b, &thumb(32, 32), Some(&bob)).await;
    assert_eq!(resp.status(), 200);
    let img = image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));
    assert_eq!(served(&a), 2, "made at B from the cached original");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_media_over_the_upload_limit_is_502_too_large_and_not_kept() {
    let a = TestServer::start_federating().await;
    let b =
        TestServer::start_federating_with(|c| c.media.max_upload_size = ByteSize(1 << 20)).await;
    let (_, alice, _) = a.register("alice", TEST_PASSWORD).await;
    let (_, bob, _) = b.register("bob", TEST_PASSWORD).await;
    let id = upload(&a, &alice, "text/plain", "big.txt", vec![b'x'; 2 << 20]).await;
    let resp = get(
        &b,
        &format!("/_matrix/client/v1/media/download/{}/{id}", name(&a)),
        Some(&bob),
    )
    .await;
    assert_err(&status_and_json(resp).await, 502, "M_TOO_LARGE");
    assert_eq!(media_files(&b), 0, "nothing of it is stored at B");

    // A file within B's limit still comes through.
    let id = upload(&a, &alice, "text/plain", "small.txt", vec![b'y'; 1000]).await;
    let resp = get(
        &b,
        &format!("/_matrix/client/v1/media/download/{}/{id}", name(&a)),
        Some(&bob),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_remote_media_is_404_and_allow_remote_false_is_not_fetched() {
    let (a, b, alice, bob) = two_servers().await;
    let resp = get(
        &b,
        &format!(
            "/_matrix/client/v1/media/download/{}/doesNotExist",
            name(&a)
        ),
        Some(&bob),
    )
    .await;
    assert_err(&status_and_json(resp).await, 404, "M_NOT_FOUND");

    let id = upload(&a, &alice, "text/plain", "note.txt", b"hello".to_vec()).await;
    let legacy = format!("/_matrix/media/v3/download/{}/{id}", name(&a));
    let resp = get(&b, &format!("{legacy}?allow_remote=false"), None).await;
    assert_err(&status_and_json(resp).await, 404, "M_NOT_FOUND");
    let resp = get(
        &b,
        &format!(
            "/_matrix/media/v3/thumbnail/{}/{id}?width=8&height=8&allow_remote=false",
            name(&a)
        ),
        None,
    )
    .await;
    assert_err(&status_and_json(resp).await, 404, "M_NOT_FOUND");
    assert_eq!(served(&a), 0, "nothing was fetched from A");

    // Without it, the deprecated endpoint fetches as the authenticated one does.
    let resp = get(&b, &legacy, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), "hello");
    // Local media is served whatever allow_remote says.
    let resp = get(&a, &format!("{legacy}?allow_remote=false"), None).await;
    assert_eq!(resp.status(), 200);
}

fn insecure() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

/// A GET to A's federation API signed by B.
async fn signed_get(a: &TestServer, b: &TestServer, path: &str) -> http::Response<bytes::Bytes> {
    let request = http::Request::builder()
        .method("GET")
        .uri(path)
        .body(Vec::<u8>::new())
        .unwrap();
    let auth = xmatrix::sign_request(
        &b.services().signing_key,
        &b.config.server_name,
        &a.config.server_name,
        &request,
    )
    .unwrap();
    let resp = insecure()
        .get(format!("{}{path}", a.federation_url()))
        .header(header::AUTHORIZATION, auth)
        .send()
        .await
        .unwrap();
    let mut out = http::Response::builder().status(resp.status());
    for (k, v) in resp.headers() {
        out = out.header(k, v);
    }
    out.body(resp.bytes().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_media_endpoints_answer_signed_requests_with_multipart() {
    let (a, b, alice, _) = two_servers().await;
    let data = random_bytes(50_000);
    let id = upload(&a, &alice, "text/plain", "notes.txt", data.clone()).await;
    let path = format!("/_matrix/federation/v1/media/download/{id}");

    // ruma's client-side parser reads what we serve.
    let resp = signed_get(&a, &b, &path).await;
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(
        content_type.starts_with("multipart/mixed; boundary="),
        "{content_type}"
    );
    let parsed = get_content::v1::Response::try_from_http_response(resp).unwrap();
    let FileOrLocation::File(file) = parsed.content else {
        panic!("expected the file itself");
    };
    assert_eq!(file.file, data);
    assert_eq!(file.content_type.as_deref(), Some("text/plain"));
    let disposition = file.content_disposition.unwrap();
    assert_eq!(disposition.filename.as_deref(), Some("notes.txt"));

    let resp = signed_get(
        &a,
        &b,
        "/_matrix/federation/v1/media/thumbnail/doesNotExist?width=10&height=10",
    )
    .await;
    assert_eq!(resp.status(), 404);
    let resp = signed_get(&a, &b, "/_matrix/federation/v1/media/download/doesNotExist").await;
    assert_eq!(resp.status(), 404);

    // Without a signature: refused.
    let resp = insecure()
        .get(format!("{}{path}", a.federation_url()))
        .send()
        .await
        .unwrap();
    assert_err(&status_and_json(resp).await, 401, "M_UNAUTHORIZED");
    assert_eq!(served(&a), 1);
}

/// What the scripted older peer saw.
#[derive(Default)]
struct PeerLog {
    federation: AtomicUsize,
    signed: AtomicUsize,
    legacy: AtomicUsize,
    location: AtomicUsize,
}

/// A peer on loopback TLS that predates authenticated media for `old` (404 M_UNRECOGNIZED on the
/// federation endpoint, the file on the deprecated one) and answers `moved` with a `Location` on
/// a plain HTTP listener of its own.
async fn scripted_peer() -> (String, Arc<PeerLog>, tokio::sync::watch::Sender<bool>) {
    use axum::{
        extract::{Path, Query, State},
        response::IntoResponse,
        routing::get,
        Router,
    };
    use std::collections::HashMap;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_name = format!("127.0.0.1:{}", addr.port());
    let log = Arc::new(PeerLog::default());

    async fn federation(
        State((log, base)): State<(Arc<PeerLog>, String)>,
        Path(id): Path<String>,
        headers: http::HeaderMap,
    ) -> axum::response::Response {
        log.federation.fetch_add(1, Ordering::SeqCst);
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("X-Matrix "))
        {
            log.signed.fetch_add(1, Ordering::SeqCst);
        }
        if id == "moved" {
            let body = format!(
                "--b0undary\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--b0undary\r\n\
                 Location: {base}/files/moved\r\n\r\n\r\n--b0undary--\r\n"
            );
            return (
                [(header::CONTENT_TYPE, "multipart/mixed; boundary=b0undary")],
                body,
            )
                .into_response();
        }
        (
            http::StatusCode::NOT_FOUND,
            axum::Json(
                serde_json::json!({ "errcode": "M_UNRECOGNIZED", "error": "Unrecognized request" }),
            ),
        )
            .into_response()
    }
    async fn legacy(
        State((log, _)): State<(Arc<PeerLog>, String)>,
        Path((_, id)): Path<(String, String)>,
        Query(q): Query<HashMap<String, String>>,
    ) -> axum::response::Response {
        log.legacy.fetch_add(1, Ordering::SeqCst);
        assert_eq!(q.get("allow_remote").map(String::as_str), Some("false"));
        assert_eq!(id, "old");
        (
            [
                (header::CONTENT_TYPE, "text/plain"),
                (header::CONTENT_DISPOSITION, "inline; filename=\"old.txt\""),
            ],
            "old bytes",
        )
            .into_response()
    }
    async fn moved(State((log, _)): State<(Arc<PeerLog>, String)>) -> axum::response::Response {
        log.location.fetch_add(1, Ordering::SeqCst);
        (
            [
                (header::CONTENT_TYPE, "text/plain"),
                (
                    header::CONTENT_DISPOSITION,
                    "inline; filename=\"moved.txt\"",
                ),
            ],
            "moved bytes",
        )
            .into_response()
    }

    let files = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let files_url = format!("http://{}", files.local_addr().unwrap());
    let state = (log.clone(), files_url);
    let files_router = Router::new()
        .route("/files/moved", get(moved))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(files, files_router).await });
    let router = Router::new()
        .route(
            "/_matrix/federation/v1/media/download/{id}",
            get(federation),
        )
        .route("/_matrix/media/v3/download/{server}/{id}", get(legacy))
        .with_state(state);
    let config = hearth::config::Config {
        server_name: server_name.clone().try_into().unwrap(),
        ..Default::default()
    };
    let tls = hearth::federation_listener::tls_config(&config).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(hearth::federation_listener::serve(
        listener, tls, router, stopped,
    ));
    (server_name, log, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_peers_are_asked_on_the_deprecated_path_and_locations_are_followed() {
    let (peer, log, _stop) = scripted_peer().await;
    let b = TestServer::start_federating().await;
    let (_, bob, _) = b.register("bob", TEST_PASSWORD).await;

    let path = format!("/_matrix/client/v1/media/download/{peer}/old");
    let resp = get(&b, &path, Some(&bob)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/plain");
    assert_eq!(
        resp.headers()[header::CONTENT_DISPOSITION],
        "inline; filename=\"old.txt\""
    );
    assert_eq!(resp.bytes().await.unwrap(), "old bytes");
    assert_eq!(log.federation.load(Ordering::SeqCst), 1);
    assert_eq!(log.signed.load(Ordering::SeqCst), 1, "signed with X-Matrix");
    assert_eq!(log.legacy.load(Ordering::SeqCst), 1);

    // A Location is the peer's choice of URL: loopback is refused like a URL preview of it...
    let moved = format!("/_matrix/client/v1/media/download/{peer}/moved");
    let resp = get(&b, &moved, Some(&bob)).await;
    assert_err(&status_and_json(resp).await, 502, "M_UNKNOWN");
    assert_eq!(log.location.load(Ordering::SeqCst), 0, "never fetched");

    // ...unless allowed.
    let b = TestServer::start_federating_with(|c| {
        c.media.url_preview.allow = vec!["127.0.0.1/32".into()];
    })
    .await;
    let (_, bob, _) = b.register("bob", TEST_PASSWORD).await;
    let resp = get(&b, &moved, Some(&bob)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()[header::CONTENT_DISPOSITION],
        "inline; filename=\"moved.txt\""
    );
    assert_eq!(resp.bytes().await.unwrap(), "moved bytes");
    assert_eq!(log.location.load(Ordering::SeqCst), 1);

    // Cached now: the peer is not asked again.
    let resp = get(&b, &moved, Some(&bob)).await;
    assert_eq!(resp.bytes().await.unwrap(), "moved bytes");
    assert_eq!(log.federation.load(Ordering::SeqCst), 3);
    assert_eq!(log.location.load(Ordering::SeqCst), 1);
}
