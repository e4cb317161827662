//! The one error type of the server and its mapping to Matrix errcodes and HTTP statuses.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
use ruma::api::client::uiaa::UiaaInfo;
use serde_json::json;

use crate::storage::StorageError;

/// A Matrix error code, with the extra fields some of them carry.
#[derive(Clone, Debug, PartialEq)]
pub enum ErrorCode {
    Forbidden,
    UnknownToken {
        soft_logout: bool,
    },
    MissingToken,
    BadJson,
    NotJson,
    NotFound,
    LimitExceeded {
        retry_after_ms: u64,
    },
    Unrecognized,
    Unknown,
    UserInUse,
    InvalidUsername,
    InvalidParam,
    MissingParam,
    TooLarge,
    UserDeactivated,
    WeakPassword,
    Exclusive,
    Unauthorized,
    UnsupportedRoomVersion,
    ProfileTooLarge,
    KeyTooLarge,
    RoomInUse,
    BadAlias,
    DuplicateAnnotation,
    /// An async upload to a media ID that already has content.
    CannotOverwriteMedia,
    /// Media created with /create whose content has not arrived in time.
    NotYetUploaded,
    /// A key backup write named a version other than the current one.
    /// make_join for a room version the joining server did not list.
    IncompatibleRoomVersion {
        room_version: String,
    },
    WrongRoomKeysVersion {
        current_version: String,
    },
}

impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Forbidden => "M_FORBIDDEN",
            Self::DuplicateAnnotation => "M_DUPLICATE_ANNOTATION",
            Self::UnknownToken { .. } => "M_UNKNOWN_TOKEN",
            Self::MissingToken => "M_MISSING_TOKEN",
            Self::BadJson => "M_BAD_JSON",
            Self::NotJson => "M_NOT_JSON",
            Self::NotFound => "M_NOT_FOUND",
            Self::LimitExceeded { .. } => "M_LIMIT_EXCEEDED",
            Self::Unrecognized => "M_UNRECOGNIZED",
            Self::Unknown => "M_UNKNOWN",
            Self::UserInUse => "M_USER_IN_USE",
            Self::InvalidUsername => "M_INVALID_USERNAME",
            Self::InvalidParam => "M_INVALID_PARAM",
            Self::MissingParam => "M_MISSING_PARAM",
            Self::TooLarge => "M_TOO_LARGE",
            Self::UserDeactivated => "M_USER_DEACTIVATED",
            Self::WeakPassword => "M_WEAK_PASSWORD",
            Self::Exclusive => "M_EXCLUSIVE",
            Self::Unauthorized => "M_UNAUTHORIZED",
            Self::UnsupportedRoomVersion => "M_UNSUPPORTED_ROOM_VERSION",
            Self::ProfileTooLarge => "M_PROFILE_TOO_LARGE",
            Self::KeyTooLarge => "M_KEY_TOO_LARGE",
            Self::RoomInUse => "M_ROOM_IN_USE",
            Self::BadAlias => "M_BAD_ALIAS",
            Self::WrongRoomKeysVersion { .. } => "M_WRONG_ROOM_KEYS_VERSION",
            Self::IncompatibleRoomVersion { .. } => "M_INCOMPATIBLE_ROOM_VERSION",
            Self::CannotOverwriteMedia => "M_CANNOT_OVERWRITE_MEDIA",
            Self::NotYetUploaded => "M_NOT_YET_UPLOADED",
        }
    }
}

#[derive(Debug)]
pub enum Error {
    /// A Matrix error response.
    Matrix {
        status: StatusCode,
        code: ErrorCode,
        message: Cow<'static, str>,
    },
    /// User-interactive authentication is needed (or a stage failed): 401 with the flows.
    Uiaa(Box<UiaaInfo>),
    /// A fault on our side; logged, reported to the client without details.
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Matrix {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }
    pub fn bad_json(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadJson, message)
    }
    pub fn invalid_param(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidParam, message)
    }
    pub fn missing_param(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::MissingParam, message)
    }
    pub fn unrecognized(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(status, ErrorCode::Unrecognized, message)
    }
    pub fn too_large(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, message)
    }
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::LimitExceeded { retry_after_ms },
            "Too many requests",
        )
    }
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::Internal(message.to_string())
    }

    /// Replaces the errcode, keeping status and message.
    pub fn with_code(self, new: ErrorCode) -> Self {
        match self {
            Self::Matrix {
                status, message, ..
            } => Self::Matrix {
                status,
                code: new,
                message,
            },
            other => other,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Matrix { status, .. } => *status,
            Self::Uiaa(_) => StatusCode::UNAUTHORIZED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The errcode, for logs and tests.
    pub fn errcode(&self) -> &'static str {
        match self {
            Self::Matrix { code, .. } => code.as_str(),
            Self::Uiaa(info) => info
                .auth_error
                .as_ref()
                .map(|_| "M_FORBIDDEN")
                .unwrap_or("M_UNAUTHORIZED"),
            Self::Internal(_) => "M_UNKNOWN",
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Matrix { code, message, .. } => write!(f, "{}: {message}", code.as_str()),
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
            Error::Matrix { code, message, .. } => {
                let mut body = json!({ "errcode": code.as_str(), "error": message });
                match code {
                    ErrorCode::LimitExceeded { retry_after_ms } => {
                        body["retry_after_ms"] = retry_after_ms.into();
                    }
                    ErrorCode::UnknownToken { soft_logout: true } => {
                        body["soft_logout"] = true.into();
                    }
                    ErrorCode::IncompatibleRoomVersion { room_version } => {
                        body["room_version"] = room_version.as_str().into();
                    }
                    ErrorCode::WrongRoomKeysVersion { current_version } => {
                        body["current_version"] = current_version.into();
                    }
                    _ => {}
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
