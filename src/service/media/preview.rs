//! URL previews: fetching a page for a client without letting the client aim the server at its own
//! network, and reading OpenGraph data out of the HTML.
//!
//! Every hop is checked: the host is resolved here, every address it resolves to must be public
//! (or explicitly allowed), and the connection goes to exactly those checked addresses (reqwest's
//! per-client `resolve`), so a DNS answer that changes between check and connect (rebinding)
//! cannot reach a private address. Redirects are followed here, a bounded number of times, each
//! one checked the same way.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bytes::Bytes;
use ipnet::IpNet;
use reqwest::{redirect::Policy, Url};

use crate::{
    config::{self, parse_cidr},
    error::{Error, Result},
};

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 5;
/// OpenGraph properties kept from one page.
const MAX_PROPERTIES: usize = 64;
/// Longest value kept for one property.
const MAX_VALUE_CHARS: usize = 2_000;

/// Ranges that are not the public internet: private, loopback, link-local, shared, multicast,
/// documentation, benchmarking, reserved, and IPv6's equivalents (including the translation
/// prefixes that can embed a private IPv4 address).
const NON_PUBLIC: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// Which addresses previews (and media `Location`s given by other servers) may reach.
pub struct AddressPolicy {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(config: &config::UrlPreview) -> Self {
        Self::from_lists(&config.deny, &config.allow)
    }

    /// The built-in non-public ranges and `deny` refused, `allow` let through.
    pub fn from_lists(deny: &[String], allow: &[String]) -> Self {
        // The configuration was validated at start; an entry that still fails to parse is skipped.
        let parse = |list: &[String]| -> Vec<IpNet> {
            list.iter().filter_map(|s| parse_cidr(s).ok()).collect()
        };
        let mut denied = parse(deny);
        denied.extend(NON_PUBLIC.iter().filter_map(|s| s.parse::<IpNet>().ok()));
        Self {
            deny: denied,
            allow: parse(allow),
        }
    }

    /// Allowed when explicitly allowed, else when in no denied range. An IPv4 address written as
    /// IPv6 (`::ffff:a.b.c.d`) is judged as the IPv4 address it is.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        !self.deny.iter().any(|n| n.contains(&ip))
    }
}

/// What one fetch returned.
pub struct Fetched {
    pub url: Url,
    pub content_type: String,
    pub content_disposition: Option<String>,
    pub body: Bytes,
}

/// Fetches `url` with at most `max_size` bytes of body, checking every hop against `policy`.
/// The caller bounds the total time.
pub async fn fetch(policy: &AddressPolicy, url: &str, max_size: u64) -> Result<Fetched> {
    let mut url = Url::parse(url).map_err(|e| Error::invalid_param(format!("Invalid URL: {e}")))?;
    for _ in 0..=MAX_REDIRECTS {
        let client = checked_client(policy, &url, "URL preview").await?;
        let mut resp = client
            .get(url.clone())
            .header(http::header::ACCEPT, "text/html,image/*;q=0.9,*/*;q=0.5")
            .send()
            .await
            .map_err(|e| upstream(format!("fetching {url}: {e}")))?;
        if resp.status().is_redirection() {
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| upstream("redirect without a location"))?;
            url = url
                .join(location)
                .map_err(|e| upstream(format!("bad redirect: {e}")))?;
            continue;
        }
        if !resp.status().is_success() {
            return Err(upstream(format!("{url} answered {}", resp.status())));
        }
        if resp.content_length().is_some_and(|n| n > max_size) {
            return Err(Error::too_large("The page is too large to preview"));
        }
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let content_disposition = resp
            .headers()
            .get(http::header::CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| upstream(format!("reading {url}: {e}")))?
        {
            if body.len() as u64 + chunk.len() as u64 > max_size {
                return Err(Error::too_large("The page is too large to preview"));
            }
            body.extend_from_slice(&chunk);
        }
        return Ok(Fetched {
            url,
            content_type,
            content_disposition,
            body: body.into(),
        });
    }
    Err(upstream("too many redirects"))
}

fn upstream(message: impl Into<String>) -> Error {
    let message = message.into();
    tracing::debug!(%message, "URL preview fetch failed");
    Error::upstream(message)
}

/// A client that can connect to `url`'s host only at addresses that passed the policy, and
/// follows no redirect. `purpose` goes into the User-Agent.
pub async fn checked_client(
    policy: &AddressPolicy,
    url: &Url,
    purpose: &str,
) -> Result<reqwest::Client> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::invalid_param("Only http and https URLs are fetched"));
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| Error::invalid_param("URL without a port"))?;
    let builder = reqwest::Client::builder()
        .redirect(Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .user_agent(format!("Hearth/{} ({purpose})", env!("CARGO_PKG_VERSION")));
    let refused = || Error::forbidden("The URL points at an address the server may not fetch");
    match url.host() {
        Some(url::Host::Ipv4(ip)) => {
            if !policy.permits(IpAddr::V4(ip)) {
                return Err(refused());
            }
            builder.build().map_err(Error::internal)
        }
        Some(url::Host::Ipv6(ip)) => {
            if !policy.permits(IpAddr::V6(ip)) {
                return Err(refused());
            }
            builder.build().map_err(Error::internal)
        }
        Some(url::Host::Domain(domain)) => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((domain, port))
                .await
                .map_err(|e| upstream(format!("cannot resolve {domain}: {e}")))?
                .collect();
            // One bad address refuses the host: picking the good ones would still let a
            // hostile DNS server steer which one is used.
            if addrs.is_empty() || !addrs.iter().all(|a| policy.permits(a.ip())) {
                return Err(refused());
            }
            builder
                .resolve_to_addrs(domain, &addrs)
                .build()
                .map_err(Error::internal)
        }
        None => Err(Error::invalid_param("URL without a host")),
    }
}

/// OpenGraph properties of an HTML page, with `<title>` and `<meta name="description">` as
/// fallbacks for `og:title` and `og:description`; relative `og:image` URLs made absolute.
pub fn parse_html(html: &str, base: &Url) -> BTreeMap<String, String> {
    let mut og = BTreeMap::new();
    let mut title = None;
    let mut description = None;
    let lower = html.to_ascii_lowercase();
    let mut pos = 0;
    while let Some(found) = lower[pos..].find('<') {
        let start = pos + found;
        let rest = &lower[start..];
        if rest.starts_with("<!--") {
            pos = lower[start..]
                .find("-->")
                .map(|e| start + e + 3)
                .unwrap_or(lower.len());
            continue;
        }
        let Some(end) = tag_end(&lower, start) else {
            break;
        };
        let name: String = rest[1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        pos = end;
        match name.as_str() {
            "meta" => {
                let attrs = attributes(&html[start + 5..end.saturating_sub(1).max(start + 5)]);
                let content = attrs.get("content").cloned().unwrap_or_default();
                let key = attrs.get("property").or_else(|| attrs.get("name"));
                match key.map(|k| k.to_ascii_lowercase()) {
                    Some(k) if k.starts_with("og:") && og.len() < MAX_PROPERTIES => {
                        og.entry(k).or_insert_with(|| truncate(&content));
                    }
                    Some(k) if k == "description" && description.is_none() => {
                        description = Some(truncate(&content));
                    }
                    _ => {}
                }
            }
            "title" if title.is_none() => {
                let close = lower[end..].find("</title").map(|i| end + i);
                if let Some(close) = close {
                    let text = decode_entities(html[end..close].trim());
                    if !text.is_empty() {
                        title = Some(truncate(&text));
                    }
                    pos = close;
                }
            }
            // Their contents are not markup.
            "script" | "style" => {
                pos = lower[end..]
                    .find(&format!("</{name}"))
                    .map(|i| end + i)
                    .unwrap_or(lower.len());
            }
            _ => {}
        }
    }
    if let (false, Some(t)) = (og.contains_key("og:title"), title) {
        og.insert("og:title".into(), t);
    }
    if let (false, Some(d)) = (og.contains_key("og:description"), description) {
        og.insert("og:description".into(), d);
    }
    if let Some(image) = og.get("og:image").cloned() {
        match base.join(&image) {
            Ok(abs) if matches!(abs.scheme(), "http" | "https") => {
                og.insert("og:image".into(), abs.to_string());
            }
            _ => {
                og.remove("og:image");
            }
        }
    }
    og
}

fn truncate(s: &str) -> String {
    s.chars().take(MAX_VALUE_CHARS).collect()
}

/// The index just past the `>` closing the tag that starts at `start`, skipping quoted values.
fn tag_end(s: &str, start: usize) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s[start..].char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some(start + i + 1),
            _ => {}
        }
    }
    None
}

/// The attributes of a tag's inside (`name="v" name='v' name=v name`), names lowercased.
fn attributes(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while chars
            .next_if(|(_, c)| c.is_whitespace() || *c == '/')
            .is_some()
        {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut end = start;
        while let Some((i, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            end = i + c.len_utf8();
        }
        let name = s[start..end].to_ascii_lowercase();
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '=').is_some() {
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            match chars.peek().map(|&(_, c)| c) {
                Some(q @ ('"' | '\'')) => {
                    chars.next();
                    for (_, c) in chars.by_ref() {
                        if c == q {
                            break;
                        }
                        value.push(c);
                    }
                }
                _ => {
                    while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                        value.push(c);
                    }
                }
            }
        }
        if name.is_empty() {
            // A stray character; skip it so the loop always advances.
            chars.next();
            continue;
        }
        out.entry(name).or_insert_with(|| decode_entities(&value));
    }
    out
}

/// Decodes the character references that appear in titles and descriptions.
fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(';').filter(|&e| e <= 10);
        let decoded = end.and_then(|e| {
            let name = &rest[1..e];
            let c = match name {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" | "#39" => '\'',
                "nbsp" => '\u{a0}',
                n if n.starts_with("#x") || n.starts_with("#X") => {
                    char::from_u32(u32::from_str_radix(&n[2..], 16).ok()?)?
                }
                n if n.starts_with('#') => char::from_u32(n[1..].parse().ok()?)?,
                _ => return None,
            };
            Some((c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &rest[e + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A content type's essence: the lowercased `type/subtype`, without parameters.
pub fn mime_essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether a reply's content type is HTML.
pub fn is_html(content_type: &str) -> bool {
    let essence = mime_essence(content_type);
    essence == "text/html" || essence == "application/xhtml+xml"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> AddressPolicy {
        AddressPolicy::new(&config::UrlPreview {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn non_public_addresses_are_refused_unless_allowed() {
        let p = policy(&[], &["93.184.0.0/16"]);
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::ffff:127.0.0.1",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "93.184.216.34",
        ] {
            assert!(!p.permits(ip.parse().unwrap()), "{ip} is refused");
        }
        for ip in ["1.1.1.1", "2606:4700:4700::1111"] {
            assert!(p.permits(ip.parse().unwrap()), "{ip} is allowed");
        }
        let p = policy(&["127.0.0.1/32"], &[]);
        assert!(p.permits("127.0.0.1".parse().unwrap()));
        assert!(p.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!p.permits("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn opengraph_and_fallbacks_are_read() {
        let base = Url::parse("https://example.org/blog/post").unwrap();
        let html = r#"<!doctype html><html><head>
            <!-- <meta property="og:title" content="commented out"> -->
            <title>Plain &amp; simple</title>
            <script>var s = "<meta property='og:title' content='in a script'>";</script>
            <meta property="og:title" content="A &quot;post&quot;" />
            <meta name=description content='The description'>
            <meta property="og:image" content="/img/cat.png">
            <meta property="og:site_name" content="Example">
            </head><body>hello</body></html>"#;
        let og = parse_html(html, &base);
        assert_eq!(og["og:title"], "A \"post\"");
        assert_eq!(og["og:description"], "The description");
        assert_eq!(og["og:image"], "https://example.org/img/cat.png");
        assert_eq!(og["og:site_name"], "Example");
        let og = parse_html("<title>Only a title</title><p>text", &base);
        assert_eq!(og["og:title"], "Only a title");
        assert_eq!(og.len(), 1);
        // Broken markup ends the scan instead of looping.
        let og = parse_html("<meta property=\"og:title\" content=\"unterminated", &base);
        assert!(og.is_empty());
    }
}
