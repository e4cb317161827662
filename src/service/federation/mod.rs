//! Federation plumbing: our published keys, peers' keys (fetched, verified, cached in RocksDB),
//! X-Matrix authentication of incoming requests, and signed outgoing requests.

pub mod media;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hearth_federation::{
    discovery::{self, Destination, NetLookup},
    server_keys::{self, ServerKeys},
    xmatrix, ServerSigningKey,
};
use parking_lot::Mutex;
use ruma::{CanonicalJsonObject, OwnedServerName, ServerName};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use crate::{
    config::Config,
    error::{Error, Result},
    storage::{tables, Batch, Db, StorageError, Table},
    util::now_ms,
};

/// How long our published keys may be cached by others.
const OWN_KEY_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Peers' keys are used at most this long after fetching, whatever they claim (spec: 7 days).
const MAX_CACHE: u64 = 7 * 24 * 3600 * 1000;
/// Longest wait for a peer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
struct CachedKeys {
    keys: ServerKeys,
    /// The server's own signed response, as notaries pass it on.
    raw: CanonicalJsonObject,
    fetched_ts: u64,
}

pub struct Service {
    db: Db,
    server_keys: Table<tables::ServerKeys<CachedKeys>>,
    config: Arc<Config>,
    key: Arc<ServerSigningKey>,
    http: reqwest::Client,
    /// One fetch per server at a time; concurrent requests from a new peer share it.
    fetching: tokio::sync::Mutex<()>,
    lookup: NetLookup,
    /// Resolved destinations, until their well-known or DNS answers expire.
    destinations: Mutex<HashMap<OwnedServerName, (Destination, Instant)>>,
    /// Certificate names whose connections go to another host (SRV targets, delegations).
    overrides: Arc<Mutex<HashMap<String, String>>>,
    /// Which addresses peers may be contacted at (an IP literal skips DNS, so it is checked
    /// here; names are checked by the resolver).
    policy: Arc<crate::service::media::preview::AddressPolicy>,
}

/// Most destinations kept; beyond this the cache starts over.
const DESTINATION_CACHE: usize = 10_000;

/// reqwest's DNS, with SRV targets substituted for the names certificates are checked against,
/// and addresses the policy denies left out.
struct OverrideResolver(
    Arc<Mutex<HashMap<String, String>>>,
    Arc<crate::service::media::preview::AddressPolicy>,
);

impl reqwest::dns::Resolve for OverrideResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = self
            .0
            .lock()
            .get(name.as_str())
            .cloned()
            .unwrap_or_else(|| name.as_str().to_owned());
        let policy = self.1.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no address peers may be contacted at").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn unauthorized(why: impl std::fmt::Display) -> Error {
    Error::unauthorized(format!("Request authentication failed: {why}"))
}

impl Service {
    pub fn new(db: Db, config: Arc<Config>, key: Arc<ServerSigningKey>) -> Result<Self> {
        let verify = config.federation.verify_certificates;
        let overrides = Arc::new(Mutex::new(HashMap::new()));
        let policy = Arc::new(crate::service::media::preview::AddressPolicy::from_lists(
            &config.federation.ip_range_deny,
            &config.federation.ip_range_allow,
        ));
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .dns_resolver(Arc::new(OverrideResolver(
                overrides.clone(),
                policy.clone(),
            )))
            .danger_accept_invalid_certs(!config.federation.verify_certificates)
            .user_agent(concat!("Hearth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal(format!("federation client: {e}")))?;
        Ok(Self {
            server_keys: Table::new(&db),
            db,
            config,
            key,
            http,
            fetching: tokio::sync::Mutex::new(()),
            lookup: NetLookup::new(verify),
            destinations: Mutex::new(HashMap::new()),
            overrides,
            policy,
        })
    }

    pub fn server_name(&self) -> &ServerName {
        &self.config.server_name
    }

    /// Our signed /_matrix/key/v2/server response.
    pub fn own_keys(&self) -> Result<CanonicalJsonObject> {
        let until = now_ms() + OWN_KEY_VALIDITY.as_millis() as u64;
        server_keys::key_response(&self.key, self.server_name(), until).map_err(Error::internal)
    }

    /// Where to reach a server's federation API (the spec's discovery order, cached), as a base
    /// URL whose host is the name the certificate must carry, and the Host header to send.
    async fn base_url(&self, server: &ServerName) -> Result<(String, String)> {
        let cached = self
            .destinations
            .lock()
            .get(server)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(d, _)| d.clone());
        let dest = match cached {
            Some(d) => d,
            None => {
                let (d, ttl) = discovery::resolve(&self.lookup, server).await;
                let mut cache = self.destinations.lock();
                if cache.len() >= DESTINATION_CACHE {
                    cache.clear();
                }
                cache.insert(server.to_owned(), (d.clone(), Instant::now() + ttl));
                d
            }
        };
        if let Ok(ip) = dest
            .connect_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
        {
            if !self.policy.permits(ip) {
                return Err(Error::forbidden(format!(
                    "{server} is at {ip}, which peers may not be contacted at"
                )));
            }
        }
        if dest.connect_host != dest.tls_name {
            self.overrides
                .lock()
                .insert(dest.tls_name.clone(), dest.connect_host.clone());
        }
        Ok((
            format!("https://{}:{}", dest.tls_name, dest.port),
            dest.host_header,
        ))
    }

    /// A peer's keys, from the cache while valid, else fetched from the peer and verified. With
    /// `key_id`, a cached set without that key is refreshed (the peer may have rotated).
    pub async fn server_keys(
        &self,
        server: &ServerName,
        key_id: Option<&str>,
    ) -> Result<(ServerKeys, CanonicalJsonObject)> {
        if server == self.server_name() {
            let own = self.own_keys()?;
            let keys = server_keys::verify_key_response(&own, server).map_err(Error::internal)?;
            return Ok((keys, own));
        }
        let fresh = |c: &CachedKeys| {
            let now = now_ms();
            c.keys.valid_until_ts.min(c.fetched_ts + MAX_CACHE) > now
                && key_id.is_none_or(|id| c.keys.public_key(id).is_some())
        };
        if let Some(cached) = self.cached(server)? {
            if fresh(&cached) {
                return Ok((cached.keys, cached.raw));
            }
        }
        let _guard = self.fetching.lock().await;
        if let Some(cached) = self.cached(server)? {
            if fresh(&cached) {
                return Ok((cached.keys, cached.raw));
            }
        }
        let (base, host) = self.base_url(server).await?;
        let url = format!("{base}/_matrix/key/v2/server");
        let response = self
            .http
            .get(&url)
            .header(http::header::HOST, host)
            .send()
            .await
            .map_err(|e| Error::not_found(format!("Cannot reach {server} for its keys: {e}")))?;
        if !response.status().is_success() {
            return Err(Error::not_found(format!(
                "{server} answered {} for its keys",
                response.status()
            )));
        }
        let raw: CanonicalJsonObject = response
            .json()
            .await
            .map_err(|e| Error::not_found(format!("Unreadable keys from {server}: {e}")))?;
        let keys = server_keys::verify_key_response(&raw, server)
            .map_err(|e| Error::not_found(e.to_string()))?;
        let cached = CachedKeys {
            keys: keys.clone(),
            raw: raw.clone(),
            fetched_ts: now_ms(),
        };
        let mut b = Batch::new();
        self.server_keys.put_in(&mut b, server.as_str(), &cached);
        self.db.write(b).await?;
        Ok((keys, raw))
    }

    fn cached(&self, server: &ServerName) -> Result<Option<CachedKeys>> {
        match self.server_keys.get(server.as_str()) {
            // An unreadable cache entry is refetched rather than trusted.
            Err(StorageError::Corrupt { .. }) => Ok(None),
            found => Ok(found?),
        }
    }

    /// Authenticates an incoming federation request by its X-Matrix signature; returns the
    /// origin. Every failure is 401 M_UNAUTHORIZED.
    pub async fn authenticate(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> Result<OwnedServerName> {
        let mut request = http::Request::builder()
            .method(parts.method.clone())
            .uri(parts.uri.clone())
            .body(body)
            .map_err(Error::internal)?;
        *request.headers_mut() = parts.headers.clone();
        let header = xmatrix::parse(&request).map_err(unauthorized)?;
        let origin = header.origin.clone();
        if origin == *self.server_name() {
            return Err(unauthorized("requests from our own name are not accepted"));
        }
        let (keys, _) = self
            .server_keys(&origin, Some(header.key.as_str()))
            .await
            .map_err(|e| unauthorized(format!("no key {} for {origin}: {e}", header.key)))?;
        xmatrix::verify_request(
            &header,
            &request,
            self.server_name(),
            &keys.key_map(&origin),
        )
        .map_err(unauthorized)?;
        Ok(origin)
    }

    /// A signed GET to a peer's federation API; the JSON body of a 2xx answer.
    pub async fn get_json(
        &self,
        destination: &ServerName,
        path_and_query: &str,
    ) -> Result<JsonValue> {
        self.request_json(destination, http::Method::GET, path_and_query, None)
            .await
    }

    /// A signed request to a peer's federation API.
    pub async fn request_json(
        &self,
        destination: &ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&JsonValue>,
    ) -> Result<JsonValue> {
        let (status, json) = self
            .request(destination, method, path_and_query, body)
            .await?;
        if !status.is_success() {
            let code = json
                .get("errcode")
                .and_then(JsonValue::as_str)
                .unwrap_or("");
            let error = json.get("error").and_then(JsonValue::as_str).unwrap_or("");
            return Err(Error::upstream(format!(
                "{destination} answered {status} {code} {error}"
            )));
        }
        Ok(json)
    }

    /// A signed request to a peer's federation API: the status and JSON body of its answer
    /// (errors are only for peers that cannot be reached or answer something unreadable).
    pub async fn request(
        &self,
        destination: &ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&JsonValue>,
    ) -> Result<(PeerStatus, JsonValue)> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(Error::internal)?,
            None => Vec::new(),
        };
        let signed = http::Request::builder()
            .method(method.clone())
            .uri(path_and_query)
            .body(bytes.clone())
            .map_err(|e| Error::internal(format!("request to {destination}: {e}")))?;
        let auth = xmatrix::sign_request(&self.key, self.server_name(), destination, &signed)
            .map_err(Error::internal)?;
        let (base, host) = self.base_url(destination).await?;
        let url = format!("{base}{path_and_query}");
        let mut req = self
            .http
            .request(method, &url)
            .header(http::header::HOST, host)
            .header(http::header::AUTHORIZATION, auth);
        if body.is_some() {
            req = req
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        let response = req
            .send()
            .await
            .map_err(|e| Error::not_found(format!("Cannot reach {destination}: {e}")))?;
        let status = PeerStatus(response.status().as_u16());
        let json: JsonValue = response
            .json()
            .await
            .map_err(|e| Error::not_found(format!("Unreadable answer from {destination}: {e}")))?;
        Ok((status, json))
    }
}

/// The HTTP status a peer answered with: what the federation client reports, so callers judge a
/// peer's answer without depending on the HTTP stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStatus(pub u16);

impl PeerStatus {
    pub fn is_success(self) -> bool {
        (200..300).contains(&self.0)
    }
    /// A 4xx other than 429: the peer refuses this request and would refuse it again.
    pub fn is_refusal(self) -> bool {
        (400..500).contains(&self.0) && self.0 != 429
    }
    pub fn as_u16(self) -> u16 {
        self.0
    }
}

impl std::fmt::Display for PeerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
