//! Starting and restarting test servers, and small raw-HTTP helpers.

use std::path::PathBuf;

use hearth::{
    config::{Config, Rate},
    server::Server,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const SHARED_SECRET: &str = "test shared secret";

pub struct TestServer {
    pub server: Option<Server>,
    pub config: Config,
    _dir: Option<tempfile::TempDir>,
    pub http: reqwest::Client,
}

pub fn test_config(data: PathBuf) -> Config {
    let mut config = Config::default();
    config.listen.client = "127.0.0.1:0".parse().unwrap();
    // Federation tests turn it on with a port of their own (see `start_federating`).
    config.federation.enabled = false;
    config.listen.federation = "127.0.0.1:0".parse().unwrap();
    config.database.path = data;
    config.database.cache_size = hearth::config::ByteSize(8 << 20);
    config.registration.shared_secret = SHARED_SECRET.into();
    // Tests log in often from one address; the rate-limit test sets its own limits.
    let generous = Rate {
        per_second: 1000.0,
        burst: 1000,
    };
    config.rate_limits.login = generous;
    config.rate_limits.login_failures = generous;
    config.rate_limits.registration = generous;
    config
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        // Hearth's tracing on the test's output when asked for (RUST_LOG=hearth=debug).
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path().join("data"));
        tweak(&mut config);
        let server = Server::start(config.clone()).await.expect("server starts");
        // Clients bind to the real port, and well-known must advertise it.
        config.listen.client = server.client_addr;
        Self {
            server: Some(server),
            config,
            _dir: Some(dir),
            http: reqwest::Client::new(),
        }
    }

    /// A server that federates: its name is `127.0.0.1:<its federation port>`, so peers reach
    /// it without discovery; certificates are self-signed, so peers do not check them.
    pub async fn start_federating() -> Self {
        Self::start_federating_with(|_| {}).await
    }

    /// A federating server with more configuration.
    pub async fn start_federating_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::start_with(|c| {
            c.federation.enabled = true;
            c.federation.verify_certificates = false;
            c.listen.federation = format!("127.0.0.1:{port}").parse().unwrap();
            c.server_name = format!("127.0.0.1:{port}").try_into().unwrap();
            // Peers in tests live on loopback, which is refused by default.
            c.federation.ip_range_allow = vec!["127.0.0.0/8".into()];
            tweak(c);
        })
        .await
    }

    /// Stops the server (as for a restart) without starting it again.
    pub async fn stop(&mut self) {
        let server = self.server.take().expect("running");
        server.shutdown().await.expect("clean shutdown");
    }

    /// Starts a stopped server again on the same folder and ports.
    pub async fn resume(&mut self) {
        assert!(self.server.is_none(), "already running");
        let server = Server::start(self.config.clone())
            .await
            .expect("server restarts");
        self.server = Some(server);
    }

    pub fn name(&self) -> String {
        self.config.server_name.to_string()
    }

    pub fn services(&self) -> &std::sync::Arc<hearth::service::Services> {
        &self.server.as_ref().expect("running").services
    }

    pub fn federation_url(&self) -> String {
        format!(
            "https://{}",
            self.server
                .as_ref()
                .expect("running")
                .federation_addr
                .expect("federation is on")
        )
    }

    pub fn url(&self) -> String {
        self.server.as_ref().expect("running").client_url()
    }

    /// Stops the server (flushing and closing the database) and starts it again on the same folder
    /// and port.
    pub async fn restart(&mut self) {
        let server = self.server.take().expect("running");
        server.shutdown().await.expect("clean shutdown");
        let server = Server::start(self.config.clone())
            .await
            .expect("server restarts");
        self.server = Some(server);
    }

    /// A digest of every row in every keyspace: equal digests mean nothing was stored.
    pub fn db_fingerprint(&self) -> String {
        let services = &self.server.as_ref().expect("running").services;
        let mut hasher = Sha256::new();
        for ks in hearth::storage::schema::KEYSPACES {
            // The search queue empties on its own as the index takes events in; an event that
            // was stored shows in the other keyspaces.
            if ks.name == "search_queue" {
                continue;
            }
            for row in services.db.scan_prefix(ks.cf, &[]) {
                let (k, v) = row.expect("scan");
                hasher.update(ks.name.as_bytes());
                hasher.update((k.len() as u64).to_be_bytes());
                hasher.update(&k);
                hasher.update((v.len() as u64).to_be_bytes());
                hasher.update(&v);
            }
        }
        hex::encode(hasher.finalize())
    }

    pub fn console_secret(&self) -> String {
        self.server
            .as_ref()
            .expect("running")
            .services
            .console_secret
            .clone()
    }

    /// Raw request; returns status and JSON body (Null when the body is not JSON).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::PUT, path, token, Some(body))
            .await
    }

    /// Creates a registration token through the admin API.
    pub async fn registration_token(&self, uses: Option<u64>) -> String {
        let (status, body) = self
            .post(
                "/_synapse/admin/v1/registration_tokens/new",
                Some(&self.console_secret()),
                json!({ "uses_allowed": uses }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    /// Registers `name` with a fresh registration token over raw HTTP; returns (user_id, token,
    /// device_id).
    pub async fn register(&self, name: &str, password: &str) -> (String, String, String) {
        let token = self.registration_token(Some(1)).await;
        let (status, body) = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({ "username": name, "password": password }),
            )
            .await;
        assert_eq!(status, 401, "{body}");
        let session = body["session"].as_str().expect("session").to_owned();
        let (status, body) = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({
                    "username": name,
                    "password": password,
                    "auth": { "type": "m.login.registration_token", "token": token, "session": session },
                }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        (
            body["user_id"].as_str().unwrap().to_owned(),
            body["access_token"].as_str().unwrap().to_owned(),
            body["device_id"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn login(&self, name: &str, password: &str) -> (u16, Value) {
        self.post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": name },
                "password": password,
            }),
        )
        .await
    }
}

/// Polls `check` until it gives a value (every 50 ms, at most `secs` seconds); panics with
/// `what` otherwise. For state that arrives asynchronously, e.g. over federation.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Percent-encodes an ID for a URL path (v3 event IDs contain `/` and `+`).
pub fn enc(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
            | b'!'
            | b'$'
            | b':'
            | b'@' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn assert_err(resp: &(u16, Value), status: u16, errcode: &str) {
    assert_eq!(resp.0, status, "status of {}", resp.1);
    assert_eq!(resp.1["errcode"], errcode, "errcode of {}", resp.1);
}

/// Password of the accounts the helpers below create.
pub const TEST_PASSWORD: &str = "a long password";

impl TestServer {
    /// Creates a room; its ID.
    pub async fn create_room(&self, token: &str, body: Value) -> String {
        let (status, resp) = self
            .post("/_matrix/client/v3/createRoom", Some(token), body)
            .await;
        assert_eq!(status, 200, "{resp}");
        resp["room_id"].as_str().unwrap().to_owned()
    }

    /// Joins a room by ID or alias, expecting success.
    pub async fn join(&self, token: &str, room: &str) {
        let (status, body) = self
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(room)),
                Some(token),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Sends a text message whose transaction ID is its text; the event ID.
    pub async fn say(&self, token: &str, room: &str, text: &str) -> String {
        let (status, body) = self
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{room}/send/m.room.message/{}",
                    enc(text)
                ),
                Some(token),
                json!({ "msgtype": "m.text", "body": text }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["event_id"].as_str().unwrap().to_owned()
    }

    /// A matrix-sdk client logged in as `name` (a new device each time).
    pub async fn sdk_login(&self, name: &str) -> matrix_sdk::Client {
        let client = matrix_sdk::Client::builder()
            .homeserver_url(self.url())
            .build()
            .await
            .expect("client builds");
        client
            .matrix_auth()
            .login_username(name, TEST_PASSWORD)
            .send()
            .await
            .expect("login");
        client
    }

    /// Registers `name` and logs a matrix-sdk client in.
    pub async fn sdk_user(&self, name: &str) -> matrix_sdk::Client {
        self.register(name, TEST_PASSWORD).await;
        self.sdk_login(name).await
    }
}
