//! The one error type of the server: a Matrix [`ErrorKind`] (ruma's) and a message, with the HTTP
//! status derived from the kind in one place ([`default_status`]). Services say *what* went wrong
//! (the kind, or a named cause such as [`Error::upstream`]); they never pick an HTTP status. The few
//! answers whose status differs from the kind's default for the same errcode (405 vs 404
//! `M_UNRECOGNIZED`, 502 `M_TOO_LARGE` for remote media, 504 for a peer that timed out) are named
//! constructors here or an explicit [`Error::with_status`] in `api/`.

use std::{borrow::Cow, time::Duration};

use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
pub use ruma::api::error::ErrorKind;
use ruma::{
    api::{
        client::uiaa::UiaaInfo,
        error::{
            IncompatibleRoomVersionErrorData, LimitExceededErrorData, RetryAfter,
            StandardErrorBody, UnknownTokenErrorData, WrongRoomKeysVersionErrorData,
        },
    },
    RoomVersionId,
};
use serde_json::json;

use crate::storage::StorageError;

/// The HTTP status a kind answers with unless the error says otherwise.
pub fn default_status(kind: &ErrorKind) -> StatusCode {
    use ErrorKind::*;
    match kind {
        LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        NotFound | Unrecognized => StatusCode::NOT_FOUND,
        CannotOverwriteMedia => StatusCode::CONFLICT,
        NotYetUploaded => StatusCode::GATEWAY_TIMEOUT,
        Forbidden
        | GuestAccessForbidden
        | UserDeactivated
        | UserSuspended
        | WrongRoomKeysVersion(_)
        | ThreepidAuthFailed
        | ThreepidDenied
        | ResourceLimitExceeded(_) => StatusCode::FORBIDDEN,
        UnknownToken(_) | MissingToken | Unauthorized | UserLocked => StatusCode::UNAUTHORIZED,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A kind ruma has no variant for (`M_PROFILE_TOO_LARGE`, `M_KEY_TOO_LARGE`, ...): ruma keeps
/// unknown errcodes as custom kinds, which only its deserializer can build.
pub fn custom_kind(errcode: &str) -> ErrorKind {
    serde_json::from_value(json!({ "errcode": errcode })).unwrap_or(ErrorKind::Unknown)
}

/// `M_UNKNOWN_TOKEN`, with `soft_logout` when the session can be resumed by logging in again.
pub fn unknown_token_kind(soft_logout: bool) -> ErrorKind {
    let mut data = UnknownTokenErrorData::new();
    data.soft_logout = soft_logout;
    ErrorKind::UnknownToken(data)
}

/// `M_INCOMPATIBLE_ROOM_VERSION` for a room of `room_version`.
pub fn incompatible_room_version_kind(room_version: &str) -> ErrorKind {
    let version = RoomVersionId::try_from(room_version).unwrap_or(RoomVersionId::V1);
    ErrorKind::IncompatibleRoomVersion(IncompatibleRoomVersionErrorData::new(version))
}

/// `M_WRONG_ROOM_KEYS_VERSION`, naming the current backup version.
pub fn wrong_room_keys_version_kind(current_version: impl Into<String>) -> ErrorKind {
    ErrorKind::WrongRoomKeysVersion(WrongRoomKeysVersionErrorData::new(current_version.into()))
}

#[derive(Clone, Debug)]
pub enum Error {
    /// A Matrix error response.
    Matrix {
        kind: ErrorKind,
        message: Cow<'static, str>,
        /// Set only where the same errcode needs another status than [`default_status`]
        /// (the constructors below and [`Error::with_status`]); `None` almost everywhere.
        status_override: Option<StatusCode>,
        /// Fields added to the body beside `errcode` and `error`, for errors that unstable
        /// features describe with fields ruma's kinds cannot carry (see [`Error::with_field`]).
        extra: Option<Box<serde_json::Map<String, serde_json::Value>>>,
    },
    /// User-interactive authentication is needed (or a stage failed): 401 with the flows.
    Uiaa(Box<UiaaInfo>),
    /// A fault on our side; logged, reported to the client without details.
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind`, answered with the kind's status.
    pub fn matrix(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Matrix {
            kind,
            message: message.into(),
            status_override: None,
            extra: None,
        }
    }
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(ErrorKind::Forbidden, message)
    }
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(ErrorKind::NotFound, message)
    }
    pub fn bad_json(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(ErrorKind::BadJson, message)
    }
    pub fn not_json(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(ErrorKind::NotJson, message)
    }
    pub fn invalid_param(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(ErrorKind::InvalidParam, message)
    }
    pub fn missing_param(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(ErrorKind::MissingParam, message)
    }
    pub fn missing_token(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(ErrorKind::MissingToken, message)
    }
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(ErrorKind::Unauthorized, message)
    }
    /// `400 M_UNKNOWN`: a request we refuse for a reason no errcode names.
    pub fn unknown(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(ErrorKind::Unknown, message)
    }
    /// `404 M_UNRECOGNIZED`: no such endpoint (see [`Error::method_not_allowed`] for 405).
    pub fn unrecognized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(ErrorKind::Unrecognized, message)
    }
    /// `405 M_UNRECOGNIZED`: the endpoint exists, not with this method.
    pub fn method_not_allowed(message: impl Into<Cow<'static, str>>) -> Self {
        Self::unrecognized(message).with_status(StatusCode::METHOD_NOT_ALLOWED)
    }
    pub fn too_large(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(ErrorKind::TooLarge, message)
    }
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        let mut data = LimitExceededErrorData::new();
        data.retry_after = Some(RetryAfter::Delay(Duration::from_millis(retry_after_ms)));
        Self::matrix(ErrorKind::LimitExceeded(data), "Too many requests")
    }
    /// `502 M_UNKNOWN`: a peer or upstream server failed us or answered something unusable.
    pub fn upstream(message: impl Into<Cow<'static, str>>) -> Self {
        Self::unknown(message).with_status(StatusCode::BAD_GATEWAY)
    }
    /// `502` with `kind`: an upstream answer we pass on under its errcode (e.g. `M_TOO_LARGE` for
    /// remote media larger than we serve), still reported as the upstream's failure.
    pub fn upstream_kind(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(kind, message).with_status(StatusCode::BAD_GATEWAY)
    }
    /// `504 M_UNKNOWN`: a peer or upstream server did not answer in time.
    pub fn upstream_timeout(message: impl Into<Cow<'static, str>>) -> Self {
        Self::unknown(message).with_status(StatusCode::GATEWAY_TIMEOUT)
    }
    /// `502 M_BAD_STATUS`: an upstream answered with an error status (kept, with its body).
    pub fn upstream_bad_status(
        status: u16,
        body: String,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        let mut data = ruma::api::error::BadStatusErrorData::new();
        data.status = StatusCode::from_u16(status).ok();
        data.body = Some(body);
        Self::upstream_kind(ErrorKind::BadStatus(data), message)
    }
    /// `504` with `kind`: an upstream that did not answer in time, under a specific errcode.
    pub fn upstream_timeout_kind(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(kind, message).with_status(StatusCode::GATEWAY_TIMEOUT)
    }
    /// `409 M_UNKNOWN`: the request conflicts with what exists (e.g. an alias already taken).
    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Self::unknown(message).with_status(StatusCode::CONFLICT)
    }
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::Internal(message.to_string())
    }

    /// Replaces the kind, keeping message and status.
    pub fn with_kind(self, new: ErrorKind) -> Self {
        match self {
            Self::Matrix {
                message,
                status_override,
                kind,
                extra,
            } => Self::Matrix {
                status_override: status_override.or_else(|| Some(default_status(&kind))),
                kind: new,
                message,
                extra,
            },
            other => other,
        }
    }

    /// Adds a field to the error body (e.g. MSC4140's `org.matrix.msc4140.errcode`, which
    /// clients read beside a standard `errcode`).
    pub fn with_field(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        if let Self::Matrix { extra, .. } = &mut self {
            extra
                .get_or_insert_with(Default::default)
                .insert(key.to_owned(), value.into());
        }
        self
    }

    /// Answers with `status` instead of the kind's default. For `api/`, where an endpoint's
    /// contract fixes a status for an errcode (services use the named constructors above).
    pub fn with_status(self, status: StatusCode) -> Self {
        match self {
            Self::Matrix {
                kind,
                message,
                extra,
                ..
            } => Self::Matrix {
                status_override: (status != default_status(&kind)).then_some(status),
                kind,
                message,
                extra,
            },
            other => other,
        }
    }

    pub fn kind(&self) -> Option<&ErrorKind> {
        match self {
            Self::Matrix { kind, .. } => Some(kind),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Matrix {
                kind,
                status_override,
                ..
            } => status_override.unwrap_or_else(|| default_status(kind)),
            Self::Uiaa(_) => StatusCode::UNAUTHORIZED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The errcode, for logs and tests.
    pub fn errcode(&self) -> String {
        match self {
            Self::Matrix { kind, .. } => kind.errcode().to_string(),
            Self::Uiaa(info) => info
                .auth_error
                .as_ref()
                .map(|_| "M_FORBIDDEN")
                .unwrap_or("M_UNAUTHORIZED")
                .to_owned(),
            Self::Internal(_) => "M_UNKNOWN".to_owned(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Matrix { kind, message, .. } => write!(f, "{}: {message}", kind.errcode()),
            Self::Uiaa(_) => f.write_str("user-interactive authentication required"),
            Self::Internal(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match self {
            Error::Matrix {
                kind,
                message,
                extra,
                ..
            } => {
                let mut body =
                    serde_json::to_value(StandardErrorBody::new(kind, message.into_owned()))
                        .unwrap_or_else(|_| json!({ "errcode": "M_UNKNOWN", "error": "" }));
                if let (Some(extra), Some(fields)) = (extra, body.as_object_mut()) {
                    for (k, v) in *extra {
                        // The standard fields stay what the kind says.
                        fields.entry(k).or_insert(v);
                    }
                }
                body
            }
            Error::Uiaa(info) => serde_json::to_value(&*info).unwrap_or_else(|_| json!({})),
            Error::Internal(message) => {
                tracing::error!(%message, "internal error");
                json!({ "errcode": "M_UNKNOWN", "error": "Internal server error" })
            }
        };
        let mut resp = (status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = match &body["retry_after_ms"] {
            serde_json::Value::Number(n) => n.as_u64().map(|ms| ms.div_ceil(1000)),
            _ => None,
        } {
            if let Ok(v) = http::HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: Error) -> (u16, String) {
        let status = e.status().as_u16();
        let body = match e {
            Error::Matrix { kind, message, .. } => {
                serde_json::to_value(StandardErrorBody::new(kind, message.into_owned()))
                    .unwrap()
                    .to_string()
            }
            _ => String::new(),
        };
        (status, body)
    }

    #[test]
    fn bodies_keep_the_errcode_message_and_extra_fields() {
        assert_eq!(
            body(Error::limit_exceeded(1500)),
            (
                429,
                r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too many requests","retry_after_ms":1500}"#
                    .to_owned()
            )
        );
        assert_eq!(
            body(Error::matrix(unknown_token_kind(true), "expired")),
            (
                401,
                r#"{"errcode":"M_UNKNOWN_TOKEN","error":"expired","soft_logout":true}"#.to_owned()
            )
        );
        assert_eq!(
            body(Error::matrix(unknown_token_kind(false), "no")).1,
            r#"{"errcode":"M_UNKNOWN_TOKEN","error":"no"}"#
        );
        assert_eq!(
            body(Error::matrix(incompatible_room_version_kind("12"), "v")),
            (
                400,
                r#"{"errcode":"M_INCOMPATIBLE_ROOM_VERSION","error":"v","room_version":"12"}"#
                    .to_owned()
            )
        );
        assert_eq!(
            body(Error::matrix(wrong_room_keys_version_kind("3"), "w")),
            (
                403,
                r#"{"current_version":"3","errcode":"M_WRONG_ROOM_KEYS_VERSION","error":"w"}"#
                    .to_owned()
            )
        );
        assert_eq!(
            body(Error::matrix(custom_kind("M_PROFILE_TOO_LARGE"), "p")),
            (
                400,
                r#"{"errcode":"M_PROFILE_TOO_LARGE","error":"p"}"#.to_owned()
            )
        );
    }

    #[test]
    fn status_comes_from_the_kind_unless_overridden() {
        assert_eq!(Error::not_found("x").status(), 404);
        assert_eq!(Error::unrecognized("x").status(), 404);
        assert_eq!(Error::method_not_allowed("x").status(), 405);
        assert_eq!(Error::upstream("x").status(), 502);
        assert_eq!(Error::upstream_timeout("x").status(), 504);
        assert_eq!(Error::upstream_kind(ErrorKind::TooLarge, "x").status(), 502);
        assert_eq!(Error::matrix(ErrorKind::NotYetUploaded, "x").status(), 504);
        assert_eq!(
            Error::matrix(ErrorKind::CannotOverwriteMedia, "x").status(),
            409
        );
        // Swapping the kind keeps the status the error had.
        let e = Error::bad_json("x").with_kind(ErrorKind::Forbidden);
        assert_eq!(
            (e.status().as_u16(), e.errcode().as_str()),
            (400, "M_FORBIDDEN")
        );
    }
}
