//! Clients that hang up. A phone on a bad network, a closed browser tab or a load generator at
//! the end of its run writes requests and closes the connection before the answers come; hyper
//! then drops the request's future wherever it is. None of that may stop anyone else: after
//! every kind of write abandoned at every moment, another member's /sync still receives the next
//! message and a new user's rooms still show up, and under a minute of 50 clients sending,
//! syncing and hanging up at random, every acknowledged event reaches every member exactly once.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use rand::Rng;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    common::{enc, TestServer, TEST_PASSWORD},
    federation_bad_input::{pair, value},
};

/// One HTTP/1.1 request as a client writes it to the socket.
fn raw(method: &str, path: &str, token: Option<&str>, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn raw_json(method: &str, path: &str, token: Option<&str>, body: &Value) -> Vec<u8> {
    raw(
        method,
        path,
        token,
        "application/json",
        body.to_string().as_bytes(),
    )
}

/// When the client goes away.
#[derive(Clone, Copy, Debug)]
enum HangUp {
    /// Right after the last byte of the requests is written.
    AfterWriting,
    /// A while after writing, while the server is working on them.
    After(Duration),
    /// Halfway through the first request's body.
    MidBody,
}

impl HangUp {
    fn random() -> Self {
        let mut rng = rand::thread_rng();
        match rng.gen_range(0..4) {
            0 => HangUp::AfterWriting,
            1 => HangUp::MidBody,
            _ => HangUp::After(Duration::from_micros(rng.gen_range(0..30_000))),
        }
    }
}

/// Writes the requests and leaves as `how` says, reading no answer.
async fn write_and_leave<S: AsyncWrite + Unpin>(mut socket: S, requests: &[Vec<u8>], how: HangUp) {
    match how {
        HangUp::MidBody => {
            let first = &requests[0];
            let _ = socket
                .write_all(&first[..first.len() - first.len() / 3])
                .await;
        }
        HangUp::AfterWriting | HangUp::After(_) => {
            for r in requests {
                let _ = socket.write_all(r).await;
            }
        }
    }
    let _ = socket.flush().await;
    if let HangUp::After(d) = how {
        tokio::time::sleep(d).await;
    }
}

async fn hang_up(addr: SocketAddr, requests: &[Vec<u8>], how: HangUp) {
    let socket = TcpStream::connect(addr).await.expect("connect");
    write_and_leave(socket, requests, how).await;
}

/// Every way of leaving, several times each, some connections carrying several requests.
async fn hang_up_every_way(addr: SocketAddr, mut request: impl FnMut() -> Vec<u8>) {
    let mut leaving = Vec::new();
    for _ in 0..6 {
        let pipelined: Vec<Vec<u8>> = (0..4).map(|_| request()).collect();
        leaving.push(tokio::spawn(async move {
            hang_up(addr, &pipelined, HangUp::AfterWriting).await
        }));
    }
    for i in 0..12u64 {
        let one = vec![request()];
        let how = match i % 3 {
            0 => HangUp::MidBody,
            _ => HangUp::After(Duration::from_micros(
                rand::thread_rng().gen_range(0..30_000),
            )),
        };
        leaving.push(tokio::spawn(async move { hang_up(addr, &one, how).await }));
    }
    for l in leaving {
        l.await.expect("client task");
    }
}

/// A /sync of `token` from `since` until `event_id` arrives in `room` (or 20 s pass).
async fn sync_until_seen(s: &TestServer, token: &str, since: &str, room: &str, event_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut since = since.to_owned();
    loop {
        let (status, body) = s
            .get(
                &format!("/_matrix/client/v3/sync?since={since}&timeout=2000"),
                Some(token),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let seen = body["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .is_some_and(|evs| evs.iter().any(|e| e["event_id"] == event_id));
        if seen {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/sync never delivered {event_id}: the stream is stuck at {since}"
        );
        since = body["next_batch"].as_str().expect("next_batch").to_owned();
    }
}

async fn next_batch(s: &TestServer, token: &str) -> String {
    let (status, body) = s.get("/_matrix/client/v3/sync", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    body["next_batch"].as_str().expect("next_batch").to_owned()
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique() -> u64 {
    UNIQUE.fetch_add(1, Ordering::Relaxed)
}

/// What the issue's user saw broken: `reader`'s /sync from `since` receives the next message of
/// `writer`, and a new user who creates three rooms sees them in an initial /sync.
async fn still_live(s: &TestServer, writer: &str, reader: &str, room: &str, since: &str) {
    let text = format!("after the hang-ups {}", unique());
    let event_id = s.say(writer, room, &text).await;
    sync_until_seen(s, reader, since, room, &event_id).await;

    let (_, newcomer, _) = s
        .register(&format!("newcomer{}", unique()), TEST_PASSWORD)
        .await;
    let mut rooms = Vec::new();
    for _ in 0..3 {
        rooms.push(s.create_room(&newcomer, json!({})).await);
    }
    let (status, body) = s.get("/_matrix/client/v3/sync", Some(&newcomer)).await;
    assert_eq!(status, 200, "{body}");
    for r in &rooms {
        assert!(
            body["rooms"]["join"].get(r).is_some(),
            "new room {r} missing from the newcomer's first /sync: {body}"
        );
    }
}

struct Room {
    s: TestServer,
    a: String,
    a_tok: String,
    a_device: String,
    b: String,
    b_tok: String,
    room: String,
}

/// Users a and b in a room on a fresh server.
async fn room() -> Room {
    let s = TestServer::start().await;
    let (a, a_tok, a_device) = s.register("a", TEST_PASSWORD).await;
    let (b, b_tok, _) = s.register("b", TEST_PASSWORD).await;
    let room = s
        .create_room(&a_tok, json!({ "preset": "public_chat" }))
        .await;
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&b_tok),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    Room {
        s,
        a,
        a_tok,
        a_device,
        b,
        b_tok,
        room,
    }
}

/// The reported steps: 40 sends written to a socket that is closed right after (and 40 more,
/// each on a socket of its own), then a's next message must reach b's /sync, and a new user's
/// rooms must show up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_abandoned_by_a_closed_socket_leave_sync_working() {
    let r = room().await;
    let addr = r.s.server.as_ref().unwrap().client_addr;
    let since = next_batch(&r.s, &r.b_tok).await;
    let send = |i: u32| {
        raw_json(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/gone{i}",
                enc(&r.room)
            ),
            Some(&r.a_tok),
            &json!({ "msgtype": "m.text", "body": format!("gone {i}") }),
        )
    };
    // A few rounds: whether hyper notices the closed socket before or during a handler's await
    // is a matter of timing.
    for round in 0..4 {
        let pipelined: Vec<Vec<u8>> = (0..40).map(|i| send(round * 100 + i)).collect();
        hang_up(addr, &pipelined, HangUp::AfterWriting).await;
        let mut leaving = Vec::new();
        for i in 40..80 {
            let one = [send(round * 100 + i)];
            leaving.push(tokio::spawn(async move {
                hang_up(addr, &one, HangUp::AfterWriting).await
            }));
        }
        for l in leaving {
            l.await.expect("client task");
        }
    }
    still_live(&r.s, &r.a_tok, &r.b_tok, &r.room, &since).await;
}

/// Every kind of client write, abandoned right after writing, at random moments while in
/// flight, and halfway through its body: the stream goes on after each kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_write_abandoned_at_any_moment_leaves_sync_working() {
    let r = room().await;
    let addr = r.s.server.as_ref().unwrap().client_addr;
    let first = r.s.say(&r.a_tok, &r.room, "first").await;
    let room = enc(&r.room);
    let a = enc(&r.a);
    let admin = r.s.console_secret();
    type Request<'a> = Box<dyn FnMut() -> Vec<u8> + 'a>;
    let kinds: Vec<(&str, Request)> = vec![
        (
            "send",
            Box::new(|| {
                let n = unique();
                raw_json(
                    "PUT",
                    &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/k{n}"),
                    Some(&r.a_tok),
                    &json!({ "msgtype": "m.text", "body": format!("kind {n}") }),
                )
            }),
        ),
        (
            "state",
            Box::new(|| {
                raw_json(
                    "PUT",
                    &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic"),
                    Some(&r.a_tok),
                    &json!({ "topic": format!("topic {}", unique()) }),
                )
            }),
        ),
        (
            "profile (a member event in every room)",
            Box::new(|| {
                raw_json(
                    "PUT",
                    &format!("/_matrix/client/v3/profile/{a}/displayname"),
                    Some(&r.a_tok),
                    &json!({ "displayname": format!("a{}", unique()) }),
                )
            }),
        ),
        (
            "createRoom",
            Box::new(|| {
                raw_json(
                    "POST",
                    "/_matrix/client/v3/createRoom",
                    Some(&r.a_tok),
                    &json!({ "name": format!("room {}", unique()) }),
                )
            }),
        ),
        (
            "receipt",
            Box::new(|| {
                raw_json(
                    "POST",
                    &format!(
                        "/_matrix/client/v3/rooms/{room}/receipt/m.read/{}",
                        enc(&first)
                    ),
                    Some(&r.a_tok),
                    &json!({}),
                )
            }),
        ),
        (
            "read markers",
            Box::new(|| {
                raw_json(
                    "POST",
                    &format!("/_matrix/client/v3/rooms/{room}/read_markers"),
                    Some(&r.a_tok),
                    &json!({ "m.fully_read": first, "m.read.private": first }),
                )
            }),
        ),
        (
            "account data",
            Box::new(|| {
                raw_json(
                    "PUT",
                    &format!("/_matrix/client/v3/user/{a}/account_data/org.example.k"),
                    Some(&r.a_tok),
                    &json!({ "n": unique() }),
                )
            }),
        ),
        (
            "room tags",
            Box::new(|| {
                raw_json(
                    "PUT",
                    &format!(
                        "/_matrix/client/v3/user/{a}/rooms/{room}/tags/u.t{}",
                        unique()
                    ),
                    Some(&r.a_tok),
                    &json!({ "order": 0.5 }),
                )
            }),
        ),
        (
            "to-device",
            Box::new(|| {
                raw_json(
                    "PUT",
                    &format!(
                        "/_matrix/client/v3/sendToDevice/org.example.m/t{}",
                        unique()
                    ),
                    Some(&r.a_tok),
                    &json!({ "messages": { r.b.clone(): { "*": { "n": unique() } } } }),
                )
            }),
        ),
        (
            "keys",
            Box::new(|| {
                let n = unique();
                raw_json(
                    "POST",
                    "/_matrix/client/v3/keys/upload",
                    Some(&r.a_tok),
                    &json!({ "one_time_keys": { format!("curve25519:K{n}"): format!("key{n}") } }),
                )
            }),
        ),
        (
            "device keys (a change announced to room members)",
            Box::new(|| {
                let n = unique();
                raw_json(
                    "POST",
                    "/_matrix/client/v3/keys/upload",
                    Some(&r.a_tok),
                    &json!({ "device_keys": {
                        "user_id": r.a,
                        "device_id": r.a_device,
                        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                        "keys": { format!("curve25519:{}", r.a_device): format!("k{n}") },
                        "signatures": {},
                    } }),
                )
            }),
        ),
        (
            "presence",
            Box::new(|| {
                let n = unique();
                raw_json(
                    "PUT",
                    &format!("/_matrix/client/v3/presence/{a}/status"),
                    Some(&r.a_tok),
                    &json!({
                        "presence": if n.is_multiple_of(2) { "online" } else { "unavailable" },
                        "status_msg": format!("s{n}"),
                    }),
                )
            }),
        ),
        (
            "typing",
            Box::new(|| {
                raw_json(
                    "PUT",
                    &format!("/_matrix/client/v3/rooms/{room}/typing/{a}"),
                    Some(&r.a_tok),
                    &json!({ "typing": unique().is_multiple_of(2), "timeout": 5000 }),
                )
            }),
        ),
        (
            "media",
            Box::new(|| {
                let body = vec![b'x'; 64 * 1024];
                raw(
                    "POST",
                    &format!("/_matrix/media/v3/upload?filename=f{}.txt", unique()),
                    Some(&r.a_tok),
                    "text/plain",
                    &body,
                )
            }),
        ),
        (
            "admin",
            Box::new(|| {
                raw_json(
                    "POST",
                    "/_synapse/admin/v1/registration_tokens/new",
                    Some(&admin),
                    &json!({ "uses_allowed": 1 }),
                )
            }),
        ),
    ];
    for (kind, request) in kinds {
        let since = next_batch(&r.s, &r.b_tok).await;
        hang_up_every_way(addr, request).await;
        eprintln!("hung up on {kind}");
        still_live(&r.s, &r.a_tok, &r.b_tok, &r.room, &since).await;
    }
}

/// A TLS connection to a federation listener (whose certificate tests do not check).
async fn tls(addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::{
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
        pki_types::{CertificateDer, ServerName, UnixTime},
        DigitallySignedStruct, SignatureScheme,
    };
    #[derive(Debug)]
    struct AnyCertificate(Arc<CryptoProvider>);
    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// Federation transactions (PDUs and EDUs) from another server whose connection drops at any
/// moment: the room goes on for local readers and for the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_transactions_abandoned_at_any_moment_leave_sync_working() {
    let p = pair().await;
    let a_fed = p.a.server.as_ref().unwrap().federation_addr.unwrap();
    let since = next_batch(&p.a, &p.alice_tok).await;
    let first = p.a.say(&p.alice_tok, &p.room, "before the hang-ups").await;
    let mut leaving = Vec::new();
    for i in 0..24u64 {
        let (_, pdu) = p.forge(
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": format!("in a dropped transaction {i}") }),
        );
        let edus = json!([
            { "edu_type": "m.typing", "content": { "room_id": p.room, "user_id": p.bob, "typing": true } },
            { "edu_type": "m.receipt", "content": { p.room.clone(): { "m.read": { p.bob.clone(): {
                "event_ids": [first], "data": { "ts": i } } } } } },
            { "edu_type": "m.presence", "content": { "push": [ {
                "user_id": p.bob, "presence": "online", "last_active_ago": i, "currently_active": true } ] } },
        ]);
        let body = json!({
            "origin": p.b.name(),
            "origin_server_ts": hearth::util::now_ms(),
            "pdus": [value(&pdu)],
            "edus": edus,
        })
        .to_string()
        .into_bytes();
        let path = format!("/_matrix/federation/v1/send/dropped{i}-{}", unique());
        let mut req = http::Request::builder()
            .method("PUT")
            .uri(&path)
            .body(body.clone())
            .unwrap();
        let auth = hearth_federation::xmatrix::sign_request(
            &p.b.services().signing_key,
            &p.b.config.server_name,
            &p.a.config.server_name,
            &req,
        )
        .unwrap();
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, auth.clone());
        let mut bytes = format!(
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nAuthorization: {}\r\n\r\n",
            p.a.name(),
            body.len(),
            auth.to_str().unwrap()
        )
        .into_bytes();
        bytes.extend_from_slice(&body);
        let how = if i % 4 == 0 {
            HangUp::AfterWriting
        } else {
            HangUp::random()
        };
        leaving.push(tokio::spawn(async move {
            let socket = tls(a_fed).await;
            write_and_leave(socket, &[bytes], how).await;
        }));
    }
    for l in leaving {
        l.await.expect("peer task");
    }
    // Bob's next message, sent the normal way through his server, reaches alice's /sync ...
    let (status, body) =
        p.b.put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/after",
                enc(&p.room)
            ),
            Some(&p.bob_tok),
            json!({ "msgtype": "m.text", "body": "after the dropped transactions" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let event_id = body["event_id"].as_str().unwrap().to_owned();
    sync_until_seen(&p.a, &p.alice_tok, &since, &p.room, &event_id).await;
    // ... and A's own users go on as before.
    still_live(&p.a, &p.alice_tok, &p.alice_tok, &p.room, &since).await;
}

/// One soak client: its account, room and what it has seen.
struct Member {
    user: String,
    token: String,
    room: String,
    since: String,
    /// Timeline events received through /sync, with how many times each came.
    seen: HashMap<String, u32>,
    /// Events whose send was answered 200.
    acked: Vec<String>,
}

const SOAK_FILTER: &str = r#"{"room":{"timeline":{"limit":500}},"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]}}"#;

impl Member {
    /// One incremental /sync; records its timeline events. A gappy (limited) timeline would hide
    /// events from this count, so it fails the test rather than passing it by luck.
    async fn sync(&mut self, s: &TestServer, timeout_ms: u64) -> usize {
        let (status, body) = s
            .get(
                &format!(
                    "/_matrix/client/v3/sync?since={}&timeout={timeout_ms}&filter={}",
                    self.since,
                    enc(SOAK_FILTER)
                ),
                Some(&self.token),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let timeline = &body["rooms"]["join"][&self.room]["timeline"];
        assert_ne!(
            timeline["limited"], true,
            "a timeline gap of over 500 events: {timeline}"
        );
        let mut n = 0;
        for e in timeline["events"].as_array().into_iter().flatten() {
            *self
                .seen
                .entry(e["event_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
            n += 1;
        }
        self.since = body["next_batch"].as_str().unwrap().to_owned();
        n
    }
}

/// 50 clients in five rooms send, sync and hang up at random for 60 seconds (loopback only,
/// bounded); afterwards every acknowledged event is in every member's /sync exactly once, and
/// no event came twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_sending_syncing_and_hanging_up_for_a_minute_lose_nothing() {
    const CLIENTS: usize = 50;
    const ROOMS: usize = 5;
    const SOAK: Duration = Duration::from_secs(60);
    let s = Arc::new(TestServer::start().await);
    let addr = s.server.as_ref().unwrap().client_addr;
    let mut users = Vec::new();
    for i in 0..CLIENTS {
        let (user, token, _) = s.register(&format!("soak{i}"), TEST_PASSWORD).await;
        users.push((user, token));
    }
    let mut rooms = Vec::new();
    for (_, token) in users.iter().take(ROOMS) {
        rooms.push(
            s.create_room(token, json!({ "preset": "public_chat" }))
                .await,
        );
    }
    let mut members = Vec::new();
    for (i, (user, token)) in users.iter().enumerate() {
        let room = rooms[i % ROOMS].clone();
        if i >= ROOMS {
            let (status, body) = s
                .post(
                    &format!("/_matrix/client/v3/join/{}", enc(&room)),
                    Some(token),
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
        members.push(Member {
            user: user.clone(),
            token: token.clone(),
            room,
            since: String::new(),
            seen: HashMap::new(),
            acked: Vec::new(),
        });
    }
    // Everyone's starting point is after every join.
    for m in &mut members {
        m.since = next_batch(&s, &m.token).await;
    }

    let deadline = Instant::now() + SOAK;
    let mut clients = Vec::new();
    for (i, mut m) in members.into_iter().enumerate() {
        let s = s.clone();
        clients.push(tokio::spawn(async move {
            let room = enc(&m.room);
            let me = enc(&m.user);
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let roll = rand::thread_rng().gen_range(0..100);
                let txn = format!("c{i}-{n}");
                let send = || {
                    raw_json(
                        "PUT",
                        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
                        Some(&m.token),
                        &json!({ "msgtype": "m.text", "body": txn }),
                    )
                };
                match roll {
                    // A send that is answered.
                    0..=29 => {
                        let (status, body) = s
                            .put(
                                &format!(
                                    "/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"
                                ),
                                Some(&m.token),
                                json!({ "msgtype": "m.text", "body": txn }),
                            )
                            .await;
                        assert_eq!(status, 200, "{body}");
                        m.acked.push(body["event_id"].as_str().unwrap().to_owned());
                    }
                    // A send whose client leaves.
                    30..=44 => hang_up(addr, &[send()], HangUp::random()).await,
                    // A /sync that is answered.
                    45..=74 => {
                        let timeout = rand::thread_rng().gen_range(0..1500);
                        m.sync(&s, timeout).await;
                    }
                    // A /sync whose client leaves (the token is not advanced).
                    75..=84 => {
                        let sync = raw(
                            "GET",
                            &format!("/_matrix/client/v3/sync?since={}&timeout=1000", m.since),
                            Some(&m.token),
                            "application/json",
                            b"",
                        );
                        hang_up(addr, &[sync], HangUp::random()).await;
                    }
                    // Other writes with stream positions, answered or left.
                    _ => {
                        let last = m.acked.last().cloned();
                        let request = match (roll % 3, last) {
                            (0, Some(event)) => raw_json(
                                "POST",
                                &format!(
                                    "/_matrix/client/v3/rooms/{room}/receipt/m.read/{}",
                                    enc(&event)
                                ),
                                Some(&m.token),
                                &json!({}),
                            ),
                            (1, _) => raw_json(
                                "PUT",
                                &format!("/_matrix/client/v3/sendToDevice/m.x/{txn}"),
                                Some(&m.token),
                                &json!({ "messages": { m.user.clone(): { "*": { "n": n } } } }),
                            ),
                            _ => raw_json(
                                "PUT",
                                &format!("/_matrix/client/v3/rooms/{room}/typing/{me}"),
                                Some(&m.token),
                                &json!({ "typing": false }),
                            ),
                        };
                        hang_up(addr, &[request], HangUp::random()).await;
                    }
                }
                let pause = rand::thread_rng().gen_range(20..120);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            m
        }));
    }
    let mut members = Vec::new();
    for c in clients {
        members.push(c.await.expect("soak client"));
    }

    // Everyone catches up: /sync until a quiet answer (abandoned sends may still be landing).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for m in &mut members {
        while m.sync(&s, 300).await > 0 {}
    }
    let mut acked_in: HashMap<&str, Vec<&str>> = HashMap::new();
    for m in &members {
        let e = acked_in.entry(m.room.as_str()).or_default();
        e.extend(m.acked.iter().map(String::as_str));
    }
    let total: usize = acked_in.values().map(Vec::len).sum();
    assert!(
        total > 500,
        "the soak sent too little to mean anything: {total}"
    );
    for (i, m) in members.iter().enumerate() {
        for event in &acked_in[m.room.as_str()] {
            assert_eq!(
                m.seen.get(*event).copied().unwrap_or(0),
                1,
                "member {i}: acknowledged event {event} seen {} times",
                m.seen.get(*event).copied().unwrap_or(0)
            );
        }
        if let Some((event, n)) = m.seen.iter().find(|(_, n)| **n != 1) {
            panic!("member {i}: {event} came {n} times");
        }
    }
    eprintln!(
        "soak: {total} acknowledged events, each seen once by each of the {} members of its room",
        CLIENTS / ROOMS
    );
    let first = &members[0];
    let other = members
        .iter()
        .find(|m| m.room == first.room && m.token != first.token)
        .unwrap();
    still_live(&s, &first.token, &other.token, &first.room, &other.since).await;
}
