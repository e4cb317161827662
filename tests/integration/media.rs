//! The media repository over raw HTTP: uploads (direct and asynchronous), downloads with the
//! spec's headers and range requests, thumbnails of bad input, limits and quotas, legacy
//! endpoints, URL previews against a page served by the test itself, and retention.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use hearth::config::{ByteSize, HumanDuration, MaxAge};
use reqwest::{header, StatusCode};
use serde_json::{json, Value};

use crate::{
    common::{assert_err, TestServer},
    media_sdk::png,
};

/// Uploads `body` with `POST /_matrix/media/v3/upload`; returns status and JSON.
async fn upload(
    server: &TestServer,
    token: &str,
    content_type: &str,
    filename: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let query = filename
        .map(|f| format!("?filename={}", crate::common::enc(f)))
        .unwrap_or_default();
    let req = server
        .http
        .post(format!("{}/_matrix/media/v3/upload{query}", server.url()))
        .bearer_auth(token)
        .header(header::CONTENT_TYPE, content_type)
        .body(body);
    let resp = req.send().await.expect("upload sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Uploads and returns the media ID (the part after `mxc://server/`).
async fn upload_ok(server: &TestServer, token: &str, content_type: &str, body: Vec<u8>) -> String {
    let (status, resp) = upload(server, token, content_type, None, body).await;
    assert_eq!(status, 200, "{resp}");
    media_id(&resp["content_uri"])
}

fn media_id(uri: &Value) -> String {
    let uri = uri.as_str().expect("content_uri");
    uri.rsplit('/').next().expect("media id").to_owned()
}

fn server_name(server: &TestServer) -> String {
    server.config.server_name.to_string()
}

/// `GET` of a media path with an optional token and extra headers.
async fn fetch(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    headers: &[(header::HeaderName, &str)],
) -> reqwest::Response {
    let mut req = server.http.get(format!("{}{path}", server.url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (name, value) in headers {
        req = req.header(name.clone(), *value);
    }
    req.send().await.expect("request sent")
}

fn download_path(server: &TestServer, media_id: &str) -> String {
    format!(
        "/_matrix/client/v1/media/download/{}/{media_id}",
        server_name(server)
    )
}

fn thumbnail_path(server: &TestServer, media_id: &str, query: &str) -> String {
    format!(
        "/_matrix/client/v1/media/thumbnail/{}/{media_id}?{query}",
        server_name(server)
    )
}

async fn status_and_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn header_of<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Every file in the media folder (temporary files included), sorted.
fn media_files(server: &TestServer) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&server.config.database.path.join("media"), &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn download_has_the_specs_headers() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "a long password").await;
    let (status, resp) = upload(
        &server,
        &token,
        "text/plain",
        Some("notes.txt"),
        b"hello media".to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let uri = resp["content_uri"].as_str().unwrap();
    assert!(
        uri.starts_with(&format!("mxc://{}/", server_name(&server))),
        "{uri}"
    );
    let id = media_id(&resp["content_uri"]);

    let resp = fetch(&server, &download_path(&server, &id), Some(&token), &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_of(&resp, "content-type"), "text/plain");
    assert_eq!(
        header_of(&resp, "content-disposition"),
        "inline; filename=\"notes.txt\""
    );
    assert_eq!(
        header_of(&resp, "cross-origin-resource-policy"),
        "cross-origin"
    );
    assert!(
        header_of(&resp, "content-security-policy").starts_with("sandbox; default-src 'none'"),
        "{:?}",
        resp.headers()
    );
    assert_eq!(header_of(&resp, "accept-ranges"), "bytes");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"hello media");

    // The file name in the path wins over the uploaded one, encoded per RFC 6266.
    let resp = fetch(
        &server,
        &format!("{}/r%C3%A9sum%C3%A9.txt", download_path(&server, &id)),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header_of(&resp, "content-disposition"),
        "inline; filename*=utf-8''r%C3%A9sum%C3%A9.txt"
    );

    // Authenticated media needs a token.
    let resp = fetch(&server, &download_path(&server, &id), None, &[]).await;
    assert_err(&status_and_json(resp).await, 401, "M_MISSING_TOKEN");

    let (status, config) = server
        .get("/_matrix/client/v1/media/config", Some(&token))
        .await;
    assert_eq!(status, 200);
    assert_eq!(config["m.upload.size"], 50u64 << 20);
}

#[tokio::test]
async fn html_upload_is_served_as_an_attachment() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "a long password").await;
    let (status, resp) = upload(
        &server,
        &token,
        "text/html",
        Some("page.html"),
        b"<script>alert(1)</script>".to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let id = media_id(&resp["content_uri"]);
    let resp = fetch(&server, &download_path(&server, &id), Some(&token), &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_of(&resp, "content-type"), "text/html");
    assert_eq!(
        header_of(&resp, "content-disposition"),
        "attachment; filename=\"page.html\""
    );
    // An upload without a type is served as application/octet-stream, as an attachment.
    let resp = server
        .http
        .post(format!("{}/_matrix/media/v3/upload", server.url()))
        .bearer_auth(&token)
        .body(b"mystery".to_vec())
        .send()
        .await
        .unwrap();
    let id = media_id(&resp.json::<Value>().await.unwrap()["content_uri"]);
    let resp = fetch(&server, &download_path(&server, &id), Some(&token), &[]).await;
    assert_eq!(header_of(&resp, "content-type"), "application/octet-stream");
    assert_eq!(header_of(&resp, "content-disposition"), "attachment");
}

#[tokio::test]
async fn downloads_answer_range_requests() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "a long password").await;
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let id = upload_ok(&server, &token, "application/octet-stream", data.clone()).await;
    let path = download_path(&server, &id);

    let resp = fetch(
        &server,
        &path,
        Some(&token),
        &[(header::RANGE, "bytes=10-19")],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header_of(&resp, "content-range"), "bytes 10-19/1000");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[10..20]);

    let resp = fetch(&server, &path, Some(&token), &[(header::RANGE, "bytes=-5")]).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header_of(&resp, "content-range"), "bytes 995-999/1000");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[995..]);

    let resp = fetch(
        &server,
        &path,
        Some(&token),
        &[(header::RANGE, "bytes=990-")],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[990..]);

    let resp = fetch(
        &server,
        &path,
        Some(&token),
        &[(header::RANGE, "bytes=1000-")],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header_of(&resp, "content-range"), "bytes */1000");

    // Several ranges are answered with the whole file, as RFC 9110 allows.
    let resp = fetch(
        &server,
        &path,
        Some(&token),
        &[(header::RANGE, "bytes=0-1,5-6")],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[..]);
}

#[tokio::test]
async fn async_upload_is_once_and_only_by_its_creator() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "a long password").await;
    let (_, bob, _) = server.register("bob", "a long password").await;
    let (status, created) = server
        .post("/_matrix/media/v1/create", Some(&alice), json!({}))
        .await;
    assert_eq!(status, 200, "{created}");
    assert!(created["unused_expires_at"].as_u64().is_some(), "{created}");
    let id = media_id(&created["content_uri"]);
    let put_path = format!(
        "{}/_matrix/media/v3/upload/{}/{id}",
        server.url(),
        server_name(&server)
    );
    let put = |token: String, body: &'static [u8]| {
        server
            .http
            .put(format!("{put_path}?filename=later.txt"))
            .bearer_auth(token)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(body)
            .send()
    };

    // Not there yet: the download waits up to timeout_ms, then 504 M_NOT_YET_UPLOADED.
    let resp = fetch(
        &server,
        &format!("{}?timeout_ms=0", download_path(&server, &id)),
        Some(&alice),
        &[],
    )
    .await;
    assert_err(&status_and_json(resp).await, 504, "M_NOT_YET_UPLOADED");
    // A download that is already waiting gets the content once it arrives.
    let waiting = {
        let req = server
            .http
            .get(format!(
                "{}{}?timeout_ms=30000",
                server.url(),
                download_path(&server, &id)
            ))
            .bearer_auth(&bob);
        tokio::spawn(async move { req.send().await.expect("waiting download") })
    };

    let resp = put(bob.clone(), b"bob's").await.unwrap();
    assert_err(&status_and_json(resp).await, 403, "M_FORBIDDEN");
    let resp = put(alice.clone(), b"alice's content").await.unwrap();
    assert_eq!(status_and_json(resp).await, (200, json!({})));
    let resp = put(alice.clone(), b"again").await.unwrap();
    assert_err(
        &status_and_json(resp).await,
        409,
        "M_CANNOT_OVERWRITE_MEDIA",
    );

    let resp = waiting.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header_of(&resp, "content-disposition"),
        "inline; filename=\"later.txt\""
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"alice's content");

    // An ID that was never created.
    let resp = server
        .http
        .put(format!(
            "{}/_matrix/media/v3/upload/{}/neverCreated",
            server.url(),
            server_name(&server)
        ))
        .bearer_auth(&alice)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_err(&status_and_json(resp).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn unused_create_ids_expire() {
    let server = TestServer::start_with(|c| {
        c.media.unused_expiry = HumanDuration(Duration::from_millis(300));
    })
    .await;
    let (_, alice, _) = server.register("alice", "a long password").await;
    let (_, created) = server
        .post("/_matrix/media/v1/create", Some(&alice), json!({}))
        .await;
    let id = media_id(&created["content_uri"]);
    let path = format!(
        "{}/_matrix/media/v3/upload/{}/{id}",
        server.url(),
        server_name(&server)
    );
    // Pending (504) until it expires, then unknown (404); observed, not timed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = fetch(
            &server,
            &format!("{}?timeout_ms=0", download_path(&server, &id)),
            Some(&alice),
            &[],
        )
        .await;
        let (status, body) = status_and_json(resp).await;
        if status == 404 {
            assert_eq!(body["errcode"], "M_NOT_FOUND");
            break;
        }
        assert_eq!(body["errcode"], "M_NOT_YET_UPLOADED");
        assert!(Instant::now() < deadline, "the ID never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = server
        .http
        .put(&path)
        .bearer_auth(&alice)
        .body("late")
        .send()
        .await
        .unwrap();
    assert_err(&status_and_json(resp).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn upload_over_the_limit_is_too_large_and_stores_nothing() {
    let server = TestServer::start_with(|c| c.media.max_upload_size = ByteSize(1024)).await;
    let (_, token, _) = server.register("alice", "a long password").await;
    let (_, config) = server
        .get("/_matrix/client/v1/media/config", Some(&token))
        .await;
    assert_eq!(config["m.upload.size"], 1024);

    let before = (server.db_fingerprint(), media_files(&server));
    // Declared too large up front.
    let resp = upload(
        &server,
        &token,
        "application/octet-stream",
        None,
        vec![7u8; 2000],
    )
    .await;
    assert_err(&resp, 413, "M_TOO_LARGE");
    // No Content-Length: the streamed length is checked as it arrives.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..4).map(|_| Ok(vec![1u8; 600])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let resp = upload(&server, &token, "application/octet-stream", None, body).await;
    assert_err(&resp, 413, "M_TOO_LARGE");
    assert_eq!((server.db_fingerprint(), media_files(&server)), before);

    // The JSON body limit does not apply to media: a body over 1M is fine when the media limit
    // allows it.
    let big = TestServer::start_with(|c| {
        c.media.max_upload_size = ByteSize(4 << 20);
        c.limits.max_request_size = ByteSize(64 << 10);
    })
    .await;
    let (_, token, _) = big.register("alice", "a long password").await;
    let data = vec![3u8; 2 << 20];
    let id = upload_ok(&big, &token, "application/octet-stream", data.clone()).await;
    let resp = fetch(&big, &download_path(&big, &id), Some(&token), &[]).await;
    assert_eq!(resp.bytes().await.unwrap().len(), data.len());
}

#[tokio::test]
async fn quota_refuses_uploads_over_it() {
    let server = TestServer::start_with(|c| c.media.user_quota = ByteSize(1000)).await;
    let (_, alice, _) = server.register("alice", "a long password").await;
    let (_, bob, _) = server.register("bob", "a long password").await;
    upload_ok(&server, &alice, "text/plain", vec![b'a'; 600]).await;
    let resp = upload(&server, &alice, "text/plain", None, vec![b'b'; 600]).await;
    assert_err(&resp, 403, "M_FORBIDDEN");
    // The quota is per user.
    upload_ok(&server, &bob, "text/plain", vec![b'c'; 600]).await;
    upload_ok(&server, &alice, "text/plain", vec![b'd'; 400]).await;
}

#[tokio::test]
async fn unknown_media_is_not_found() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "a long password").await;
    for path in [
        download_path(&server, "doesNotExist"),
        thumbnail_path(&server, "doesNotExist", "width=32&height=32"),
        format!(
            "/_matrix/media/v3/download/{}/doesNotExist",
            server_name(&server)
        ),
        // Remote media, on a server with federation off.
        "/_matrix/client/v1/media/download/other.example.org/someMedia".to_owned(),
    ] {
        let resp = fetch(&server, &path, Some(&token), &[]).await;
        assert_err(&status_and_json(resp).await, 404, "M_NOT_FOUND");
    }
}

#[tokio::test]
async fn malformed_server_name_or_media_id_is_invalid_param() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "a long password").await;
    let name = server_name(&server);
    for path in [
        format!("/_matrix/client/v1/media/download/{name}/bad.id"),
        format!("/_matrix/client/v1/media/download/{name}/..%2F..%2Fetc"),
        format!("/_matrix/client/v1/media/download/{name}/caf%C3%A9"),
        "/_matrix/client/v1/media/download/bad%20server/abc".to_owned(),
        "/_matrix/client/v1/media/download/bad_server!/abc".to_owned(),
        format!("/_matrix/client/v1/media/thumbnail/{name}/bad.id?width=32&height=32"),
        format!("/_matrix/media/v3/download/{name}/bad.id"),
    ] {
        let resp = fetch(&server, &path, Some(&token), &[]).await;
        assert_err(&status_and_json(resp).await, 400, "M_INVALID_PARAM");
    }
    let resp = server
        .http
        .put(format!(
            "{}/_matrix/media/v3/upload/{name}/bad.id",
            server.url()
        ))
        .bearer_auth(&token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_err(&status_and_json(resp).await, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn thumbnail_of_a_non_image_is_400_unknown() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "a long password").await;
    let id = upload_ok(
        &server,
        &token,
        "image/png",
        b"not an image at all".to_vec(),
    )
    .await;
    let resp = fetch(
        &server,
        &thumbnail_path(&server, &id, "width=32&height=32&method=crop"),
        Some(&token),
        &[],
    )
    .await;
    assert_err(&status_and_json(resp).await, 400, "M_UNKNOWN");
    // Bad parameters.
    let id = upload_ok(&server, &token, "image/png", png(50, 50)).await;
    for (query, code) in [
        ("height=32", "M_MISSING_PARAM"),
        ("width=0&height=32", "M_INVALID_PARAM"),
        ("width=-4&height=32", "M_INVALID_PARAM"),
        ("width=32&height=32&method=stretch", "M_INVALID_PARAM"),
    ] {
        let resp = fetch(
            &server,
            &thumbnail_path(&server, &id, query),
            Some(&token),
            &[],
        )
        .await;
        assert_err(&status_and_json(resp).await, 400, code);
    }
}

/// CRC-32 (IEEE), for writing PNG chunks by hand.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A well-formed PNG header that claims `width`×`height`, followed by garbage pixel data.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0xff, 0x00, 0x12, 0x34, 0x56]);
    chunk(b"IEND", &[]);
    out
}

#[tokio::test]
async fn corrupt_images_fail_promptly_and_the_server_keeps_answering() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "a long password").await;
    let mut truncated = png(300, 200);
    truncated.truncate(truncated.len() / 2);
    let cases = [
        (png_claiming(400, 300), 400, "M_UNKNOWN"),
        (truncated, 400, "M_UNKNOWN"),
        // Claims to be far larger than anything we decode: refused before decoding.
        (png_claiming(100_000, 100_000), 413, "M_TOO_LARGE"),
        (png_claiming(9_000, 9_000), 413, "M_TOO_LARGE"),
    ];
    for (data, status, code) in cases {
        let id = upload_ok(&server, &token, "image/png", data).await;
        let resp = tokio::time::timeout(
            Duration::from_secs(60),
            fetch(
                &server,
                &thumbnail_path(&server, &id, "width=32&height=32&method=scale"),
                Some(&token),
                &[],
            ),
        )
        .await
        .expect("the thumbnail request does not hang");
        assert_err(&status_and_json(resp).await, status, code);
    }
    let (status, _) = server.get("/_matrix/client/versions", None).await;
    assert_eq!(status, 200, "the server still answers");
}

#[tokio::test]
async fn small_images_are_their_own_thumbnail_and_thumbnails_are_cached() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "a long password").await;
    let small = png(20, 10);
    let id = upload_ok(&server, &token, "image/png", small.clone()).await;
    let resp = fetch(
        &server,
        &thumbnail_path(&server, &id, "width=32&height=32"),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_of(&resp, "content-type"), "image/png");
    assert_eq!(
        header_of(&resp, "content-disposition"),
        "inline; filename=\"thumbnail.png\""
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &small[..]);

    let id = upload_ok(&server, &token, "image/png", png(400, 300)).await;
    let files = media_files(&server).len();
    let path = thumbnail_path(&server, &id, "width=96&height=96&method=crop");
    let first = fetch(&server, &path, Some(&token), &[])
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        media_files(&server).len(),
        files + 1,
        "the thumbnail is stored"
    );
    let second = fetch(&server, &path, Some(&token), &[])
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(media_files(&server).len(), files + 1, "and generated once");
    let img = image::load_from_memory(&first).unwrap();
    assert_eq!((img.width(), img.height()), (96, 96));
}

#[tokio::test]
async fn identical_uploads_share_one_file_until_both_are_gone() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "a long password").await;
    let admin = server.console_secret();
    let data = b"the same bytes twice".to_vec();
    let first = upload_ok(&server, &token, "text/plain", data.clone()).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = hearth::util::now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = upload_ok(&server, &token, "text/plain", data.clone()).await;
    assert_ne!(first, second);
    assert_eq!(media_files(&server).len(), 1, "stored once");

    let (status, resp) = server
        .post(
            &format!("/_synapse/admin/v1/media/delete?before_ts={between}"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp, json!({ "total": 1, "deleted_media": [first] }));
    let resp = fetch(&server, &download_path(&server, &first), Some(&token), &[]).await;
    assert_err(&status_and_json(resp).await, 404, "M_NOT_FOUND");
    let resp = fetch(&server, &download_path(&server, &second), Some(&token), &[]).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[..]);
    assert_eq!(media_files(&server).len(), 1, "still used by the second");

    let now = hearth::util::now_ms() + 1;
    let (_, resp) = server
        .post(
            &format!("/_synapse/admin/v1/media/delete?before_ts={now}"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(resp["total"], 1);
    assert!(
        media_files(&server).is_empty(),
        "the last reference took the file"
    );

    // Remote media cache: nothing cached yet. Non-admins may not purge.
    let (status, resp) = server
        .post(
            &format!("/_synapse/admin/v1/purge_media_cache?before_ts={now}"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!((status, resp), (200, json!({ "deleted": 0 })));
    let resp = server
        .post(
            &format!("/_synapse/admin/v1/purge_media_cache?before_ts={now}"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_err(&resp, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn retention_job_deletes_expired_local_media_and_keeps_younger() {
    let server = TestServer::start_with(|c| {
        c.media.retention.local_max_age = MaxAge(Some(Duration::from_secs(6)));
    })
    .await;
    let (_, token, _) = server.register("alice", "a long password").await;
    let old = upload_ok(&server, &token, "text/plain", b"old".to_vec()).await;
    // The second upload is made well after the first (half the age limit), so it is still young
    // when the first expires, with seconds to spare; the job is observed, not timed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let young = upload_ok(&server, &token, "text/plain", b"young".to_vec()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = fetch(&server, &download_path(&server, &old), Some(&token), &[]).await;
        if resp.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(Instant::now() < deadline, "the old upload was never purged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = fetch(&server, &download_path(&server, &young), Some(&token), &[]).await;
    assert_eq!(resp.status(), StatusCode::OK, "the younger upload stays");
    assert_eq!(media_files(&server).len(), 1, "only the young file is left");
}

#[tokio::test]
async fn legacy_endpoints_serve_until_frozen() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "a long password").await;
    let id = upload_ok(&server, &token, "image/png", png(100, 100)).await;
    let name = server_name(&server);
    let legacy = [
        format!("/_matrix/media/v3/download/{name}/{id}"),
        format!("/_matrix/media/v3/download/{name}/{id}/cat.png"),
        format!("/_matrix/media/v3/thumbnail/{name}/{id}?width=32&height=32"),
    ];
    for path in &legacy {
        let resp = fetch(&server, path, None, &[]).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }

    let frozen = TestServer::start_with(|c| c.media.legacy_endpoints = false).await;
    let (_, token, _) = frozen.register("alice", "a long password").await;
    let id = upload_ok(&frozen, &token, "image/png", png(100, 100)).await;
    let name = server_name(&frozen);
    for path in [
        format!("/_matrix/media/v3/download/{name}/{id}"),
        format!("/_matrix/media/v3/download/{name}/{id}/cat.png"),
        format!("/_matrix/media/v3/thumbnail/{name}/{id}?width=32&height=32"),
    ] {
        let resp = fetch(&frozen, &path, Some(&token), &[]).await;
        assert_err(&status_and_json(resp).await, 404, "M_NOT_FOUND");
    }
    let resp = fetch(&frozen, &download_path(&frozen, &id), Some(&token), &[]).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "authenticated media still works"
    );
}

/// A tiny web site on loopback: a page with OpenGraph tags, its image, and redirects.
async fn serve_site(image: Vec<u8>) -> (String, tokio::task::JoinHandle<()>) {
    use axum::{response::IntoResponse, routing::get, Router};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let page = r#"<!doctype html><html><head>
        <title>Fallback title</title>
        <meta property="og:title" content="Hearth &amp; home">
        <meta property="og:description" content="A page about hearths">
        <meta property="og:image" content="/cat.png">
        </head><body><p>Hello</p></body></html>"#;
    let app = Router::new()
        .route(
            "/page",
            get(
                move || async move { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page) },
            ),
        )
        .route(
            "/cat.png",
            get(move || {
                let image = image.clone();
                async move { ([(header::CONTENT_TYPE, "image/png")], image).into_response() }
            }),
        )
        .route(
            "/moved",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/page")]) }),
        )
        .route(
            "/escape",
            get(move || async move {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, format!("http://127.0.0.2:{port}/page"))],
                )
            }),
        );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://127.0.0.1:{port}"), task)
}

fn preview_path(url: &str) -> String {
    format!(
        "/_matrix/client/v1/media/preview_url?url={}",
        crate::common::enc(url)
            .replace('/', "%2F")
            .replace(':', "%3A")
    )
}

#[tokio::test]
async fn url_preview_of_loopback_is_refused_by_default() {
    let (site, task) = serve_site(png(64, 48)).await;
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "a long password").await;
    let resp = server
        .get(&preview_path(&format!("{site}/page")), Some(&token))
        .await;
    assert_err(&resp, 403, "M_FORBIDDEN");
    // Also when the name resolves to loopback.
    let by_name = site.replace("127.0.0.1", "localhost");
    let resp = server
        .get(&preview_path(&format!("{by_name}/page")), Some(&token))
        .await;
    assert_err(&resp, 403, "M_FORBIDDEN");
    task.abort();
}

#[tokio::test]
async fn url_preview_reads_opengraph_when_loopback_is_allowed() {
    let image = png(64, 48);
    let (site, task) = serve_site(image.clone()).await;
    let server = TestServer::start_with(|c| {
        c.media.url_preview.allow = vec!["127.0.0.1/32".into()];
    })
    .await;
    let (_, token, _) = server.register("alice", "a long password").await;
    let (status, preview) = server
        .get(&preview_path(&format!("{site}/page")), Some(&token))
        .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["og:title"], "Hearth & home");
    assert_eq!(preview["og:description"], "A page about hearths");
    assert_eq!(preview["og:image:width"], 64);
    assert_eq!(preview["og:image:height"], 48);
    assert_eq!(preview["og:image:type"], "image/png");
    assert_eq!(preview["matrix:image:size"], image.len());
    let mxc = preview["og:image"].as_str().expect("og:image");
    assert!(
        mxc.starts_with(&format!("mxc://{}/", server_name(&server))),
        "{mxc}"
    );
    let id = mxc.rsplit('/').next().unwrap();
    let resp = fetch(&server, &download_path(&server, id), Some(&token), &[]).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &image[..]);

    // Redirects are followed, and each hop is checked: 127.0.0.2 is not allowed.
    let (status, moved) = server
        .get(&preview_path(&format!("{site}/moved")), Some(&token))
        .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["og:title"], "Hearth & home");
    let resp = server
        .get(&preview_path(&format!("{site}/escape")), Some(&token))
        .await;
    assert_err(&resp, 403, "M_FORBIDDEN");
    // Not a web URL.
    let resp = server
        .get(&preview_path("file:///etc/passwd"), Some(&token))
        .await;
    assert_err(&resp, 400, "M_INVALID_PARAM");

    // Cached: the site is gone, the preview is not.
    task.abort();
    let _ = task.await;
    let (status, again) = server
        .get(&preview_path(&format!("{site}/page")), Some(&token))
        .await;
    assert_eq!((status, &again), (200, &preview));
}

#[tokio::test]
async fn media_survives_a_restart_and_the_retention_job_lets_the_database_go() {
    let mut server = TestServer::start_with(|c| {
        // A retention job with something scheduled is running at shutdown.
        c.media.retention.local_max_age = MaxAge(Some(Duration::from_secs(3600)));
    })
    .await;
    let (_, token, _) = server.register("alice", "a long password").await;
    let id = upload_ok(&server, &token, "text/plain", b"kept".to_vec()).await;
    // The restart reopens the RocksDB folder, which fails while anything still holds it.
    server.restart().await;
    let resp = fetch(&server, &download_path(&server, &id), Some(&token), &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"kept");
}
