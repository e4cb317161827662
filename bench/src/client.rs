//! A minimal client-server API client: only the requests the scenarios make, written against the
//! spec (and Synapse's admin registration) rather than any one server, so every homeserver is
//! driven by exactly the same bytes.

use std::{
    fmt,
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha1::Sha1;

/// How much of an error body is kept for the report.
const BODY_EXCERPT: usize = 400;

/// Why a request did not succeed. Kept as data so failures can be counted and shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server answered, but not with a 200.
    Status { status: u16, body: String },
    /// Connection refused or reset, timeout, unreadable body.
    Transport(String),
    /// A 200 whose body lacks what the spec promises (e.g. no `event_id`).
    Malformed(String),
}

impl Failure {
    /// A short grouping key (`HTTP 500 M_UNKNOWN`, `transport`), so a thousand identical errors
    /// are reported as one line with a count.
    pub fn category(&self) -> String {
        match self {
            Failure::Status { status, body } => {
                let errcode = serde_json::from_str::<Value>(body)
                    .ok()
                    .and_then(|v| v.get("errcode").and_then(Value::as_str).map(str::to_owned));
                match errcode {
                    Some(code) => format!("HTTP {status} {code}"),
                    None => format!("HTTP {status}"),
                }
            }
            Failure::Transport(_) => "transport".to_owned(),
            Failure::Malformed(_) => "malformed".to_owned(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Status { status, body } => write!(f, "HTTP {status}: {body}"),
            Failure::Transport(e) => write!(f, "transport: {e}"),
            Failure::Malformed(e) => write!(f, "malformed response: {e}"),
        }
    }
}

/// A registered account and its access token.
#[derive(Debug, Clone)]
pub struct User {
    pub user_id: String,
    pub token: String,
}

impl User {
    /// The server part of the user ID (`@name:server`, where the server may carry a port).
    pub fn server_name(&self) -> &str {
        self.user_id.split_once(':').map_or("", |(_, s)| s)
    }
}

/// One event of a `/messages` chunk, reduced to what the scenarios check.
#[derive(Debug, Clone)]
pub struct PageEvent {
    pub event_id: Option<String>,
    pub kind: Option<String>,
    pub sender: Option<String>,
    /// `content.body`, where the scenarios embed their sequence numbers.
    pub body: Option<String>,
}

impl PageEvent {
    pub fn is_message(&self) -> bool {
        self.kind.as_deref() == Some("m.room.message")
    }
}

/// One page of `/messages`.
#[derive(Debug)]
pub struct Page {
    /// The chunk in the order the server returned it (newest first for `dir=b`).
    pub events: Vec<PageEvent>,
    /// The token for the next page; absent at the start of the room.
    pub end: Option<String>,
}

/// A `/sync` response and when its last byte arrived (before the JSON was parsed).
#[derive(Debug)]
pub struct SyncResponse {
    pub body: Value,
    /// Size of the body as sent.
    pub bytes: usize,
    pub received: Instant,
}

impl SyncResponse {
    pub fn next_batch(&self) -> Result<String, Failure> {
        str_field(&self.body, "next_batch")
    }

    /// The events of `room_id`'s timeline in this response, if the room is in `rooms.join`.
    pub fn timeline(&self, room_id: &str) -> Vec<PageEvent> {
        self.body
            .pointer("/rooms/join")
            .and_then(|j| j.get(room_id))
            .and_then(|r| r.pointer("/timeline/events"))
            .and_then(Value::as_array)
            .map(|events| events.iter().map(page_event).collect())
            .unwrap_or_default()
    }

    /// The sections of the response with something in them (`rooms.join`, `presence`, ...):
    /// empty for a long-poll that ended with nothing to say. `device_one_time_keys_count` and
    /// the like, which every response carries, do not count.
    pub fn non_empty_sections(&self) -> Vec<String> {
        let mut out = Vec::new();
        let non_empty = |v: Option<&Value>| match v {
            Some(Value::Object(m)) => !m.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            _ => false,
        };
        for kind in ["join", "invite", "leave", "knock"] {
            if non_empty(self.body.pointer(&format!("/rooms/{kind}"))) {
                out.push(format!("rooms.{kind}"));
            }
        }
        for section in ["presence", "account_data", "to_device"] {
            if non_empty(self.body.pointer(&format!("/{section}/events"))) {
                out.push(section.to_owned());
            }
        }
        for list in ["changed", "left"] {
            if non_empty(self.body.pointer(&format!("/device_lists/{list}"))) {
                out.push(format!("device_lists.{list}"));
            }
        }
        out
    }
}

/// A homeserver's client API, with one connection pool shared by every simulated user. Cloning
/// is cheap and shares the pool; [`Server::fresh_pool`] makes one with a pool of its own.
#[derive(Clone)]
pub struct Server {
    http: reqwest::Client,
    base: String,
    shared_secret: String,
    timeout: Duration,
    /// The server's process ID when it runs on this machine, for the scenarios that read its
    /// memory, file descriptors or CPU time from /proc.
    pub pid: Option<u32>,
    /// A second server of the same kind that federates with this one, for the scenarios that
    /// join across servers (`join`).
    pub peer: Option<Box<Server>>,
}

impl Server {
    pub fn new(
        base: &str,
        shared_secret: &str,
        timeout: Duration,
        pid: Option<u32>,
    ) -> Result<Server, String> {
        Ok(Server {
            http: http_client(timeout)?,
            base: base.trim_end_matches('/').to_owned(),
            shared_secret: shared_secret.to_owned(),
            timeout,
            pid,
            peer: None,
        })
    }

    /// This server with `peer` as its federating partner.
    pub fn with_peer(self, peer: Server) -> Server {
        Server {
            peer: Some(Box::new(peer)),
            ..self
        }
    }

    /// The same server behind a new, empty connection pool: its connections are opened, counted
    /// and closed (when the last clone is dropped) independently of everyone else's.
    pub fn fresh_pool(&self) -> Result<Server, String> {
        Ok(Server {
            http: http_client(self.timeout)?,
            ..self.clone()
        })
    }

    /// [`Server::fresh_pool`] whose requests may take up to `timeout` (for setup, which is not
    /// measured and may queue behind a busy server).
    pub fn fresh_pool_with_timeout(&self, timeout: Duration) -> Result<Server, String> {
        Ok(Server {
            http: http_client(timeout)?,
            timeout,
            ..self.clone()
        })
    }

    /// Sends one request and returns the JSON body of a 200; anything else is a [`Failure`].
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let (bytes, _) = self
            .call_raw(method, path_and_query, token, body, None)
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| Failure::Malformed(format!("not JSON: {e}")))
    }

    /// [`Server::call`] without the parsing: the body of a 200 and when its last byte arrived.
    /// `request_timeout` replaces the client's `--timeout` (long-polls outlast it).
    async fn call_raw(
        &self,
        method: Method,
        path_and_query: &str,
        token: Option<&str>,
        body: Option<&Value>,
        request_timeout: Option<Duration>,
    ) -> Result<(Vec<u8>, Instant), Failure> {
        let mut req = self
            .http
            .request(method, format!("{}{path_and_query}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(timeout) = request_timeout {
            req = req.timeout(timeout);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::Transport(error_chain(&e)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Failure::Transport(error_chain(&e)))?;
        let received = Instant::now();
        if status != 200 {
            let text = String::from_utf8_lossy(&bytes);
            let body = text.chars().take(BODY_EXCERPT).collect();
            return Err(Failure::Status { status, body });
        }
        // `Bytes` to `Vec` reuses the buffer when nothing else holds it, as here.
        Ok((Vec::from(bytes), received))
    }

    /// `POST /_matrix/media/v3/upload` of `data`; the `mxc://` URI.
    pub async fn upload(
        &self,
        user: &User,
        content_type: &str,
        data: bytes::Bytes,
    ) -> Result<String, Failure> {
        let resp = self
            .http
            .post(format!("{}/_matrix/media/v3/upload", self.base))
            .bearer_auth(&user.token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(data)
            .send()
            .await
            .map_err(|e| Failure::Transport(error_chain(&e)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Failure::Transport(error_chain(&e)))?;
        if status != 200 {
            let text = String::from_utf8_lossy(&bytes);
            let body = text.chars().take(BODY_EXCERPT).collect();
            return Err(Failure::Status { status, body });
        }
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Malformed(format!("not JSON: {e}")))?;
        str_field(&body, "content_uri")
    }

    /// `GET /_matrix/client/v1/media/download/{server}/{id}` of an `mxc://` URI: the bytes.
    pub async fn download(&self, user: &User, mxc: &str) -> Result<Vec<u8>, Failure> {
        let path = format!("/_matrix/client/v1/media/download/{}", mxc_path(mxc)?);
        self.call_raw(Method::GET, &path, Some(&user.token), None, None)
            .await
            .map(|(bytes, _)| bytes)
    }

    /// `GET /_matrix/client/v1/media/thumbnail/{server}/{id}` with the given size and method: the
    /// thumbnail's bytes.
    pub async fn thumbnail(
        &self,
        user: &User,
        mxc: &str,
        (width, height): (u32, u32),
        method: &str,
    ) -> Result<Vec<u8>, Failure> {
        let path = format!(
            "/_matrix/client/v1/media/thumbnail/{}?width={width}&height={height}&method={method}",
            mxc_path(mxc)?
        );
        self.call_raw(Method::GET, &path, Some(&user.token), None, None)
            .await
            .map(|(bytes, _)| bytes)
    }

    /// `GET /versions`: the server is up.
    pub async fn versions(&self) -> Result<Value, Failure> {
        self.call(Method::GET, "/_matrix/client/versions", None, None)
            .await
    }

    /// Registers a non-admin account through the shared-secret admin API (nonce, then HMAC), the
    /// one registration path Synapse and Hearth both offer without UIAA or tokens.
    pub async fn register(&self, username: &str, password: &str) -> Result<User, Failure> {
        self.register_with(username, password, false).await
    }

    /// [`Server::register`] of a server administrator, who may use the admin API.
    pub async fn register_admin(&self, username: &str, password: &str) -> Result<User, Failure> {
        self.register_with(username, password, true).await
    }

    async fn register_with(
        &self,
        username: &str,
        password: &str,
        admin: bool,
    ) -> Result<User, Failure> {
        const PATH: &str = "/_synapse/admin/v1/register";
        let nonce = self.call(Method::GET, PATH, None, None).await?;
        let nonce = str_field(&nonce, "nonce")?;
        let mac = registration_mac(&self.shared_secret, &nonce, username, password, admin);
        let body = json!({
            "nonce": nonce,
            "username": username,
            "password": password,
            "admin": admin,
            "mac": mac,
        });
        let resp = self.call(Method::POST, PATH, None, Some(&body)).await?;
        Ok(User {
            user_id: str_field(&resp, "user_id")?,
            token: str_field(&resp, "access_token")?,
        })
    }

    /// `POST /login` with a password: a new device and access token for an existing account.
    pub async fn login(&self, username: &str, password: &str) -> Result<User, Failure> {
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": username },
            "password": password,
        });
        let resp = self
            .call(Method::POST, "/_matrix/client/v3/login", None, Some(&body))
            .await?;
        Ok(User {
            user_id: str_field(&resp, "user_id")?,
            token: str_field(&resp, "access_token")?,
        })
    }

    /// `PUT /_synapse/admin/v2/users/{user_id}` as `admin`: creates a local account with this
    /// display name and no password (so no password hashing, no device), which Synapse and Hearth
    /// both offer. A 201 (created) is success as much as a 200 (it existed).
    pub async fn admin_create_user(
        &self,
        admin: &User,
        user_id: &str,
        displayname: &str,
    ) -> Result<(), Failure> {
        let path = format!("/_synapse/admin/v2/users/{}", encode(user_id));
        let body = json!({ "displayname": displayname });
        match self
            .call_raw(Method::PUT, &path, Some(&admin.token), Some(&body), None)
            .await
        {
            Ok(_) | Err(Failure::Status { status: 201, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates a public room (anyone may join) and returns its ID.
    pub async fn create_room(
        &self,
        user: &User,
        room_version: Option<&str>,
    ) -> Result<String, Failure> {
        self.create_named_room(user, room_version, "hearth-bench")
            .await
    }

    /// [`Server::create_room`] with the given `m.room.name`.
    pub async fn create_named_room(
        &self,
        user: &User,
        room_version: Option<&str>,
        name: &str,
    ) -> Result<String, Failure> {
        let mut body = json!({ "preset": "public_chat", "name": name });
        if let Some(v) = room_version {
            body["room_version"] = json!(v);
        }
        let resp = self
            .call(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&user.token),
                Some(&body),
            )
            .await?;
        str_field(&resp, "room_id")
    }

    pub async fn join(&self, user: &User, room_id: &str) -> Result<(), Failure> {
        let path = format!("/_matrix/client/v3/join/{}", encode(room_id));
        self.call(Method::POST, &path, Some(&user.token), Some(&json!({})))
            .await?;
        Ok(())
    }

    /// `POST /join/{roomIdOrAlias}` naming `server` as the one to join through, in both the
    /// spec's `via` and the older `server_name` (which Synapse and Hearth also read): a join of
    /// a room this server may never have heard of.
    pub async fn join_via(&self, user: &User, room_id: &str, server: &str) -> Result<(), Failure> {
        let server = encode(server);
        let path = format!(
            "/_matrix/client/v3/join/{}?server_name={server}&via={server}",
            encode(room_id)
        );
        self.call(Method::POST, &path, Some(&user.token), Some(&json!({})))
            .await?;
        Ok(())
    }

    /// Sends an `m.text` message and returns its event ID. The transaction ID must be unique per
    /// device, or the server rightly answers with the earlier event instead of a new one.
    pub async fn send_text(
        &self,
        user: &User,
        room_id: &str,
        txn_id: &str,
        text: &str,
    ) -> Result<String, Failure> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            encode(room_id),
            encode(txn_id)
        );
        let body = json!({ "msgtype": "m.text", "body": text });
        let resp = self
            .call(Method::PUT, &path, Some(&user.token), Some(&body))
            .await?;
        str_field(&resp, "event_id")
    }

    /// `GET /rooms/{room}/messages?dir=b`: one page back from `from`, or from the newest event.
    pub async fn messages_back(
        &self,
        user: &User,
        room_id: &str,
        from: Option<&str>,
        limit: u32,
    ) -> Result<Page, Failure> {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}",
            encode(room_id)
        );
        if let Some(from) = from {
            path.push_str("&from=");
            path.push_str(&encode(from));
        }
        let resp = self
            .call(Method::GET, &path, Some(&user.token), None)
            .await?;
        let chunk = resp
            .get("chunk")
            .and_then(Value::as_array)
            .ok_or_else(|| Failure::Malformed("no `chunk` array".into()))?;
        Ok(Page {
            events: chunk.iter().map(page_event).collect(),
            end: resp.get("end").and_then(Value::as_str).map(str::to_owned),
        })
    }

    /// `GET /sync` with the default filter: an initial sync without `since`, else a long-poll of
    /// up to `timeout_ms`. `request_timeout` bounds the whole request on our side.
    pub async fn sync(
        &self,
        user: &User,
        since: Option<&str>,
        timeout_ms: u64,
        request_timeout: Duration,
    ) -> Result<SyncResponse, Failure> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str("&since=");
            path.push_str(&encode(since));
        }
        let (bytes, received) = self
            .call_raw(
                Method::GET,
                &path,
                Some(&user.token),
                None,
                Some(request_timeout),
            )
            .await?;
        let body = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Malformed(format!("not JSON: {e}")))?;
        let resp = SyncResponse {
            body,
            bytes: bytes.len(),
            received,
        };
        resp.next_batch()?;
        Ok(resp)
    }
}

impl Server {
    /// A simplified sliding sync request (MSC4186): the JSON body of the 200 and when it
    /// arrived.
    pub async fn sliding_sync(
        &self,
        user: &User,
        pos: Option<&str>,
        timeout_ms: u64,
        body: &Value,
        request_timeout: Duration,
    ) -> Result<(Value, Instant), Failure> {
        let mut path = format!(
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout={timeout_ms}"
        );
        if let Some(pos) = pos {
            path.push_str("&pos=");
            path.push_str(&encode(pos));
        }
        let (bytes, received) = self
            .call_raw(
                Method::POST,
                &path,
                Some(&user.token),
                Some(body),
                Some(request_timeout),
            )
            .await?;
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Malformed(format!("not JSON: {e}")))?;
        if body.get("pos").and_then(Value::as_str).is_none() {
            return Err(Failure::Malformed(
                "a sliding sync response without `pos`".into(),
            ));
        }
        Ok((body, received))
    }
}

fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        // Loopback only: an HTTP(S)_PROXY in the environment must not reroute the load.
        .no_proxy()
        .timeout(timeout)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// An event of a `/messages` chunk or a `/sync` timeline, reduced to what the scenarios check.
fn page_event(e: &Value) -> PageEvent {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    PageEvent {
        event_id: text(e.get("event_id")),
        kind: text(e.get("type")),
        sender: text(e.get("sender")),
        body: text(e.get("content").and_then(|c| c.get("body"))),
    }
}

/// The MAC of Synapse's shared-secret registration: HMAC-SHA1 over
/// `nonce\0username\0password\0notadmin` (`admin` for an administrator), hex encoded.
pub fn registration_mac(
    secret: &str,
    nonce: &str,
    username: &str,
    password: &str,
    admin: bool,
) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    let kind = if admin { "admin" } else { "notadmin" };
    for (i, part) in [nonce, username, password, kind].iter().enumerate() {
        if i > 0 {
            mac.update(b"\0");
        }
        mac.update(part.as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Percent-encodes a path segment or query value: everything but RFC 3986's unreserved bytes, so
/// the `!`, `:` and `$` of Matrix IDs and opaque tokens reach the server intact.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `server/id` of an `mxc://server/id` URI, for media paths.
fn mxc_path(mxc: &str) -> Result<String, Failure> {
    let rest = mxc
        .strip_prefix("mxc://")
        .ok_or_else(|| Failure::Malformed(format!("not an mxc URI: {mxc}")))?;
    let (server, id) = rest
        .split_once('/')
        .ok_or_else(|| Failure::Malformed(format!("no media ID in {mxc}")))?;
    Ok(format!("{}/{}", encode(server), encode(id)))
}

fn str_field(v: &Value, name: &str) -> Result<String, Failure> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            // The whole body could be a full /messages page; keep the report readable.
            let body: String = v.to_string().chars().take(BODY_EXCERPT).collect();
            Failure::Malformed(format!("no string `{name}` in {body}"))
        })
}

/// reqwest's Display stops at the outermost error; the cause (refused, timed out) is deeper.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_matches_synapse_protocol() {
        // hmac.new(b"secret", b"abc\0alice\0password1\0notadmin", hashlib.sha1).hexdigest()
        assert_eq!(
            registration_mac("secret", "abc", "alice", "password1", false),
            "f1d1e0f39e78b154b626b52ce69d66727a612ab6"
        );
        // The same with b"admin" in place of b"notadmin".
        assert_eq!(
            registration_mac("secret", "abc", "alice", "password1", true),
            "047141a51b26c50a444795c7882c69f1ae4c0a33"
        );
    }

    #[test]
    fn media_paths_come_from_mxc_uris() {
        assert_eq!(
            mxc_path("mxc://localhost:8448/AbC-1_2").unwrap(),
            "localhost%3A8448/AbC-1_2"
        );
        assert!(mxc_path("https://example.org/x").is_err());
        assert!(mxc_path("mxc://example.org").is_err());
    }

    #[test]
    fn encodes_matrix_ids() {
        assert_eq!(encode("!abc:localhost:8448"), "%21abc%3Alocalhost%3A8448");
        assert_eq!(encode("t1-2_3.4~"), "t1-2_3.4~");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
