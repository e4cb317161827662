//! Resolving a server name to where its federation API is, in the order the spec gives
//! ("Resolving server names"): IP literal; explicit port; `/.well-known/matrix/server`
//! delegation (then IP literal, explicit port, SRV `_matrix-fed._tcp`, deprecated `_matrix._tcp`,
//! port 8448); SRV on the name itself; port 8448. Lookups are behind a trait so the order can be
//! tested without a network.

use std::{future::Future, net::IpAddr, time::Duration};

use ruma::ServerName;

/// The default federation port.
pub const DEFAULT_PORT: u16 = 8448;
/// How long a well-known answer is used when it says nothing (spec: 24 hours).
pub const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest a well-known answer is used (spec: at most 48 hours).
pub const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
/// How long a failed well-known lookup is remembered.
pub const WELL_KNOWN_ERROR_TTL: Duration = Duration::from_secs(3600);

/// Where to send a server's federation requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The host to connect to (a name to resolve, or an IP literal).
    pub connect_host: String,
    pub port: u16,
    /// The `Host` header, and the name the TLS certificate must be valid for.
    pub host_header: String,
    /// The certificate name: the (delegated) server's hostname.
    pub tls_name: String,
}

/// The network lookups discovery needs.
pub trait Lookup: Send + Sync {
    /// The `m.server` of `https://<host>/.well-known/matrix/server`, if it answers with one,
    /// and how long the answer may be cached.
    fn well_known(&self, host: &str) -> impl Future<Output = Option<(String, Duration)>> + Send;
    /// SRV records of `name`: (target, port), in the order to try.
    fn srv(&self, name: &str) -> impl Future<Output = Vec<(String, u16)>> + Send;
}

fn is_ip_literal(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
}

/// Splits `host[:port]` (IPv6 literals in brackets).
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((format!("[{ip}]"), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), Some(p.parse().ok()?))),
        None => Some((s.to_owned(), None)),
    }
}

/// SRV `_matrix-fed._tcp`, then the deprecated `_matrix._tcp`, for `host`.
async fn srv_destination(
    lookup: &impl Lookup,
    host: &str,
    host_header: &str,
) -> Option<Destination> {
    for prefix in ["_matrix-fed._tcp", "_matrix._tcp"] {
        if let Some((target, port)) = lookup
            .srv(&format!("{prefix}.{host}"))
            .await
            .into_iter()
            .next()
        {
            return Some(Destination {
                connect_host: target.trim_end_matches('.').to_owned(),
                port,
                host_header: host_header.to_owned(),
                tls_name: host.to_owned(),
            });
        }
    }
    None
}

/// Resolves a server name; also returns how long the answer may be cached.
pub async fn resolve(lookup: &impl Lookup, server: &ServerName) -> (Destination, Duration) {
    let host = server.host().to_owned();
    let port = server.port();
    // 1. An IP literal, with its port or the default.
    if is_ip_literal(&host) {
        return (
            Destination {
                connect_host: host.clone(),
                port: port.unwrap_or(DEFAULT_PORT),
                host_header: server.to_string(),
                tls_name: host,
            },
            WELL_KNOWN_MAX_TTL,
        );
    }
    // 2. A hostname with an explicit port.
    if let Some(port) = port {
        return (
            Destination {
                connect_host: host.clone(),
                port,
                host_header: server.to_string(),
                tls_name: host,
            },
            WELL_KNOWN_MAX_TTL,
        );
    }
    // 3. Delegation through .well-known.
    if let Some((delegated, ttl)) = lookup.well_known(&host).await {
        let ttl = ttl.min(WELL_KNOWN_MAX_TTL);
        if let Some((d_host, d_port)) = split_host_port(&delegated) {
            if is_ip_literal(&d_host) || d_port.is_some() {
                return (
                    Destination {
                        connect_host: d_host.clone(),
                        port: d_port.unwrap_or(DEFAULT_PORT),
                        host_header: delegated.clone(),
                        tls_name: d_host,
                    },
                    ttl,
                );
            }
            if let Some(d) = srv_destination(lookup, &d_host, &d_host).await {
                return (d, ttl);
            }
            return (
                Destination {
                    connect_host: d_host.clone(),
                    port: DEFAULT_PORT,
                    host_header: d_host.clone(),
                    tls_name: d_host,
                },
                ttl,
            );
        }
    }
    // 4. SRV records of the name itself.
    if let Some(d) = srv_destination(lookup, &host, &host).await {
        return (d, WELL_KNOWN_ERROR_TTL);
    }
    // 5. The default port.
    (
        Destination {
            connect_host: host.clone(),
            port: DEFAULT_PORT,
            host_header: host.clone(),
            tls_name: host,
        },
        WELL_KNOWN_ERROR_TTL,
    )
}

/// The cache lifetime a well-known response asks for through `Cache-Control: max-age`.
pub fn max_age(cache_control: Option<&str>) -> Duration {
    cache_control
        .and_then(|v| {
            v.split(',').find_map(|d| {
                d.trim()
                    .strip_prefix("max-age=")
                    .and_then(|n| n.parse::<u64>().ok())
            })
        })
        .map(Duration::from_secs)
        .unwrap_or(WELL_KNOWN_DEFAULT_TTL)
        .min(WELL_KNOWN_MAX_TTL)
}

/// Discovery over the network: well-known over HTTPS (certificates checked as configured) and
/// SRV through the system's DNS configuration.
pub struct NetLookup {
    http: reqwest::Client,
    dns: Option<hickory_resolver::TokioResolver>,
}

impl NetLookup {
    pub fn new(verify_certificates: bool) -> Self {
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(!verify_certificates)
            .timeout(Duration::from_secs(10))
            // Well-known answers must not redirect elsewhere more than a little.
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .unwrap_or_default();
        let dns = hickory_resolver::Resolver::builder_tokio()
            .and_then(|b| b.build())
            .map_err(|e| tracing::warn!("no DNS resolver for SRV lookups: {e}"))
            .ok();
        Self { http, dns }
    }
}

impl Lookup for NetLookup {
    async fn well_known(&self, host: &str) -> Option<(String, Duration)> {
        let response = self
            .http
            .get(format!("https://{host}/.well-known/matrix/server"))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let ttl = max_age(
            response
                .headers()
                .get(http::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok()),
        );
        // Small bodies only: a well-known answer is one short field.
        let body = response.bytes().await.ok()?;
        if body.len() > 64 * 1024 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let server = json.get("m.server")?.as_str()?;
        // It must itself be a valid server name.
        ServerName::parse(server).ok()?;
        Some((server.to_owned(), ttl))
    }

    async fn srv(&self, name: &str) -> Vec<(String, u16)> {
        let Some(dns) = &self.dns else {
            return Vec::new();
        };
        let Ok(lookup) = dns.srv_lookup(name).await else {
            return Vec::new();
        };
        let mut records: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                hickory_resolver::proto::rr::RData::SRV(srv) => Some((
                    srv.priority,
                    std::cmp::Reverse(srv.weight),
                    srv.target.to_utf8(),
                    srv.port,
                )),
                _ => None,
            })
            .collect();
        records.sort();
        records.into_iter().map(|(_, _, t, p)| (t, p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    struct Fake {
        well_known: HashMap<String, String>,
        srv: HashMap<String, (String, u16)>,
    }

    impl Lookup for Fake {
        async fn well_known(&self, host: &str) -> Option<(String, Duration)> {
            self.well_known
                .get(host)
                .map(|s| (s.clone(), Duration::from_secs(60)))
        }
        async fn srv(&self, name: &str) -> Vec<(String, u16)> {
            self.srv.get(name).cloned().into_iter().collect()
        }
    }

    async fn dest(f: &Fake, name: &str) -> Destination {
        resolve(f, &ServerName::parse(name).unwrap()).await.0
    }

    fn d(connect: &str, port: u16, header: &str, tls: &str) -> Destination {
        Destination {
            connect_host: connect.into(),
            port,
            host_header: header.into(),
            tls_name: tls.into(),
        }
    }

    #[tokio::test]
    async fn the_spec_order_is_followed() {
        let mut f = Fake::default();
        // IP literals and explicit ports need no lookups at all.
        f.well_known
            .insert("1.2.3.4".into(), "ignored.example".into());
        assert_eq!(
            dest(&f, "1.2.3.4").await,
            d("1.2.3.4", 8448, "1.2.3.4", "1.2.3.4")
        );
        assert_eq!(
            dest(&f, "[::1]:8000").await,
            d("[::1]", 8000, "[::1]:8000", "[::1]")
        );
        assert_eq!(
            dest(&f, "example.org:1234").await,
            d("example.org", 1234, "example.org:1234", "example.org")
        );

        // Delegation to a name with a port, to an IP literal, to a name with SRV, to a bare name.
        f.well_known
            .insert("a.example".into(), "matrix.a.example:443".into());
        assert_eq!(
            dest(&f, "a.example").await,
            d(
                "matrix.a.example",
                443,
                "matrix.a.example:443",
                "matrix.a.example"
            )
        );
        f.well_known.insert("b.example".into(), "10.0.0.1".into());
        assert_eq!(
            dest(&f, "b.example").await,
            d("10.0.0.1", 8448, "10.0.0.1", "10.0.0.1")
        );
        f.well_known
            .insert("c.example".into(), "hs.c.example".into());
        f.srv.insert(
            "_matrix-fed._tcp.hs.c.example".into(),
            ("node1.c.example.".into(), 8009),
        );
        assert_eq!(
            dest(&f, "c.example").await,
            d("node1.c.example", 8009, "hs.c.example", "hs.c.example")
        );
        f.well_known
            .insert("d.example".into(), "hs.d.example".into());
        f.srv.insert(
            "_matrix._tcp.hs.d.example".into(),
            ("old.d.example".into(), 9000),
        );
        assert_eq!(
            dest(&f, "d.example").await,
            d("old.d.example", 9000, "hs.d.example", "hs.d.example")
        );
        f.well_known
            .insert("e.example".into(), "hs.e.example".into());
        assert_eq!(
            dest(&f, "e.example").await,
            d("hs.e.example", 8448, "hs.e.example", "hs.e.example")
        );

        // No well-known: SRV on the name, then the default port.
        f.srv.insert(
            "_matrix-fed._tcp.f.example".into(),
            ("fed.f.example".into(), 8443),
        );
        assert_eq!(
            dest(&f, "f.example").await,
            d("fed.f.example", 8443, "f.example", "f.example")
        );
        assert_eq!(
            dest(&f, "g.example").await,
            d("g.example", 8448, "g.example", "g.example")
        );
    }

    #[test]
    fn cache_lifetimes_are_bounded() {
        assert_eq!(
            max_age(Some("public, max-age=600")),
            Duration::from_secs(600)
        );
        assert_eq!(max_age(None), WELL_KNOWN_DEFAULT_TTL);
        assert_eq!(max_age(Some("max-age=99999999")), WELL_KNOWN_MAX_TTL);
    }
}
