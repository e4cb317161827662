//! Media across Hearth and Synapse: what is uploaded on either server downloads, byte for byte,
//! through the other (authenticated federation media both ways).

use crate::{
    common::{TestServer, TEST_PASSWORD},
    synapse::Synapse,
};

/// Uploads bytes on a server's client API; the mxc URI.
async fn upload(http: &reqwest::Client, base: &str, token: &str, bytes: Vec<u8>) -> String {
    let r = http
        .post(format!("{base}/_matrix/media/v3/upload?filename=data.bin"))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(status.is_success(), "upload: {status} {body}");
    body["content_uri"].as_str().unwrap().to_owned()
}

/// Downloads an mxc URI through a server's authenticated media API.
async fn download(http: &reqwest::Client, base: &str, token: &str, mxc: &str) -> (u16, Vec<u8>) {
    let path = mxc.strip_prefix("mxc://").unwrap();
    let r = http
        .get(format!("{base}/_matrix/client/v1/media/download/{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_uploaded_on_either_server_downloads_through_the_other() {
    let hearth = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let (_, alice_tok, _) = hearth.register("alice", TEST_PASSWORD).await;
    let (_, bob_tok) = synapse.register("bob").await;
    let http = reqwest::Client::new();

    let from_hearth: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mxc = upload(&http, &hearth.url(), &alice_tok, from_hearth.clone()).await;
    assert!(mxc.starts_with(&format!("mxc://{}/", hearth.name())));
    let (status, got) = download(&http, &synapse.client_url(), &bob_tok, &mxc).await;
    assert_eq!(
        status,
        200,
        "Synapse fetching Hearth's media: {}",
        synapse.log_tail(30)
    );
    assert!(
        got == from_hearth,
        "Synapse served other bytes ({} bytes)",
        got.len()
    );

    let from_synapse: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 253) as u8).collect();
    let mxc = upload(&http, &synapse.client_url(), &bob_tok, from_synapse.clone()).await;
    assert!(mxc.starts_with(&format!("mxc://{}/", synapse.server_name())));
    let (status, got) = download(&http, &hearth.url(), &alice_tok, &mxc).await;
    assert_eq!(status, 200, "Hearth fetching Synapse's media");
    assert!(
        got == from_synapse,
        "Hearth served other bytes ({} bytes)",
        got.len()
    );

    // Unknown media of the other server is a 404 either way.
    let (status, _) = download(
        &http,
        &hearth.url(),
        &alice_tok,
        &format!("mxc://{}/doesNotExist", synapse.server_name()),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = download(
        &http,
        &synapse.client_url(),
        &bob_tok,
        &format!("mxc://{}/doesNotExist", hearth.name()),
    )
    .await;
    assert_eq!(status, 404);
}
