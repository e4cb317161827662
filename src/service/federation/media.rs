//! Fetching media from its origin server: the authenticated federation endpoints
//! (`/_matrix/federation/v1/media/download` and `/thumbnail`, answered with `multipart/mixed`),
//! a `Location` in the answer followed, and the deprecated unauthenticated `/_matrix/media/v3`
//! endpoints as the spec's fallback for peers that do not know the new ones. A `Location` is
//! fetched under the URL preview address policy: the origin picks that URL, not us.
//!
//! Bodies are read under a size limit as they arrive, so an oversized file is refused before it
//! is held in memory whole. This module returns bytes and headers; caching them is the media
//! service's business.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ruma::{http_headers::ContentDisposition, ServerName};
use serde_json::Value as JsonValue;

use super::Service;
use crate::{
    error::{Error, ErrorKind, Result},
    service::media::preview::{self, AddressPolicy},
};

/// Longest a media request to a peer may take, body included: files are up to
/// `media.max_upload_size`, far more than the JSON the other federation requests wait for.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(300);

/// Bytes a `multipart/mixed` answer may carry besides the file: boundaries, part headers and the
/// JSON metadata part (today always `{}`).
const MULTIPART_OVERHEAD: u64 = 64 << 10;

/// What to fetch from the origin.
#[derive(Clone, Copy, Debug)]
pub enum MediaRequest<'a> {
    Download {
        media_id: &'a str,
        timeout_ms: u64,
    },
    Thumbnail {
        media_id: &'a str,
        width: u32,
        height: u32,
        /// `crop` or `scale`.
        method: &'a str,
        animated: bool,
        timeout_ms: u64,
    },
}

impl MediaRequest<'_> {
    /// The endpoint, the media ID, the endpoint's own query parameters (each followed by `&`),
    /// and how long the peer may wait for the content.
    fn parts(&self) -> (&'static str, &str, String, u64) {
        match *self {
            Self::Download {
                media_id,
                timeout_ms,
            } => ("download", media_id, String::new(), timeout_ms),
            Self::Thumbnail {
                media_id,
                width,
                height,
                method,
                animated,
                timeout_ms,
            } => (
                "thumbnail",
                media_id,
                format!("width={width}&height={height}&method={method}&animated={animated}&"),
                timeout_ms,
            ),
        }
    }

    fn federation_path(&self) -> String {
        let (endpoint, media_id, params, timeout_ms) = self.parts();
        format!(
            "/_matrix/federation/v1/media/{endpoint}/{media_id}?{params}timeout_ms={timeout_ms}"
        )
    }

    /// The deprecated client-server path; `allow_remote=false` keeps the peer from fetching it
    /// from anywhere else (the spec's guard against loops).
    fn legacy_path(&self, origin: &ServerName) -> String {
        let (endpoint, media_id, params, timeout_ms) = self.parts();
        format!(
            "/_matrix/media/v3/{endpoint}/{origin}/{media_id}?{params}allow_remote=false\
             &timeout_ms={timeout_ms}"
        )
    }
}

/// A file as the origin served it.
#[derive(Debug)]
pub struct RemoteFile {
    pub data: Bytes,
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

/// The `errcode` of a Matrix error body, if it is one.
fn errcode(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<JsonValue>(body)
        .ok()
        .and_then(|v| {
            v.get("errcode")
                .and_then(JsonValue::as_str)
                .map(str::to_owned)
        })
}

/// Answer of a peer that does not serve the federation media endpoints (spec: fall back on
/// `404 M_UNRECOGNIZED`; older servers also answer 400 or 405, or 404 without a JSON body).
fn is_unrecognized(status: u16, body: &[u8]) -> bool {
    match errcode(body).as_deref() {
        Some("M_UNRECOGNIZED") => matches!(status, 400 | 404 | 405),
        Some(_) => false,
        None => matches!(status, 404 | 405),
    }
}

fn too_large(origin: &ServerName) -> Error {
    Error::upstream_kind(
        ErrorKind::TooLarge,
        format!("The content on {origin} is too large to serve"),
    )
}

fn bad_gateway(message: String) -> Error {
    Error::upstream(message)
}

/// The error a failed answer of the origin becomes for our client: the origin's 404 and 504
/// (not yet uploaded) and thumbnailing errors pass through, anything else is the origin's fault.
fn peer_error(origin: &ServerName, status: u16, body: &[u8]) -> Error {
    let errcode = errcode(body).unwrap_or_default();
    match (status, errcode.as_str()) {
        (404, _) => Error::not_found(format!("{origin} does not have this media")),
        (504, "M_NOT_YET_UPLOADED") => Error::matrix(
            ErrorKind::NotYetUploaded,
            "Content has not yet been uploaded",
        ),
        (400, "M_UNKNOWN") => {
            Error::unknown("Cannot generate thumbnails for the requested content")
        }
        (413 | 502, "M_TOO_LARGE") => too_large(origin),
        _ => bad_gateway(format!("{origin} answered {status} {errcode}")),
    }
}

/// Reads a body, giving up as soon as it passes `limit` bytes (`Ok(None)`).
async fn read_limited(
    origin: &ServerName,
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Option<Bytes>> {
    if response.content_length().is_some_and(|n| n > limit) {
        return Ok(None);
    }
    let mut out = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| bad_gateway(format!("Reading media from {origin}: {e}")))?
    {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out.freeze()))
}

fn header(response: &reqwest::Response, name: http::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The filename of a Content-Disposition value, if it names one.
fn filename_of(disposition: Option<&str>) -> Option<String> {
    disposition
        .and_then(|d| ContentDisposition::try_from(d.as_bytes()).ok())
        .and_then(|d| d.filename)
        .filter(|f| !f.is_empty())
}

/// The `boundary` parameter of a `multipart/mixed` Content-Type.
fn multipart_boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let essence = params.next()?.trim();
    if !essence.eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        // RFC 2046: 1 to 70 characters.
        (!value.is_empty() && value.len() <= 70).then(|| value.to_owned())
    })
}

/// One body part: its headers (names lower-cased) and content.
struct Part {
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Part {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a `multipart/mixed` body (RFC 2046) into its parts. The content of a part is sliced out
/// of `body`, not copied.
fn multipart_parts(body: &Bytes, boundary: &str) -> Option<Vec<Part>> {
    let delimiter = format!("\r\n--{boundary}");
    let finder = memchr::memmem::Finder::new(delimiter.as_bytes());
    // The first delimiter may open the body without the CRLF before it.
    let mut pos = if body.starts_with(&delimiter.as_bytes()[2..]) {
        delimiter.len() - 2
    } else {
        finder.find(body)? + delimiter.len()
    };
    let mut parts = Vec::new();
    loop {
        let rest = body.get(pos..)?;
        if rest.starts_with(b"--") {
            // The close delimiter.
            return Some(parts);
        }
        // Transport padding, then the line break ending the delimiter line.
        let line_end = memchr::memchr(b'\n', rest)? + 1;
        let start = pos + line_end;
        let end = start + finder.find(body.get(start..)?)?;
        parts.push(parse_part(body.slice(start..end))?);
        pos = end + delimiter.len();
    }
}

/// A part's header lines up to the empty line, then its content.
fn parse_part(part: Bytes) -> Option<Part> {
    let mut headers = Vec::new();
    let mut pos = 0;
    loop {
        let rest = part.get(pos..)?;
        let line_len = memchr::memchr(b'\n', rest)?;
        let line = &rest[..line_len];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += line_len + 1;
        if line.is_empty() {
            break;
        }
        let line = std::str::from_utf8(line).ok()?;
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Some(Part {
        headers,
        body: part.slice(pos..),
    })
}

impl Service {
    /// Fetches a file or thumbnail from its origin: the federation endpoint first, the deprecated
    /// one when the origin does not know it. Files over `limit` bytes are refused with 502
    /// M_TOO_LARGE as they arrive.
    pub async fn fetch_media(
        &self,
        origin: &ServerName,
        request: MediaRequest<'_>,
        limit: u64,
    ) -> Result<RemoteFile> {
        let path = request.federation_path();
        let response = self.signed_get(origin, &path).await?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return self.read_multipart(origin, response, limit).await;
        }
        // Error bodies are small; a large one is not an error body we understand.
        let body = read_limited(origin, response, MULTIPART_OVERHEAD)
            .await?
            .unwrap_or_default();
        if !is_unrecognized(status, &body) {
            return Err(peer_error(origin, status, &body));
        }
        tracing::debug!(%origin, "federation media unknown to the origin; using /_matrix/media/v3");
        let (base, host) = self.base_url(origin).await?;
        let response = self
            .http
            .get(format!("{base}{}", request.legacy_path(origin)))
            .timeout(MEDIA_TIMEOUT)
            .header(http::header::HOST, host)
            .send()
            .await
            .map_err(|e| bad_gateway(format!("Cannot reach {origin}: {e}")))?;
        self.read_plain(origin, response, limit).await
    }

    /// A GET signed with our key (X-Matrix), without a body.
    async fn signed_get(&self, destination: &ServerName, path: &str) -> Result<reqwest::Response> {
        let signed = http::Request::builder()
            .method(http::Method::GET)
            .uri(path)
            .body(Vec::<u8>::new())
            .map_err(|e| Error::internal(format!("request to {destination}: {e}")))?;
        let auth = hearth_federation::xmatrix::sign_request(
            &self.key,
            self.server_name(),
            destination,
            &signed,
        )
        .map_err(Error::internal)?;
        let (base, host) = self.base_url(destination).await?;
        self.http
            .get(format!("{base}{path}"))
            .timeout(MEDIA_TIMEOUT)
            .header(http::header::HOST, host)
            .header(http::header::AUTHORIZATION, auth)
            .send()
            .await
            .map_err(|e| bad_gateway(format!("Cannot reach {destination}: {e}")))
    }

    /// A 2xx `multipart/mixed` answer: the metadata part, then the file or a `Location` to fetch
    /// it from.
    async fn read_multipart(
        &self,
        origin: &ServerName,
        response: reqwest::Response,
        limit: u64,
    ) -> Result<RemoteFile> {
        let content_type = header(&response, http::header::CONTENT_TYPE).unwrap_or_default();
        let boundary = multipart_boundary(&content_type).ok_or_else(|| {
            bad_gateway(format!(
                "{origin} answered with {content_type:?}, not multipart/mixed with a boundary"
            ))
        })?;
        let body = read_limited(origin, response, limit.saturating_add(MULTIPART_OVERHEAD))
            .await?
            .ok_or_else(|| too_large(origin))?;
        let malformed = || bad_gateway(format!("Malformed multipart/mixed answer from {origin}"));
        let mut parts = multipart_parts(&body, &boundary)
            .filter(|p| p.len() == 2)
            .ok_or_else(malformed)?
            .into_iter();
        let (Some(metadata), Some(file)) = (parts.next(), parts.next()) else {
            return Err(malformed());
        };
        if !serde_json::from_slice::<JsonValue>(&metadata.body).is_ok_and(|m| m.is_object()) {
            return Err(malformed());
        }
        if let Some(location) = file.header("location") {
            return self.follow_location(origin, location, limit).await;
        }
        if file.body.len() as u64 > limit {
            return Err(too_large(origin));
        }
        Ok(RemoteFile {
            content_type: file.header("content-type").map(str::to_owned),
            filename: filename_of(file.header("content-disposition")),
            data: file.body,
        })
    }

    /// The file at a `Location` the origin gave. The origin chooses the URL, so it is fetched
    /// like a URL preview: only public addresses unless `media.url_preview.allow` says otherwise,
    /// checked on every redirect; else any server could make us fetch, and serve back, what
    /// sits on our internal network. Per the spec the URL is not cached (it may stop working).
    async fn follow_location(
        &self,
        origin: &ServerName,
        location: &str,
        limit: u64,
    ) -> Result<RemoteFile> {
        let policy = AddressPolicy::new(&self.config.media.url_preview);
        let fetched = tokio::time::timeout(MEDIA_TIMEOUT, preview::fetch(&policy, location, limit))
            .await
            .map_err(|_| bad_gateway(format!("{origin}'s media location {location} timed out")))?
            .map_err(|e| match e.errcode().as_str() {
                "M_TOO_LARGE" => too_large(origin),
                _ => bad_gateway(format!("{origin}'s media location {location}: {e}")),
            })?;
        Ok(RemoteFile {
            content_type: Some(fetched.content_type),
            filename: filename_of(fetched.content_disposition.as_deref()),
            data: fetched.body,
        })
    }

    /// A plain answer: the body is the file, described by the response headers.
    async fn read_plain(
        &self,
        origin: &ServerName,
        response: reqwest::Response,
        limit: u64,
    ) -> Result<RemoteFile> {
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = read_limited(origin, response, MULTIPART_OVERHEAD)
                .await?
                .unwrap_or_default();
            return Err(peer_error(origin, status, &body));
        }
        let content_type = header(&response, http::header::CONTENT_TYPE);
        let filename = filename_of(header(&response, http::header::CONTENT_DISPOSITION).as_deref());
        let data = read_limited(origin, response, limit)
            .await?
            .ok_or_else(|| too_large(origin))?;
        Ok(RemoteFile {
            data,
            content_type,
            filename,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_are_read_from_the_content_type() {
        assert_eq!(
            multipart_boundary("multipart/mixed; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            multipart_boundary("Multipart/Mixed;charset=x; BOUNDARY=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(multipart_boundary("multipart/mixed"), None);
        assert_eq!(multipart_boundary("text/plain; boundary=abc"), None);
        assert_eq!(multipart_boundary("multipart/mixed; boundary="), None);
    }

    #[test]
    fn multipart_bodies_split_into_parts() {
        let body = Bytes::from_static(
            b"\r\n--xyz\r\nContent-Type: application/json\r\n\r\n{}\r\n--xyz\r\n\
              Content-Type: text/plain\r\nContent-Disposition: inline; filename=\"a.txt\"\r\n\r\n\
              line one\r\n--xy not a delimiter\r\n--xyz--\r\n",
        );
        let parts = multipart_parts(&body, "xyz").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(&parts[0].body[..], b"{}");
        assert_eq!(parts[0].header("content-type"), Some("application/json"));
        assert_eq!(&parts[1].body[..], b"line one\r\n--xy not a delimiter");
        assert_eq!(
            filename_of(parts[1].header("content-disposition")).as_deref(),
            Some("a.txt")
        );

        // No CRLF before the first delimiter, bare LFs in part headers, an empty file.
        let body = Bytes::from_static(b"--b\n\n{}\r\n--b\nLocation: https://x/y\n\n\r\n--b--");
        let parts = multipart_parts(&body, "b").unwrap();
        assert_eq!(parts[1].header("location"), Some("https://x/y"));
        assert!(parts[1].body.is_empty());

        // Unterminated or missing parts are malformed.
        assert!(multipart_parts(&Bytes::from_static(b"\r\n--b\r\n\r\n{}"), "b").is_none());
        assert!(multipart_parts(&Bytes::from_static(b"no delimiter"), "b").is_none());
    }

    #[test]
    fn unrecognized_endpoints_fall_back_and_missing_media_does_not() {
        assert!(is_unrecognized(404, br#"{"errcode":"M_UNRECOGNIZED"}"#));
        assert!(is_unrecognized(400, br#"{"errcode":"M_UNRECOGNIZED"}"#));
        assert!(is_unrecognized(404, b"<html>Not Found</html>"));
        assert!(!is_unrecognized(404, br#"{"errcode":"M_NOT_FOUND"}"#));
        assert!(!is_unrecognized(500, b""));
    }
}
