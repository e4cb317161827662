//! Serving our media to other servers: `GET /_matrix/federation/v1/media/download/{mediaId}` and
//! `/thumbnail/{mediaId}`, authenticated by the requesting server's X-Matrix signature (the `Ruma`
//! extractor). Only local media is served: a media ID names media of this server. Answers are
//! `multipart/mixed`, an empty JSON metadata part then the file, streamed from the store.

use axum::{body::Body, extract::State, response::Response, routing::get, Router};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue};
use ruma::{
    api::federation::authenticated_media::{get_content, get_content_thumbnail},
    media::Method as RumaMethod,
    UInt,
};

use crate::{
    api::{
        content::{content_disposition, content_type, is_inline},
        ruma::Ruma,
        AppState,
    },
    error::{Error, Result},
    service::media::{
        is_valid_media_id,
        thumbnail::{Method, MAX_THUMBNAIL_SIDE},
        Content,
    },
    util::random_string,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route(
            "/_matrix/federation/v1/media/download/{media_id}",
            get(download),
        )
        .route(
            "/_matrix/federation/v1/media/thumbnail/{media_id}",
            get(thumbnail),
        )
}

/// Length of the multipart boundary: random letters and digits, so it cannot occur by chance in
/// the file.
const BOUNDARY_LEN: usize = 48;

fn media_id(id: &str) -> Result<&str> {
    if is_valid_media_id(id) {
        Ok(id)
    } else {
        Err(Error::invalid_param(
            "Invalid media ID: only A-Z, a-z, 0-9, _ and - are allowed",
        ))
    }
}

async fn download(
    State(services): State<AppState>,
    req: Ruma<get_content::v1::Request>,
) -> Result<Response> {
    let id = media_id(&req.body.media_id)?;
    let content = services
        .media
        .content(services.media.server_name(), id, req.body.timeout_ms)
        .await?;
    let kind = content_type(&content);
    let disposition = if is_inline(&kind) {
        "inline"
    } else {
        "attachment"
    };
    let disposition = content_disposition(disposition, content.filename.as_deref());
    let response = multipart(&services, &content, &kind, &disposition).await?;
    services.media.note_federation_served();
    tracing::debug!(origin = ?req.origin, media_id = id, "media served over federation");
    Ok(response)
}

fn side(value: UInt, name: &str) -> Result<u32> {
    u32::try_from(value)
        .ok()
        .filter(|n| (1..=MAX_THUMBNAIL_SIDE).contains(n))
        .ok_or_else(|| {
            Error::invalid_param(format!(
                "`{name}` must be an integer from 1 to {MAX_THUMBNAIL_SIDE}"
            ))
        })
}

async fn thumbnail(
    State(services): State<AppState>,
    req: Ruma<get_content_thumbnail::v1::Request>,
) -> Result<Response> {
    let b = &req.body;
    let id = media_id(&b.media_id)?;
    let (width, height) = (side(b.width, "width")?, side(b.height, "height")?);
    let method = match &b.method {
        None | Some(RumaMethod::Scale) => Method::Scale,
        Some(RumaMethod::Crop) => Method::Crop,
        Some(_) => return Err(Error::invalid_param("`method` must be crop or scale")),
    };
    let content = services
        .media
        .thumbnail(
            services.media.server_name(),
            id,
            (width, height),
            method,
            b.animated.unwrap_or(false),
            b.timeout_ms,
        )
        .await?;
    let kind = content_type(&content);
    let extension = kind.strip_prefix("image/").unwrap_or("bin");
    let disposition = content_disposition("inline", Some(&format!("thumbnail.{extension}")));
    let response = multipart(&services, &content, &kind, &disposition).await?;
    services.media.note_federation_served();
    Ok(response)
}

/// The spec's two-part answer: `{}` as the metadata, then the content with its type and
/// disposition. The file is streamed from the store; the length is known in advance.
async fn multipart(
    services: &AppState,
    content: &Content,
    kind: &str,
    disposition: &str,
) -> Result<Response> {
    let boundary = random_string(BOUNDARY_LEN);
    let head = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n\
         --{boundary}\r\nContent-Type: {kind}\r\nContent-Disposition: {disposition}\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let length = head.len() as u64 + content.size + tail.len() as u64;
    let file = services.media.open(content.hash, None).await?;
    let body = futures_util::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(file)
        .chain(futures_util::stream::once(
            async move { Ok(Bytes::from(tail)) },
        ));
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}"))
            .map_err(Error::internal)?,
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Ok(response)
}
