//! How served media content is described in HTTP, the same for clients and for other servers:
//! its Content-Type, whether it may be shown inline, and its Content-Disposition.

use http::HeaderValue;

use crate::service::media::Content;

/// Content types the spec lets servers serve `inline`; everything else is an attachment.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// The stored type when it is a usable header value, else `application/octet-stream` (the
/// spec's answer for an unknown type).
pub fn content_type(content: &Content) -> String {
    content
        .content_type
        .as_deref()
        .filter(|t| t.contains('/') && HeaderValue::from_str(t).is_ok())
        .unwrap_or("application/octet-stream")
        .to_owned()
}

pub fn is_inline(content_type: &str) -> bool {
    let essence = crate::service::media::preview::mime_essence(content_type);
    INLINE_TYPES.contains(&essence.as_str())
}

/// A Content-Disposition value with the filename per RFC 6266: a quoted `filename` when it is
/// plain printable ASCII, else `filename*=utf-8''` with percent-encoding (RFC 8187).
pub fn content_disposition(disposition: &str, filename: Option<&str>) -> String {
    let Some(name) = filename.filter(|n| !n.is_empty()) else {
        return disposition.to_owned();
    };
    let plain = name
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' && b != b'%');
    if plain {
        return format!("{disposition}; filename=\"{name}\"");
    }
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{disposition}; filename*=utf-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_encode_filenames() {
        assert_eq!(content_disposition("inline", None), "inline");
        assert_eq!(
            content_disposition("attachment", Some("cat.png")),
            "attachment; filename=\"cat.png\""
        );
        assert_eq!(
            content_disposition("inline", Some("kätzchen \"1\".png")),
            "inline; filename*=utf-8''k%C3%A4tzchen%20%221%22.png"
        );
        assert!(is_inline("image/png"));
        assert!(is_inline("Text/Plain; charset=utf-8"));
        assert!(!is_inline("text/html"));
        assert!(!is_inline("image/svg+xml"));
    }
}
