//! Configuration: embedded defaults, an optional TOML file, then `HEARTH_SECTION__KEY` environment
//! overrides, validated once at start. An invalid option stops the start with its name and reason.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use ruma::OwnedServerName;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The name in every user and room ID of this server; cannot change once users exist.
    pub server_name: OwnedServerName,
    pub listen: Listen,
    pub database: Database,
    pub registration: Registration,
    pub auth: Auth,
    pub limits: Limits,
    pub rate_limits: RateLimits,
    pub federation: Federation,
    pub media: Media,
    pub well_known: WellKnown,
    pub presence: Presence,
    pub appservice: Appservice,
    pub push: Push,
    pub user_directory: UserDirectory,
    pub delayed_events: DelayedEvents,
    pub turn: Turn,
    pub matrix_rtc: MatrixRtc,
    pub log: Log,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    pub client: SocketAddr,
    pub federation: SocketAddr,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    pub path: PathBuf,
    /// RocksDB block cache, shared by all keyspaces.
    pub cache_size: ByteSize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    Disabled,
    Token,
    Open,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registration {
    pub mode: RegistrationMode,
    pub shared_secret: String,
    pub password_min_length: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Lifetime of access tokens issued to clients that asked for a refresh token.
    pub refreshable_access_token_lifetime: HumanDuration,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest JSON request body the client API accepts.
    pub max_request_size: ByteSize,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Login attempts per client address.
    pub login: Rate,
    /// Failed logins per account.
    pub login_failures: Rate,
    /// Registration requests per client address.
    pub registration: Rate,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Federation {
    pub enabled: bool,
    pub verify_certificates: bool,
    pub tls_cert: String,
    pub tls_key: String,
    /// Longest wait between retries of a peer that does not answer.
    pub max_backoff: HumanDuration,
    /// Address ranges never contacted as peers, on top of the built-in non-public ranges.
    pub ip_range_deny: Vec<String>,
    /// Address ranges contacted even if denied (e.g. peers on a private network).
    pub ip_range_allow: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Media {
    /// Largest upload; also the largest remote file or preview image stored.
    pub max_upload_size: ByteSize,
    /// Where the files live: a folder (`path`) or an S3-compatible bucket (`[media.s3]`).
    pub backend: MediaBackend,
    /// Folder of the media files; empty = `<database.path>/media`.
    pub path: String,
    pub s3: S3,
    /// Serve the deprecated unauthenticated `/_matrix/media/v3/download` and `/thumbnail`; when
    /// off they answer 404 M_NOT_FOUND, as the spec allows for frozen legacy media.
    pub legacy_endpoints: bool,
    /// Total size of the media a user may have uploaded; 0 = no quota.
    pub user_quota: ByteSize,
    /// How long an ID from `POST /_matrix/media/v1/create` waits for its upload.
    pub unused_expiry: HumanDuration,
    /// Most unexpired IDs from `/create` a user may have waiting for an upload.
    pub max_pending_uploads: u32,
    pub retention: MediaRetention,
    pub url_preview: UrlPreview,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaBackend {
    Fs,
    S3,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3 {
    pub bucket: String,
    /// Base URL of an S3-compatible server (MinIO, Garage, Ceph...); empty = AWS for `region`.
    pub endpoint: String,
    pub region: String,
    /// Empty = the credentials of the machine's or pod's role.
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Folder inside the bucket the files are kept under; empty = the bucket's root.
    pub prefix: String,
    /// `endpoint/bucket/key` URLs rather than `bucket.endpoint/key`, as most S3-compatible
    /// servers expect.
    pub path_style: bool,
}

impl Default for S3 {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            endpoint: String::new(),
            region: "us-east-1".to_owned(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            prefix: String::new(),
            path_style: true,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaRetention {
    /// Local media older than this is deleted; empty or 0 = kept forever.
    pub local_max_age: MaxAge,
    /// Cached remote media older than this is deleted; empty or 0 = kept forever.
    pub remote_max_age: MaxAge,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UrlPreview {
    pub enabled: bool,
    /// CIDR ranges never fetched, in addition to the built-in private, loopback, link-local and
    /// other non-public ranges.
    pub deny: Vec<String>,
    /// CIDR ranges fetched even when denied (built-in or `deny`).
    pub allow: Vec<String>,
    /// Largest page or image fetched.
    pub max_size: ByteSize,
    /// Time limit of one preview, redirects and image included.
    pub timeout: HumanDuration,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WellKnown {
    /// Public base URL clients should use; empty = not advertised.
    pub client: String,
    /// `host:port` peers should federate with; empty = `server_name` (with the federation port).
    pub server: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Presence {
    /// Track and share presence at all.
    pub enabled: bool,
    /// A user with no activity for this long shows as unavailable.
    pub idle_timeout: HumanDuration,
    /// A user with no /sync for this long shows as offline.
    pub offline_timeout: HumanDuration,
}

impl Default for Presence {
    fn default() -> Self {
        Self {
            enabled: true,
            idle_timeout: HumanDuration(Duration::from_secs(300)),
            offline_timeout: HumanDuration(Duration::from_secs(30)),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Appservice {
    /// Registration files of application services (bridges, bots): files, or folders whose
    /// `.yaml`, `.yml` and `.json` files are all read. Checked at start.
    pub registration_files: Vec<PathBuf>,
    /// How long one request to an appservice may take.
    pub timeout: HumanDuration,
    /// The longest wait between two attempts to reach an appservice that is down.
    pub max_backoff: HumanDuration,
}

impl Default for Appservice {
    fn default() -> Self {
        Self {
            registration_files: Vec::new(),
            timeout: HumanDuration(Duration::from_secs(30)),
            max_backoff: HumanDuration(Duration::from_secs(300)),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserDirectory {
    /// Every local user can be found by everyone here, not only by those sharing a room with
    /// them (or in a public room), which is the spec's rule.
    pub search_all_users: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Push {
    /// Send the event's content to push gateways (off: only IDs, sender and room name).
    pub include_content: bool,
    /// How long one request to a push gateway may take.
    pub timeout: HumanDuration,
    /// The longest wait between two attempts to reach a push gateway that is down.
    pub max_backoff: HumanDuration,
    /// A notification a gateway has refused to take for this long is dropped.
    pub max_age: HumanDuration,
    /// Address ranges never contacted as gateways, on top of the built-in non-public ranges.
    pub ip_range_deny: Vec<String>,
    /// Address ranges contacted even if denied (e.g. a gateway on the local network).
    pub ip_range_allow: Vec<String>,
}

impl Default for Push {
    fn default() -> Self {
        Self {
            include_content: true,
            timeout: HumanDuration(Duration::from_secs(15)),
            max_backoff: HumanDuration(Duration::from_secs(600)),
            max_age: HumanDuration(Duration::from_secs(24 * 3600)),
            ip_range_deny: Vec::new(),
            ip_range_allow: Vec::new(),
        }
    }
}

/// Delayed events (MSC4140): events the server sends for a client later, such as the "left the
/// call" state event Element Call schedules while it is in a call.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DelayedEvents {
    /// Longest delay a client may ask for; 0 turns delayed events off.
    pub max_delay: HumanDuration,
    /// Most delayed events one user may have scheduled at once.
    pub max_per_user: u32,
}

impl Default for DelayedEvents {
    fn default() -> Self {
        Self {
            max_delay: HumanDuration(Duration::from_secs(24 * 3600)),
            max_per_user: 100,
        }
    }
}

impl DelayedEvents {
    pub fn enabled(&self) -> bool {
        !self.max_delay.0.is_zero()
    }
}

/// The TURN server handed to VoIP clients by `/voip/turnServer`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Turn {
    /// `turn:` / `turns:` URIs of the server; empty = no TURN server.
    pub uris: Vec<String>,
    /// coturn's `static-auth-secret`: each user gets time-limited credentials derived from it.
    pub shared_secret: String,
    /// How long those credentials stay valid.
    pub user_lifetime: HumanDuration,
    /// Fixed credentials, when there is no shared secret.
    pub username: String,
    pub password: String,
}

impl Default for Turn {
    fn default() -> Self {
        Self {
            uris: Vec::new(),
            shared_secret: String::new(),
            user_lifetime: HumanDuration(Duration::from_secs(3600)),
            username: String::new(),
            password: String::new(),
        }
    }
}

/// MatrixRTC (MSC4143) discovery: the transports (foci) calls can use, e.g. a LiveKit SFU.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatrixRtc {
    /// Each a table with a string `type` and that type's fields, handed to clients as written.
    /// Named as in Synapse (`matrix_rtc.transports`) and MSC4143's current text; the well-known
    /// calls them foci.
    pub transports: Vec<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A tracing filter, e.g. "info" or "hearth=debug,info"; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost:8448"
                .try_into()
                .expect("valid default server name"),
            listen: Listen::default(),
            database: Database::default(),
            registration: Registration::default(),
            auth: Auth::default(),
            limits: Limits::default(),
            rate_limits: RateLimits::default(),
            federation: Federation::default(),
            media: Media::default(),
            well_known: WellKnown::default(),
            presence: Presence::default(),
            appservice: Appservice::default(),
            push: Push::default(),
            user_directory: UserDirectory::default(),
            delayed_events: DelayedEvents::default(),
            turn: Turn::default(),
            matrix_rtc: MatrixRtc::default(),
            log: Log::default(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            client: ([127, 0, 0, 1], 8008).into(),
            federation: ([127, 0, 0, 1], 8448).into(),
        }
    }
}

impl Default for Database {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./hearth-data"),
            cache_size: ByteSize(64 << 20),
        }
    }
}

impl Default for Registration {
    fn default() -> Self {
        Self {
            mode: RegistrationMode::Token,
            shared_secret: String::new(),
            password_min_length: 8,
        }
    }
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            refreshable_access_token_lifetime: HumanDuration(Duration::from_secs(300)),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_size: ByteSize(1 << 20),
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            login: Rate {
                per_second: 0.2,
                burst: 10,
            },
            login_failures: Rate {
                per_second: 0.05,
                burst: 5,
            },
            registration: Rate {
                per_second: 0.2,
                burst: 5,
            },
        }
    }
}

impl Default for Federation {
    fn default() -> Self {
        Self {
            enabled: true,
            verify_certificates: true,
            tls_cert: String::new(),
            tls_key: String::new(),
            max_backoff: HumanDuration(Duration::from_secs(3600)),
            ip_range_deny: Vec::new(),
            ip_range_allow: Vec::new(),
        }
    }
}

impl Default for Media {
    fn default() -> Self {
        Self {
            max_upload_size: ByteSize(50 << 20),
            backend: MediaBackend::Fs,
            path: String::new(),
            s3: S3::default(),
            legacy_endpoints: true,
            user_quota: ByteSize(0),
            unused_expiry: HumanDuration(Duration::from_secs(24 * 3600)),
            max_pending_uploads: 50,
            retention: MediaRetention::default(),
            url_preview: UrlPreview::default(),
        }
    }
}

impl Default for UrlPreview {
    fn default() -> Self {
        Self {
            enabled: true,
            deny: Vec::new(),
            allow: Vec::new(),
            max_size: ByteSize(10 << 20),
            timeout: HumanDuration(Duration::from_secs(10)),
        }
    }
}

impl Media {
    /// The folder of the media files.
    pub fn folder(&self, database: &Database) -> PathBuf {
        if self.path.is_empty() {
            database.path.join("media")
        } else {
            PathBuf::from(&self.path)
        }
    }
}

/// Parses a CIDR range; a bare address is a range of one.
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{s}` is not a CIDR range like 10.0.0.0/8 or an address"))
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// Why the configuration was refused; the message names the option.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads the defaults, then `file` if given, then `HEARTH_*` variables from `env`.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut value = toml::Value::try_from(Config::default())
            .map_err(|e| ConfigError(format!("default configuration: {e}")))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
            let from_file: toml::Value = toml::from_str(&text)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            merge(&mut value, from_file);
        }
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("HEARTH_") else {
                continue;
            };
            if rest == "CONFIG" {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_lowercase()).collect();
            set_from_env(&mut value, &path, &raw)
                .map_err(|reason| ConfigError(format!("{name}: {reason}")))?;
        }
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError(format!("invalid option `{path}`: {}", e.into_inner()))
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |option: &str, reason: &str| {
            Err(ConfigError(format!("invalid option `{option}`: {reason}")))
        };
        if self.database.path.as_os_str().is_empty() {
            return bad("database.path", "must not be empty");
        }
        for (name, rate) in [
            ("rate_limits.login", self.rate_limits.login),
            (
                "rate_limits.login_failures",
                self.rate_limits.login_failures,
            ),
            ("rate_limits.registration", self.rate_limits.registration),
        ] {
            if !(rate.per_second.is_finite() && rate.per_second > 0.0) || rate.burst == 0 {
                return bad(name, "per_second must be positive and burst at least 1");
            }
        }
        if self.federation.tls_cert.is_empty() != self.federation.tls_key.is_empty() {
            return bad(
                "federation.tls_cert",
                "tls_cert and tls_key must be set together",
            );
        }
        let client = &self.well_known.client;
        if !(client.is_empty() || client.starts_with("https://") || client.starts_with("http://")) {
            return bad("well_known.client", "must be an http(s) URL");
        }
        if self.limits.max_request_size.0 < 1024 {
            return bad("limits.max_request_size", "must be at least 1K");
        }
        if self.media.max_upload_size.0 == 0 {
            return bad("media.max_upload_size", "must be more than 0");
        }
        if self.media.backend == MediaBackend::S3 {
            let s3 = &self.media.s3;
            if s3.bucket.is_empty() {
                return bad(
                    "media.s3.bucket",
                    "must be set when media.backend is \"s3\"",
                );
            }
            if !(s3.endpoint.is_empty()
                || s3.endpoint.starts_with("https://")
                || s3.endpoint.starts_with("http://"))
            {
                return bad("media.s3.endpoint", "must be an http(s) URL");
            }
            if s3.access_key_id.is_empty() != s3.secret_access_key.is_empty() {
                return bad(
                    "media.s3.access_key_id",
                    "access_key_id and secret_access_key must be set together",
                );
            }
        }
        if self.media.unused_expiry.0.is_zero() {
            return bad("media.unused_expiry", "must be more than 0");
        }
        let preview = &self.media.url_preview;
        for (name, list) in [
            ("media.url_preview.deny", &preview.deny),
            ("media.url_preview.allow", &preview.allow),
            ("federation.ip_range_deny", &self.federation.ip_range_deny),
            ("federation.ip_range_allow", &self.federation.ip_range_allow),
            ("push.ip_range_deny", &self.push.ip_range_deny),
            ("push.ip_range_allow", &self.push.ip_range_allow),
        ] {
            for item in list {
                if let Err(reason) = parse_cidr(item) {
                    return bad(name, &reason);
                }
            }
        }
        if preview.timeout.0.is_zero() || preview.max_size.0 == 0 {
            return bad(
                "media.url_preview",
                "timeout and max_size must be more than 0",
            );
        }
        if self.push.timeout.0.is_zero() {
            return bad("push.timeout", "must be more than 0");
        }
        if self.delayed_events.max_per_user == 0 {
            return bad(
                "delayed_events.max_per_user",
                "must be at least 1 (max_delay = \"0\" turns delayed events off)",
            );
        }
        self.validate_turn()?;
        for transport in &self.matrix_rtc.transports {
            if !transport.get("type").is_some_and(|t| t.is_string()) {
                return bad(
                    "matrix_rtc.transports",
                    "every transport needs a string `type`, e.g. { type = \"livekit\", livekit_service_url = \"https://...\" }",
                );
            }
        }
        Ok(())
    }

    fn validate_turn(&self) -> Result<(), ConfigError> {
        let bad = |option: &str, reason: &str| {
            Err(ConfigError(format!("invalid option `{option}`: {reason}")))
        };
        let turn = &self.turn;
        for uri in &turn.uris {
            if !["turn:", "turns:", "stun:", "stuns:"]
                .iter()
                .any(|scheme| uri.starts_with(scheme))
            {
                return bad(
                    "turn.uris",
                    &format!("`{uri}` is not a turn:, turns:, stun: or stuns: URI"),
                );
            }
        }
        if turn.username.is_empty() != turn.password.is_empty() {
            return bad(
                "turn.username",
                "username and password must be set together",
            );
        }
        let has_credentials = !turn.shared_secret.is_empty() || !turn.username.is_empty();
        if !turn.uris.is_empty() && !has_credentials {
            return bad(
                "turn.uris",
                "needs turn.shared_secret (coturn's static-auth-secret) or turn.username and turn.password",
            );
        }
        if turn.uris.is_empty() && has_credentials {
            return bad("turn.uris", "credentials are set but no TURN server URI");
        }
        if turn.user_lifetime.0.as_secs() == 0 {
            return bad("turn.user_lifetime", "must be at least 1s");
        }
        Ok(())
    }

    /// The public base URL to advertise to clients, when one is configured. A guess from the
    /// listen address would send remote clients to an address they cannot reach.
    pub fn client_base_url(&self) -> Option<String> {
        (!self.well_known.client.is_empty())
            .then(|| self.well_known.client.trim_end_matches('/').to_owned())
    }

    /// The `host:port` advertised in `/.well-known/matrix/server`.
    pub fn federation_delegation(&self) -> String {
        if !self.well_known.server.is_empty() {
            return self.well_known.server.clone();
        }
        if self.server_name.port().is_some() {
            self.server_name.to_string()
        } else {
            format!("{}:{}", self.server_name, self.listen.federation.port())
        }
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Sets one option from an environment variable, typed like the option it replaces.
fn set_from_env(root: &mut toml::Value, path: &[String], raw: &str) -> Result<(), String> {
    let mut node = root;
    for (i, part) in path.iter().enumerate() {
        let table = node
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is not a section", path[..i].join(".")))?;
        let last = i + 1 == path.len();
        let Some(child) = table.get_mut(part) else {
            return Err(format!("unknown option `{}`", path[..=i].join(".")));
        };
        if last {
            *child = match child {
                toml::Value::String(_) => toml::Value::String(raw.to_owned()),
                toml::Value::Integer(_) => toml::Value::Integer(
                    raw.parse()
                        .map_err(|_| format!("`{raw}` is not an integer"))?,
                ),
                toml::Value::Float(_) => toml::Value::Float(
                    raw.parse()
                        .map_err(|_| format!("`{raw}` is not a number"))?,
                ),
                toml::Value::Boolean(_) => toml::Value::Boolean(
                    raw.parse()
                        .map_err(|_| format!("`{raw}` is not true or false"))?,
                ),
                _ => toml::from_str::<toml::Table>(&format!("v = {raw}"))
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .ok_or_else(|| format!("`{raw}` is not a TOML value"))?,
            };
            return Ok(());
        }
        node = child;
    }
    Err("empty option name".into())
}

/// A size in bytes, written as a number or with a K, M or G suffix (powers of 1024).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (num, mult) = match s.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let mult = match c.to_ascii_uppercase() {
                    'K' => 1u64 << 10,
                    'M' => 1 << 20,
                    'G' => 1 << 30,
                    'B' => 1,
                    _ => return Err(format!("unknown size suffix in `{s}` (use K, M or G)")),
                };
                (&s[..i], mult)
            }
            _ => (s, 1),
        };
        let n: u64 = num
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a size like 512K, 50M or 1G"))?;
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (suffix, unit) in [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)] {
            if n >= unit && n.is_multiple_of(unit) {
                return write!(f, "{}{suffix}", n / unit);
            }
        }
        write!(f, "{n}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

/// An age limit: a duration like `30d`, or empty (or 0) for none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaxAge(pub Option<Duration>);

impl FromStr for MaxAge {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s.trim_start_matches('0').is_empty() {
            return Ok(MaxAge(None));
        }
        let d = s.parse::<HumanDuration>()?.0;
        Ok(MaxAge((!d.is_zero()).then_some(d)))
    }
}

impl fmt::Display for MaxAge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => HumanDuration(d).fmt(f),
            None => Ok(()),
        }
    }
}

impl Serialize for MaxAge {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MaxAge {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(0) => Ok(MaxAge(None)),
            Raw::N(_) => Err(de::Error::custom("needs a unit, like 30d")),
            Raw::S(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

/// A duration written like `500ms`, `30s`, `5m`, `12h` or `7d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        // Zero needs no unit ("0" turns off the options that a zero duration turns off).
        if !s.is_empty() && s.bytes().all(|b| b == b'0') {
            return Ok(HumanDuration(Duration::ZERO));
        }
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{s}` needs a unit (ms, s, m, h, d)"))?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration like 30s or 5m"))?;
        let ms = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("unknown unit `{unit}` in `{s}` (ms, s, m, h, d)")),
        };
        Ok(HumanDuration(Duration::from_millis(
            n.checked_mul(ms)
                .ok_or_else(|| format!("`{s}` is too long"))?,
        )))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis() as u64;
        for (unit, size) in [
            ("d", 86_400_000u64),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms >= size && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c.server_name.as_str(), "localhost:8448");
        assert_eq!(c.listen.client.to_string(), "127.0.0.1:8008");
        assert_eq!(c.registration.mode, RegistrationMode::Token);
        assert_eq!(c.media.max_upload_size, ByteSize(50 << 20));
    }

    #[test]
    fn env_overrides_are_typed_by_option() {
        let c = Config::load(
            None,
            env(&[
                ("HEARTH_REGISTRATION__SHARED_SECRET", "12345"),
                ("HEARTH_FEDERATION__ENABLED", "false"),
                ("HEARTH_MEDIA__MAX_UPLOAD_SIZE", "2M"),
                ("HEARTH_SERVER_NAME", "example.org"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.registration.shared_secret, "12345");
        assert!(!c.federation.enabled);
        assert_eq!(c.media.max_upload_size, ByteSize(2 << 20));
        assert_eq!(c.federation_delegation(), "example.org:8448");
    }

    #[test]
    fn invalid_options_name_themselves() {
        let e = Config::load(None, env(&[("HEARTH_LISTEN__CLIENT", "nowhere")])).unwrap_err();
        assert!(e.to_string().contains("listen.client"), "{e}");
        let e = Config::load(None, env(&[("HEARTH_LISTEN__CLINET", "1.2.3.4:5")])).unwrap_err();
        assert!(e.to_string().contains("listen.clinet"), "{e}");
        let e = Config::load(None, env(&[("HEARTH_REGISTRATION__MODE", "sometimes")])).unwrap_err();
        assert!(e.to_string().contains("registration.mode"), "{e}");
        let e = Config::load(None, env(&[("HEARTH_SERVER_NAME", "bad name!")])).unwrap_err();
        assert!(e.to_string().contains("server_name"), "{e}");
        let e = Config::load(None, env(&[("HEARTH_MEDIA__MAX_UPLOAD_SIZE", "50Q")])).unwrap_err();
        assert!(e.to_string().contains("media.max_upload_size"), "{e}");
        let e = Config::load(None, env(&[("HEARTH_MEDIA__BACKEND", "s3")])).unwrap_err();
        assert!(e.to_string().contains("media.s3.bucket"), "{e}");
        let s3 = |extra: (&str, &str)| {
            env(&[
                ("HEARTH_MEDIA__BACKEND", "s3"),
                ("HEARTH_MEDIA__S3__BUCKET", "media"),
                extra,
            ])
        };
        let e = Config::load(None, s3(("HEARTH_MEDIA__S3__ENDPOINT", "minio:9000"))).unwrap_err();
        assert!(e.to_string().contains("media.s3.endpoint"), "{e}");
        let e = Config::load(None, s3(("HEARTH_MEDIA__S3__ACCESS_KEY_ID", "k"))).unwrap_err();
        assert!(e.to_string().contains("media.s3.access_key_id"), "{e}");
        let c = Config::load(None, s3(("HEARTH_MEDIA__S3__PATH_STYLE", "false"))).unwrap();
        assert_eq!(c.media.backend, MediaBackend::S3);
        assert!(!c.media.s3.path_style);
    }

    #[test]
    fn file_values_merge_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.toml");
        std::fs::write(&path, "[registration]\nmode = \"open\"\n").unwrap();
        let c = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(c.registration.mode, RegistrationMode::Open);
        assert_eq!(c.listen.client.port(), 8008);
        std::fs::write(&path, "[registration]\nmoed = \"open\"\n").unwrap();
        let e = Config::load(Some(&path), Vec::new()).unwrap_err();
        assert!(e.to_string().contains("registration.moed"), "{e}");
    }

    #[test]
    fn sizes_and_durations_round_trip() {
        assert_eq!("50M".parse::<ByteSize>().unwrap().to_string(), "50M");
        assert_eq!("1536".parse::<ByteSize>().unwrap().0, 1536);
        assert_eq!("5m".parse::<HumanDuration>().unwrap().0.as_secs(), 300);
        assert!("5".parse::<HumanDuration>().is_err());
        assert_eq!("".parse::<MaxAge>().unwrap(), MaxAge(None));
        assert_eq!("0".parse::<MaxAge>().unwrap(), MaxAge(None));
        assert_eq!("0s".parse::<MaxAge>().unwrap(), MaxAge(None));
        assert_eq!("2d".parse::<MaxAge>().unwrap().to_string(), "2d");
    }

    #[test]
    fn example_file_shows_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let example = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(
            toml::Value::try_from(&example).unwrap(),
            toml::Value::try_from(Config::default()).unwrap()
        );
    }

    #[test]
    fn delayed_events_are_on_by_default_and_off_with_a_zero_max_delay() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert!(c.delayed_events.enabled());
        assert_eq!(c.delayed_events.max_delay.0, Duration::from_secs(86400));
        let c = Config::load(None, env(&[("HEARTH_DELAYED_EVENTS__MAX_DELAY", "0")])).unwrap();
        assert!(!c.delayed_events.enabled());
        let e =
            Config::load(None, env(&[("HEARTH_DELAYED_EVENTS__MAX_PER_USER", "0")])).unwrap_err();
        assert!(e.to_string().contains("delayed_events.max_per_user"), "{e}");
    }

    #[test]
    fn turn_options_need_uris_and_credentials_together() {
        let c = Config::load(
            None,
            env(&[
                ("HEARTH_TURN__URIS", "[\"turn:turn.example.org:3478\"]"),
                ("HEARTH_TURN__SHARED_SECRET", "s3cret"),
            ]),
        )
        .unwrap();
        assert_eq!(c.turn.user_lifetime.0, Duration::from_secs(3600));
        for (pairs, option) in [
            (
                &[("HEARTH_TURN__URIS", "[\"turn:t.org\"]")][..],
                "turn.uris",
            ),
            (&[("HEARTH_TURN__SHARED_SECRET", "s")][..], "turn.uris"),
            (
                &[
                    ("HEARTH_TURN__URIS", "[\"https://t.org\"]"),
                    ("HEARTH_TURN__SHARED_SECRET", "s"),
                ][..],
                "turn.uris",
            ),
            (
                &[
                    ("HEARTH_TURN__URIS", "[\"turn:t.org\"]"),
                    ("HEARTH_TURN__USERNAME", "u"),
                ][..],
                "turn.username",
            ),
        ] {
            let e = Config::load(None, env(pairs)).unwrap_err();
            assert!(e.to_string().contains(option), "{e}");
        }
    }

    #[test]
    fn rtc_transports_need_a_type() {
        let c = Config::load(
            None,
            env(&[(
                "HEARTH_MATRIX_RTC__TRANSPORTS",
                "[{ type = \"livekit\", livekit_service_url = \"https://rtc.example.org\" }]",
            )]),
        )
        .unwrap();
        assert_eq!(c.matrix_rtc.transports[0]["type"], "livekit");
        let e = Config::load(
            None,
            env(&[("HEARTH_MATRIX_RTC__TRANSPORTS", "[{ url = \"https://x\" }]")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("matrix_rtc.transports"), "{e}");
    }

    #[test]
    fn media_options_load_and_validate() {
        let c = Config::load(
            None,
            env(&[
                ("HEARTH_MEDIA__RETENTION__LOCAL_MAX_AGE", "30d"),
                (
                    "HEARTH_MEDIA__URL_PREVIEW__ALLOW",
                    "[\"127.0.0.1/32\", \"::1\"]",
                ),
                ("HEARTH_MEDIA__LEGACY_ENDPOINTS", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.media.retention.local_max_age.0,
            Some(Duration::from_secs(30 * 86400))
        );
        assert_eq!(c.media.retention.remote_max_age.0, None);
        assert_eq!(c.media.url_preview.allow.len(), 2);
        assert!(!c.media.legacy_endpoints);
        assert_eq!(
            c.media.folder(&c.database),
            PathBuf::from("./hearth-data/media")
        );
        let e = Config::load(
            None,
            env(&[("HEARTH_MEDIA__URL_PREVIEW__DENY", "[\"10.0.0.0/33\"]")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("media.url_preview.deny"), "{e}");
    }
}
