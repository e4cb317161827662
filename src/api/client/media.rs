//! Media endpoints: upload (direct and to a `/create`d ID), download and thumbnails (authenticated
//! under `/_matrix/client/v1/media`, and the deprecated unauthenticated `/_matrix/media/v3` ones),
//! config and URL previews.
//!
//! Uploads and downloads are plain axum handlers: their bodies are binary and streamed, uploads are
//! limited by `media.max_upload_size` rather than the JSON limit the `Ruma` extractor applies, and
//! downloads answer range requests. They authenticate with `Authenticated`, the same check `Ruma`
//! makes. The headers of served content follow the spec's "Serving inline content" rules.

use std::{collections::HashMap, ops::Range, time::Duration};

use axum::{
    body::Body,
    extract::{
        rejection::{PathRejection, QueryRejection},
        Path, Query, Request, State,
    },
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use ruma::{
    api::client::{
        authenticated_media::{get_media_config as config_v1, get_media_preview as preview_v1},
        media::{create_mxc_uri, get_media_config as config_v3, get_media_preview as preview_v3},
    },
    MilliSecondsSinceUnixEpoch, OwnedServerName, UInt,
};
use serde_json::json;

use crate::{
    api::{
        content::{content_disposition, content_type, is_inline},
        ruma::{read_body, Authenticated, Ruma},
        AppState, RouterExt,
    },
    error::{Error, Result},
    service::media::{
        parse_media_path,
        thumbnail::{Method, MAX_THUMBNAIL_SIDE},
    },
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    let mut router = router
        .ruma(media_config_v1)
        .ruma(media_config_v3)
        .ruma(create_mxc)
        .ruma(preview_url_v1)
        .ruma(preview_url_v3)
        .route(
            "/_matrix/media/v3/upload/{server_name}/{media_id}",
            put(upload_to_mxc),
        )
        .route(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}",
            get(download),
        )
        .route(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}/{file_name}",
            get(download_as),
        )
        .route(
            "/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}",
            get(thumbnail),
        );
    for version in ["v3", "r0"] {
        router = router
            .route(&format!("/_matrix/media/{version}/upload"), post(upload))
            .route(
                &format!("/_matrix/media/{version}/download/{{server_name}}/{{media_id}}"),
                get(legacy_download),
            )
            .route(
                &format!(
                    "/_matrix/media/{version}/download/{{server_name}}/{{media_id}}/{{file_name}}"
                ),
                get(legacy_download_as),
            )
            .route(
                &format!("/_matrix/media/{version}/thumbnail/{{server_name}}/{{media_id}}"),
                get(legacy_thumbnail),
            );
    }
    router
}

/// The spec's recommended policy for served media.
const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; \
     plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';";

/// The spec's default wait for a `/create`d ID's content.
const DEFAULT_TIMEOUT_MS: u64 = 20_000;

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn params(query: Params) -> Result<HashMap<String, String>> {
    query
        .map(|Query(q)| q)
        .map_err(|e| Error::invalid_param(format!("Invalid query: {e}")))
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T> {
    p.map(|Path(t)| t)
        .map_err(|e| Error::invalid_param(format!("Invalid path: {e}")))
}

fn timeout(q: &HashMap<String, String>) -> Result<Duration> {
    match q.get("timeout_ms") {
        None => Ok(Duration::from_millis(DEFAULT_TIMEOUT_MS)),
        Some(v) => v
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| Error::invalid_param("timeout_ms must be a non-negative integer")),
    }
}

async fn media_config_v1(
    State(services): State<AppState>,
    _: Ruma<config_v1::v1::Request>,
) -> Result<config_v1::v1::Response> {
    Ok(config_v1::v1::Response::new(upload_size(&services)))
}

// The deprecated legacy endpoint, still served for older clients.
#[allow(deprecated)]
async fn media_config_v3(
    State(services): State<AppState>,
    _: Ruma<config_v3::v3::Request>,
) -> Result<config_v3::v3::Response> {
    Ok(config_v3::v3::Response::new(upload_size(&services)))
}

fn upload_size(services: &AppState) -> UInt {
    UInt::try_from(services.media.max_upload_size()).unwrap_or(UInt::MAX)
}

async fn create_mxc(
    State(services): State<AppState>,
    req: Ruma<create_mxc_uri::v1::Request>,
) -> Result<create_mxc_uri::v1::Response> {
    let session = req.session()?;
    let (content_uri, expires) = services
        .media
        .create_pending(&session.user_id, session.user)
        .await?;
    let mut resp = create_mxc_uri::v1::Response::new(content_uri);
    resp.unused_expires_at = UInt::try_from(expires).ok().map(MilliSecondsSinceUnixEpoch);
    Ok(resp)
}

async fn preview_url_v1(
    State(services): State<AppState>,
    req: Ruma<preview_v1::v1::Request>,
) -> Result<preview_v1::v1::Response> {
    let data = services.media.preview(&req.body.url).await?;
    preview_v1::v1::Response::from_serialize(&data).map_err(Error::internal)
}

#[allow(deprecated)]
async fn preview_url_v3(
    State(services): State<AppState>,
    req: Ruma<preview_v3::v3::Request>,
) -> Result<preview_v3::v3::Response> {
    let data = services.media.preview(&req.body.url).await?;
    preview_v3::v3::Response::from_serialize(&data).map_err(Error::internal)
}

/// The upload's declared type and `filename` query parameter.
fn upload_meta(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> (Option<String>, Option<String>) {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let filename = query.get("filename").filter(|f| !f.is_empty()).cloned();
    (content_type, filename)
}

/// `POST /_matrix/media/v3/upload`
async fn upload(
    State(services): State<AppState>,
    Authenticated(session): Authenticated,
    query: Params,
    req: Request,
) -> Result<Json<serde_json::Value>> {
    let query = params(query)?;
    let (parts, body) = req.into_parts();
    let (content_type, filename) = upload_meta(&parts.headers, &query);
    let data = read_body(&parts, body, upload_limit(&services)).await?;
    let content_uri = services
        .media
        .upload(
            Some((&session.user_id, session.user)),
            content_type,
            filename,
            data,
        )
        .await?;
    Ok(Json(json!({ "content_uri": content_uri })))
}

fn upload_limit(services: &AppState) -> usize {
    usize::try_from(services.media.max_upload_size()).unwrap_or(usize::MAX)
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`
async fn upload_to_mxc(
    State(services): State<AppState>,
    Authenticated(session): Authenticated,
    p: Result<Path<(String, String)>, PathRejection>,
    query: Params,
    req: Request,
) -> Result<Json<serde_json::Value>> {
    let (server_name, media_id) = path(p)?;
    let server = parse_media_path(&server_name, &media_id)?;
    let query = params(query)?;
    // Refuse before reading a body that could not be stored anyway.
    services
        .media
        .check_pending(&session.user_id, &server, &media_id)?;
    let (parts, body) = req.into_parts();
    let (content_type, filename) = upload_meta(&parts.headers, &query);
    let data = read_body(&parts, body, upload_limit(&services)).await?;
    services
        .media
        .upload_pending(
            (&session.user_id, session.user),
            &server,
            &media_id,
            content_type,
            filename,
            data,
        )
        .await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`
async fn download(
    State(services): State<AppState>,
    _: Authenticated,
    p: Result<Path<(String, String)>, PathRejection>,
    query: Params,
    headers: HeaderMap,
) -> Result<Response> {
    let (server, media_id) = path(p)?;
    serve_download(&services, &server, &media_id, None, query, &headers).await
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`
async fn download_as(
    State(services): State<AppState>,
    _: Authenticated,
    p: Result<Path<(String, String, String)>, PathRejection>,
    query: Params,
    headers: HeaderMap,
) -> Result<Response> {
    let (server, media_id, file_name) = path(p)?;
    serve_download(
        &services,
        &server,
        &media_id,
        Some(file_name),
        query,
        &headers,
    )
    .await
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`
async fn thumbnail(
    State(services): State<AppState>,
    _: Authenticated,
    p: Result<Path<(String, String)>, PathRejection>,
    query: Params,
) -> Result<Response> {
    let (server, media_id) = path(p)?;
    serve_thumbnail(&services, &server, &media_id, query).await
}

/// The deprecated endpoints are "frozen" (404, as the spec allows) when configured off.
fn legacy_allowed(services: &AppState) -> Result<()> {
    if services.media.legacy_endpoints() {
        Ok(())
    } else {
        Err(Error::not_found(
            "Unauthenticated media is disabled; use /_matrix/client/v1/media",
        ))
    }
}

/// `allow_remote=false` on a deprecated endpoint: remote media is not fetched (the spec's guard
/// against servers asking each other in a loop), so it is not found.
fn remote_allowed(services: &AppState, server: &str, query: &Params) -> Result<()> {
    let refused = query
        .as_ref()
        .is_ok_and(|q| q.get("allow_remote").is_some_and(|v| v == "false"));
    if refused && server != services.media.server_name().as_str() {
        return Err(Error::not_found(
            "Remote media is not fetched when allow_remote is false",
        ));
    }
    Ok(())
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}` (deprecated, unauthenticated)
async fn legacy_download(
    State(services): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    query: Params,
    headers: HeaderMap,
) -> Result<Response> {
    legacy_allowed(&services)?;
    let (server, media_id) = path(p)?;
    remote_allowed(&services, &server, &query)?;
    serve_download(&services, &server, &media_id, None, query, &headers).await
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}` (deprecated)
async fn legacy_download_as(
    State(services): State<AppState>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    query: Params,
    headers: HeaderMap,
) -> Result<Response> {
    legacy_allowed(&services)?;
    let (server, media_id, file_name) = path(p)?;
    remote_allowed(&services, &server, &query)?;
    serve_download(
        &services,
        &server,
        &media_id,
        Some(file_name),
        query,
        &headers,
    )
    .await
}

/// `GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}` (deprecated, unauthenticated)
async fn legacy_thumbnail(
    State(services): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    query: Params,
) -> Result<Response> {
    legacy_allowed(&services)?;
    let (server, media_id) = path(p)?;
    remote_allowed(&services, &server, &query)?;
    serve_thumbnail(&services, &server, &media_id, query).await
}

fn media_path(server: &str, media_id: &str) -> Result<OwnedServerName> {
    parse_media_path(server, media_id)
}

async fn serve_download(
    services: &AppState,
    server: &str,
    media_id: &str,
    file_name: Option<String>,
    query: Params,
    headers: &HeaderMap,
) -> Result<Response> {
    let server = media_path(server, media_id)?;
    let wait = timeout(&params(query)?)?;
    let content = services.media.content(&server, media_id, wait).await?;
    let content_type = content_type(&content);
    let disposition = if is_inline(&content_type) {
        "inline"
    } else {
        "attachment"
    };
    let filename = file_name.or(content.filename.clone());
    let size = content.size;
    let range = match requested_range(headers.get(header::RANGE), size) {
        RangeRequest::Full => None,
        RangeRequest::Partial(r) => Some(r),
        RangeRequest::Unsatisfiable => {
            let mut resp = Error::unknown("Requested range is not satisfiable")
                .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                .into_response();
            set(&mut resp, header::CONTENT_RANGE, &format!("bytes */{size}"));
            return Ok(resp);
        }
    };
    let stream = services.media.open(content.hash, range.clone()).await?;
    let mut resp = Response::new(Body::from_stream(stream));
    let length = match &range {
        Some(r) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            set(
                &mut resp,
                header::CONTENT_RANGE,
                &format!("bytes {}-{}/{size}", r.start, r.end - 1),
            );
            r.end - r.start
        }
        None => size,
    };
    set(&mut resp, header::CONTENT_LENGTH, &length.to_string());
    set(&mut resp, header::ACCEPT_RANGES, "bytes");
    content_headers(
        &mut resp,
        &content_type,
        &content_disposition(disposition, filename.as_deref()),
    );
    Ok(resp)
}

async fn serve_thumbnail(
    services: &AppState,
    server: &str,
    media_id: &str,
    query: Params,
) -> Result<Response> {
    let server = media_path(server, media_id)?;
    let q = params(query)?;
    let side = |name: &str| -> Result<u32> {
        let raw = q
            .get(name)
            .ok_or_else(|| Error::missing_param(format!("Missing `{name}`")))?;
        raw.parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_THUMBNAIL_SIDE).contains(n))
            .ok_or_else(|| {
                Error::invalid_param(format!(
                    "`{name}` must be an integer from 1 to {MAX_THUMBNAIL_SIDE}"
                ))
            })
    };
    let (width, height) = (side("width")?, side("height")?);
    let method = match q.get("method").map(String::as_str) {
        None | Some("scale") => Method::Scale,
        Some("crop") => Method::Crop,
        Some(_) => return Err(Error::invalid_param("`method` must be crop or scale")),
    };
    let animated = match q.get("animated").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(Error::invalid_param("`animated` must be true or false")),
    };
    let content = services
        .media
        .thumbnail(
            &server,
            media_id,
            (width, height),
            method,
            animated,
            timeout(&q)?,
        )
        .await?;
    let content_type = content_type(&content);
    let extension = content_type.strip_prefix("image/").unwrap_or("bin");
    let stream = services.media.open(content.hash, None).await?;
    let mut resp = Response::new(Body::from_stream(stream));
    set(&mut resp, header::CONTENT_LENGTH, &content.size.to_string());
    // The spec: a thumbnail is always `inline`, named like `thumbnail.png`.
    content_headers(
        &mut resp,
        &content_type,
        &content_disposition("inline", Some(&format!("thumbnail.{extension}"))),
    );
    Ok(resp)
}

fn set(resp: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// Headers of every piece of served content.
pub(crate) fn content_headers(resp: &mut Response, content_type: &str, disposition: &str) {
    set(resp, header::CONTENT_TYPE, content_type);
    set(resp, header::CONTENT_DISPOSITION, disposition);
    set(
        resp,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(
        resp,
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "cross-origin",
    );
    set(resp, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
}

#[derive(Debug, PartialEq)]
enum RangeRequest {
    Full,
    Partial(Range<u64>),
    Unsatisfiable,
}

/// A single `bytes=` range (RFC 9110 §14); several ranges, other units and malformed headers are
/// answered with the whole content, as the RFC allows.
fn requested_range(header: Option<&HeaderValue>, size: u64) -> RangeRequest {
    let Some(spec) = header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.trim().strip_prefix("bytes="))
    else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // A suffix: the last N bytes.
        return match last.parse::<u64>() {
            Ok(0) => RangeRequest::Unsatisfiable,
            Ok(_) if size == 0 => RangeRequest::Unsatisfiable,
            Ok(n) => RangeRequest::Partial(size - n.min(size)..size),
            Err(_) => RangeRequest::Full,
        };
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeRequest::Full;
    };
    let end = if last.is_empty() {
        size
    } else {
        match last.parse::<u64>() {
            Ok(l) if l >= start => l.saturating_add(1).min(size),
            _ => return RangeRequest::Full,
        }
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(h: &str, size: u64) -> RangeRequest {
        requested_range(Some(&HeaderValue::from_str(h).unwrap()), size)
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(range("bytes=0-9", 100), RangeRequest::Partial(0..10));
        assert_eq!(range("bytes=90-200", 100), RangeRequest::Partial(90..100));
        assert_eq!(range("bytes=10-", 100), RangeRequest::Partial(10..100));
        assert_eq!(range("bytes=-30", 100), RangeRequest::Partial(70..100));
        assert_eq!(range("bytes=-300", 100), RangeRequest::Partial(0..100));
        assert_eq!(range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), RangeRequest::Unsatisfiable);
        assert_eq!(range("bytes=5-1", 100), RangeRequest::Full);
        assert_eq!(range("bytes=0-1,5-6", 100), RangeRequest::Full);
        assert_eq!(range("items=0-1", 100), RangeRequest::Full);
        assert_eq!(requested_range(None, 100), RangeRequest::Full);
    }
}
