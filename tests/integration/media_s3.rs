//! The S3 media backend against moto, a local S3-compatible server on loopback, run from the
//! Python environment the tests provision (`peers`, `SYNAPSE_VENV`, default
//! `~/.cache/hearth-venv`). Without moto these tests fail: they are the only check of the backend.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hearth::{
    config::{Config, MediaBackend},
    server::Server,
};
use reqwest::header;
use serde_json::Value;

use crate::{
    common::{test_config, TestServer, TEST_PASSWORD},
    media_sdk::png,
};

const BUCKET: &str = "hearth-media";

/// A moto server on a free loopback port, stopped when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server() -> PathBuf {
    crate::peers::python_env().join("bin/moto_server")
}

async fn start_moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server starts");
    let moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(&moto.url).send().await.is_err() {
        assert!(Instant::now() < deadline, "moto_server did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // moto takes unsigned requests: enough to make the bucket.
    let resp = http
        .put(format!("{}/{BUCKET}", moto.url))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "bucket: {}", resp.status());
    moto
}

/// The keys in the bucket.
async fn objects(moto: &Moto) -> Vec<String> {
    let body = reqwest::get(format!("{}/{BUCKET}?list-type=2", moto.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(str::to_owned)
        .collect()
}

fn use_s3(c: &mut Config, moto: &Moto, bucket: &str) {
    c.media.backend = MediaBackend::S3;
    c.media.s3.bucket = bucket.to_owned();
    c.media.s3.endpoint = moto.url.clone();
    c.media.s3.access_key_id = "testing".into();
    c.media.s3.secret_access_key = "testing".into();
    c.media.s3.prefix = "media".into();
}

async fn upload(server: &TestServer, token: &str, content_type: &str, body: Vec<u8>) -> String {
    let resp = server
        .http
        .post(format!("{}/_matrix/media/v3/upload", server.url()))
        .bearer_auth(token)
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["content_uri"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned()
}

async fn get(server: &TestServer, path: &str, token: &str) -> reqwest::Response {
    server
        .http
        .get(format!("{}{path}", server.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_is_stored_in_and_served_from_the_bucket() {
    let moto = start_moto().await;
    let mut server = TestServer::start_with(|c| use_s3(c, &moto, BUCKET)).await;
    let (_, token, _) = server.register("alice", TEST_PASSWORD).await;
    let name = server.config.server_name.to_string();
    let image = png(300, 200);
    let id = upload(&server, &token, "image/png", image.clone()).await;
    let copy = upload(&server, &token, "image/png", image.clone()).await;
    let empty = upload(&server, &token, "text/plain", Vec::new()).await;
    let download = |id: &str| format!("/_matrix/client/v1/media/download/{name}/{id}");

    let resp = get(&server, &download(&id), &token).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), image);
    let resp = server
        .http
        .get(format!("{}{}", server.url(), download(&copy)))
        .bearer_auth(&token)
        .header(header::RANGE, "bytes=1-3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap(), image[1..4]);
    let resp = get(&server, &download(&empty), &token).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().is_empty());
    // An empty file has no first bytes to recognise: not an image, not a failure of the store.
    let resp = get(
        &server,
        &format!("/_matrix/client/v1/media/thumbnail/{name}/{empty}?width=8&height=8"),
        &token,
    )
    .await;
    assert_eq!(resp.status(), 400);

    let resp = get(
        &server,
        &format!("/_matrix/client/v1/media/thumbnail/{name}/{id}?width=32&height=32&method=crop"),
        &token,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let thumb = image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (32, 32));

    // The image once (two uploads of it), its thumbnail and the empty file, under the prefix;
    // nothing in the local folder.
    let keys = objects(&moto).await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("media/")), "{keys:?}");
    let folder = server.config.media.folder(&server.config.database);
    assert!(!folder.exists(), "{} was made", folder.display());

    server.restart().await;
    let resp = get(&server, &download(&id), &token).await;
    assert_eq!(resp.bytes().await.unwrap(), image, "after a restart");

    // Deleting the media deletes the objects.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let (status, body) = server
        .post(
            &format!("/_synapse/admin/v1/media/delete?before_ts={}", now + 1000),
            Some(&server.console_secret()),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 3);
    assert_eq!(objects(&moto).await, Vec::<String>::new());
    assert_eq!(get(&server, &download(&id), &token).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_stops_the_start() {
    let moto = start_moto().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().join("data"));
    use_s3(&mut config, &moto, "no-such-bucket");
    let err = match Server::start(config).await {
        Ok(_) => panic!("started without its bucket"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("media store"), "{err}");
}
