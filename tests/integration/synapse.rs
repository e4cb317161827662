//! A real Synapse for interop tests: started from a Python virtualenv on loopback with a fresh
//! SQLite database in a temporary folder, killed and removed on drop.
//!
//! Its server name is `127.0.0.1:<federation port>`, so Hearth reaches it by IP literal without
//! discovery, as Hearth's `TestServer::start_federating` does the other way. The client API is
//! plain HTTP; federation is HTTPS with a self-signed certificate (Synapse speaks federation over
//! TLS only), and neither side checks the other's certificate.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

/// How long Synapse may take to answer /versions (a first start creates its schema).
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Synapse {
    child: Child,
    dir: tempfile::TempDir,
    server_name: String,
    client_port: u16,
    federation_port: u16,
    shared_secret: String,
    /// Plain HTTP to the client API.
    pub http: reqwest::Client,
    /// HTTPS to the federation API, accepting Synapse's self-signed certificate.
    pub federation_http: reqwest::Client,
    /// How long the start took, until /versions answered.
    pub startup: Duration,
}

/// The virtualenv with matrix-synapse (made on first use; see `peers`).
fn venv() -> PathBuf {
    crate::peers::python_env()
}

/// Two distinct free loopback ports, held together so the kernel cannot hand out one twice.
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

fn write(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The last `lines` lines of a file, or a note that it cannot be read.
fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// Every rate limit Synapse has, far above anything a test does.
fn generous_rate_limits(config: &mut Value) {
    let rl = json!({ "per_second": 1_000_000, "burst_count": 1_000_000 });
    for key in [
        "rc_message",
        "rc_registration",
        "rc_registration_token_validity",
        "rc_joins_per_room",
        "rc_third_party_invite",
        "rc_room_creation",
        "rc_admin_redaction",
        "rc_3pid_validation",
        "rc_key_requests",
        "rc_media_create",
        "rc_delayed_event_mgmt",
        "rc_reports",
        "rc_profile",
        "rc_user_directory",
    ] {
        config[key] = rl.clone();
    }
    config["rc_login"] = json!({ "address": rl, "account": rl, "failed_attempts": rl });
    config["rc_joins"] = json!({ "local": rl, "remote": rl });
    config["rc_invites"] = json!({ "per_room": rl, "per_user": rl, "per_issuer": rl });
    config["rc_presence"] = json!({ "per_user": rl });
    // Federation requests from one peer: never delayed, never refused.
    config["rc_federation"] = json!({
        "window_size": 1000,
        "sleep_limit": 1_000_000,
        "sleep_delay": 1,
        "reject_limit": 1_000_000,
        "concurrent": 1000,
    });
}

impl Synapse {
    /// Starts a Synapse with the default test configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a Synapse after `tweak` has changed its homeserver.yaml (given as JSON, which YAML
    /// reads as is).
    pub async fn start_with(tweak: impl FnOnce(&mut Value)) -> Self {
        let venv = venv();
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let (client_port, federation_port) = free_ports();
        let server_name = format!("127.0.0.1:{federation_port}");
        let shared_secret = format!("{:032x}", rand::random::<u128>());

        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .expect("self-signed certificate");
        write(&d.join("tls.crt"), cert.cert.pem());
        write(&d.join("tls.key"), cert.key_pair.serialize_pem());
        // Synapse's signing key file: algorithm, version, unpadded base64 of the 32-byte seed.
        let seed =
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(rand::random::<[u8; 32]>());
        write(&d.join("signing.key"), format!("ed25519 a_test {seed}\n"));

        let log_file = d.join("homeserver.log");
        let log_config = json!({
            "version": 1,
            "formatters": { "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"
            } },
            // Synapse's log records carry a request context the formatter above prints.
            "filters": { "context": { "()": "synapse.logging.context.LoggingContextFilter" } },
            "handlers": { "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filters": ["context"],
                "filename": log_file,
            } },
            // SYNAPSE_LOG=INFO (or DEBUG) for more when diagnosing, with
            // SYNAPSE_LOG_DIR to keep the log (see `drop`).
            "root": {
                "level": std::env::var("SYNAPSE_LOG").unwrap_or_else(|_| "WARNING".into()),
                "handlers": ["file"],
            },
            "disable_existing_loggers": false,
        });
        write(&d.join("log.yaml"), log_config.to_string());

        let mut config = json!({
            "server_name": server_name,
            "report_stats": false,
            "signing_key_path": d.join("signing.key"),
            "log_config": d.join("log.yaml"),
            "media_store_path": d.join("media"),
            "database": { "name": "sqlite3", "args": { "database": d.join("homeserver.db") } },
            "listeners": [
                {
                    "port": client_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": false,
                    "x_forwarded": false,
                    "resources": [{ "names": ["client", "media"], "compress": false }],
                },
                {
                    "port": federation_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": true,
                    "x_forwarded": false,
                    "resources": [{ "names": ["federation"], "compress": false }],
                },
            ],
            "tls_certificate_path": d.join("tls.crt"),
            "tls_private_key_path": d.join("tls.key"),
            // Peers on loopback have self-signed certificates and no notary to vouch for them.
            "federation_verify_certificates": false,
            "trusted_key_servers": [],
            "suppress_key_server_warning": true,
            // The default list forbids 127.0.0.0/8, which is where every peer of a test lives.
            "ip_range_blacklist": [],
            "registration_shared_secret": shared_secret,
            "enable_registration": false,
            // Passwords are only test passwords; the default 12 rounds cost a quarter second each.
            "bcrypt_rounds": 4,
            "allow_public_rooms_over_federation": true,
            // Synapse lets nobody publish to its room directory unless a rule allows it.
            "room_list_publication_rules": [{ "action": "allow" }],
            "use_presence": true,
            // Tests poll /sync with the same parameters; Synapse would answer from a cache for
            // two minutes.
            "caches": { "sync_response_cache_duration": 0 },
            // A peer that failed once (not started yet, restarting) is retried at once rather
            // than after Synapse's default ten minutes.
            // (Durations in milliseconds: Synapse's suffixes stop at seconds.)
            "federation": {
                "destination_min_retry_interval": 100,
                "destination_max_retry_interval": 1000,
                "max_short_retry_delay": 500,
                "max_long_retry_delay": 2000,
            },
        });
        generous_rate_limits(&mut config);
        tweak(&mut config);
        write(&d.join("homeserver.yaml"), config.to_string());

        let stdout = std::fs::File::create(d.join("stdout.log")).expect("stdout log");
        let stderr = stdout.try_clone().expect("stdout log");
        let started = Instant::now();
        let child = Command::new(venv.join("bin/python"))
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(d.join("homeserver.yaml"))
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting Synapse from {}: {e}", venv.display()));

        let mut synapse = Self {
            child,
            dir,
            server_name,
            client_port,
            federation_port,
            shared_secret,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            federation_http: reqwest::Client::builder()
                .no_proxy()
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap(),
            startup: Duration::ZERO,
        };
        synapse.wait_until_up().await;
        synapse.startup = started.elapsed();
        eprintln!(
            "Synapse {} answers after {:.1?}",
            synapse.server_name, synapse.startup
        );
        synapse
    }

    async fn wait_until_up(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("{}/_matrix/client/versions", self.client_url());
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "Synapse exited during startup ({status}); its output:\n{}\nits log:\n{}",
                    tail(&self.dir.path().join("stdout.log"), 40),
                    self.log_tail(40)
                );
            }
            if let Ok(resp) = self.http.get(&url).send().await {
                if resp.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Synapse did not answer {url} within {START_TIMEOUT:?}; its log:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `lines` lines of Synapse's log (warnings and errors, unless SYNAPSE_LOG
    /// says otherwise).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.path().join("homeserver.log"), lines)
    }

    pub fn server_name(&self) -> ruma::OwnedServerName {
        self.server_name
            .as_str()
            .try_into()
            .expect("a valid server name")
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn federation_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.federation_port)
    }

    /// Registers a non-admin user through the shared-secret admin API; (user ID, access token).
    pub async fn register(&self, name: &str) -> (String, String) {
        const PATH: &str = "/_synapse/admin/v1/register";
        let (status, body) = self.get(PATH, None).await;
        assert_eq!(status, 200, "nonce: {body}");
        let nonce = body["nonce"].as_str().expect("nonce").to_owned();
        let password = crate::common::TEST_PASSWORD;
        // Synapse's MAC: HMAC-SHA1 over the NUL-separated nonce, user, password and admin flag.
        let mut mac =
            Hmac::<sha1::Sha1>::new_from_slice(self.shared_secret.as_bytes()).expect("any key");
        mac.update(format!("{nonce}\0{name}\0{password}\0notadmin").as_bytes());
        let mac = hex::encode(mac.finalize().into_bytes());
        let (status, body) = self
            .post(
                PATH,
                None,
                json!({
                    "nonce": nonce,
                    "username": name,
                    "password": password,
                    "admin": false,
                    "mac": mac,
                }),
            )
            .await;
        assert_eq!(status, 200, "register {name}: {body}");
        (
            body["user_id"].as_str().expect("user_id").to_owned(),
            body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
        )
    }

    /// Logs a matrix-sdk client in as `name` (registered with `register`).
    pub async fn sdk_login(&self, name: &str) -> matrix_sdk::Client {
        let client = matrix_sdk::Client::builder()
            .homeserver_url(self.client_url())
            .build()
            .await
            .expect("client builds");
        client
            .matrix_auth()
            .login_username(name, crate::common::TEST_PASSWORD)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name} logs in on Synapse: {e}"));
        client
    }

    /// Registers `name` and logs a matrix-sdk client in.
    pub async fn sdk_user(&self, name: &str) -> matrix_sdk::Client {
        self.register(name).await;
        self.sdk_login(name).await
    }

    /// Raw request to the client API; status and JSON body (Null when the body is not JSON).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.client_url()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
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

    /// Unauthenticated request to the federation API (the key endpoints need no signature).
    pub async fn federation_request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .federation_http
            .request(method, format!("{}{path}", self.federation_url()));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        // A failing test unwinds through here: Synapse's own words are the quickest way to why.
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of Synapse's log ({}) ---\n{}",
                self.server_name,
                self.log_tail(40)
            );
        }
        // Kept for reading after the run when asked (the folder below goes away).
        if let Some(keep) = std::env::var_os("SYNAPSE_LOG_DIR") {
            let to = PathBuf::from(keep).join(format!(
                "synapse-{}.log",
                self.server_name.replace(':', "_")
            ));
            let _ = std::fs::copy(self.dir.path().join("homeserver.log"), to);
        }
        // SIGKILL: the folder holding its database goes next, nothing there needs flushing.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
