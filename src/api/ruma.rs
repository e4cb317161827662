//! The `Ruma<Request>` extractor: authenticates the request as its endpoint's metadata asks, reads
//! the body under the size limit, and parses path, query and body with ruma's request type.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use axum::{
    extract::{ConnectInfo, FromRequest, FromRequestParts, RawPathParams, Request},
    response::{IntoResponse, Response},
};
use bytes::BytesMut;
use ruma::api::{
    auth_scheme::{
        AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, NoAccessToken,
        NoAuthentication,
    },
    error::{DeserializationError, FromHttpRequestError},
    path_builder::PathBuilder,
    IncomingRequest, OutgoingResponse,
};

use crate::{
    error::Error,
    service::{sessions::Session, Services},
};

/// How an endpoint authenticates, derived from ruma's auth scheme type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthRequirement {
    None,
    AccessToken,
    AccessTokenOptional,
    /// A federation request signed by its origin (X-Matrix).
    ServerSignatures,
    /// An application service's `as_token`, identifying the appservice itself.
    Appservice,
    /// As `Appservice` when an `as_token` is given (registration and login of its users);
    /// any other token is ignored.
    AppserviceOptional,
}

pub trait AuthKind {
    const REQUIREMENT: AuthRequirement;
}

/// Implements [`AuthKind`] for ruma's authentication schemes: `Scheme => Requirement`.
macro_rules! auth_kinds {
    ($($(#[$doc:meta])* $scheme:ty => $requirement:ident;)*) => {$(
        $(#[$doc])*
        impl AuthKind for $scheme {
            const REQUIREMENT: AuthRequirement = AuthRequirement::$requirement;
        }
    )*};
}

auth_kinds! {
    NoAuthentication => None;
    NoAccessToken => None;
    AccessToken => AccessToken;
    AccessTokenOptional => AccessTokenOptional;
    AppserviceToken => Appservice;
    AppserviceTokenOptional => AppserviceOptional;
    ruma::api::federation::authentication::ServerSignatures => ServerSignatures;
}

/// A parsed, authenticated request.
pub struct Ruma<T> {
    pub body: T,
    pub session: Option<Session>,
    pub client_ip: IpAddr,
    /// The server that signed a federation request.
    pub origin: Option<ruma::OwnedServerName>,
    /// The appservice whose `as_token` an appservice endpoint was called with.
    pub appservice: Option<Arc<hearth_appservice::Registration>>,
    /// Whether the request carried a token at all (to tell a missing token from a wrong one
    /// where the token is optional).
    pub token_given: bool,
}

impl<T> Ruma<T> {
    /// The appservice whose `as_token` the request carried; 401 `M_UNKNOWN_TOKEN` for another
    /// token, `M_MISSING_TOKEN` for none.
    pub fn appservice(&self) -> Result<&Arc<hearth_appservice::Registration>, Error> {
        self.appservice.as_ref().ok_or_else(|| {
            if self.token_given {
                Error::matrix(
                    crate::error::unknown_token_kind(false),
                    "Not an application service token",
                )
            } else {
                Error::missing_token("Missing application service token")
            }
        })
    }

    /// The session behind the access token; present on every endpoint that requires one.
    pub fn session(&self) -> Result<&Session, Error> {
        // Endpoints with optional auth that still need a user answer as if the token were missing.
        self.session
            .as_ref()
            .ok_or_else(|| Error::missing_token("Missing access token"))
    }
}

/// Extracts the access token from the Authorization header or the deprecated query parameter.
pub fn access_token(parts: &http::request::Parts) -> Result<Option<String>, Error> {
    if let Some(value) = parts.headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().unwrap_or_default();
        return match value.strip_prefix("Bearer ") {
            Some(token) if !token.trim().is_empty() => Ok(Some(token.trim().to_owned())),
            _ => Err(Error::missing_token(
                "Authorization header must be `Bearer <access token>`",
            )),
        };
    }
    let query = parts.uri.query().unwrap_or_default();
    Ok(form_urlencoded_token(query))
}

fn form_urlencoded_token(query: &str) -> Option<String> {
    query_param(query, "access_token")
}

/// One query parameter, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v)).flatten()
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

pub fn client_ip(parts: &http::request::Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Reads a request body, refusing more than `limit` bytes with 413 M_TOO_LARGE.
pub async fn read_body(
    parts: &http::request::Parts,
    body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, Error> {
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        // Read (and drop) a moderately oversized body so the client, still sending it, gets
        // the 413 rather than a reset connection; far larger ones are cut off.
        if declared.is_some_and(|n| n <= DRAIN_LIMIT) {
            drain(body).await;
        }
        return Err(Error::too_large("Request body is too large"));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // `to_bytes` reports a length-limit error through the error's source chain.
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return Error::too_large("Request body is too large");
            }
            source = s.source();
        }
        Error::bad_json(format!("Could not read request body: {e}"))
    })
}

/// The largest oversized body read to its end before answering 413.
const DRAIN_LIMIT: u64 = 16 << 20;

async fn drain(body: axum::body::Body) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut seen = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            seen += data.len() as u64;
        }
        if seen > DRAIN_LIMIT {
            break;
        }
    }
}

/// Maps ruma's parse errors to the errcodes the spec gives them.
pub fn parse_error(e: FromHttpRequestError) -> Error {
    match e {
        FromHttpRequestError::MethodMismatch { .. } => {
            Error::method_not_allowed("Method not allowed")
        }
        FromHttpRequestError::Deserialization(d) => match d {
            DeserializationError::Json(j) => match j.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    Error::not_json(format!("Body is not valid JSON: {j}"))
                }
                _ => json_data_error(&j.to_string()),
            },
            DeserializationError::Utf8(e) => Error::not_json(format!("Body is not UTF-8: {e}")),
            DeserializationError::Ident(e) => {
                Error::invalid_param(format!("Invalid identifier: {e}"))
            }
            DeserializationError::Query(e) => {
                Error::invalid_param(format!("Invalid query parameter: {e}"))
            }
            other => Error::bad_json(other.to_string()),
        },
        // `FromHttpRequestError` is non-exhaustive.
        #[allow(unreachable_patterns)]
        other => Error::bad_json(other.to_string()),
    }
}

fn json_data_error(message: &str) -> Error {
    Error::bad_json(message.to_owned())
}

/// Authenticates a request as `requirement` asks, and records the device as seen.
pub fn authenticate(
    parts: &http::request::Parts,
    services: &Services,
    requirement: AuthRequirement,
) -> Result<Option<Session>, Error> {
    // Federation requests carry X-Matrix in Authorization, not an access token; endpoints without
    // authentication ignore the header, since Synapse signs even its fetches of our keys.
    if matches!(
        requirement,
        AuthRequirement::None
            | AuthRequirement::ServerSignatures
            | AuthRequirement::Appservice
            | AuthRequirement::AppserviceOptional
    ) {
        return Ok(None);
    }
    let token = access_token(parts)?;
    if let Some(reg) = token
        .as_deref()
        .and_then(|t| services.appservice.by_as_token(t))
    {
        let query = parts.uri.query().unwrap_or_default();
        let param = |name: &str| query_param(query, name);
        let session = services.sessions.as_appservice(
            reg,
            param("user_id").as_deref(),
            param("device_id").as_deref(),
        )?;
        return Ok(Some(session));
    }
    let session = match (requirement, token) {
        (
            AuthRequirement::None
            | AuthRequirement::ServerSignatures
            | AuthRequirement::Appservice
            | AuthRequirement::AppserviceOptional,
            _,
        ) => None,
        (AuthRequirement::AccessToken, None) => {
            return Err(Error::missing_token("Missing access token"))
        }
        (_, Some(token)) => Some(services.sessions.authenticate(&token)?),
        (AuthRequirement::AccessTokenOptional, None) => None,
    };
    if let Some(s) = &session {
        services.sessions.touch(s, client_ip(parts).to_string());
    }
    Ok(session)
}

/// The session of an endpoint that needs an access token but reads its body (or writes its
/// response) itself, outside ruma's types: media uploads and downloads, whose bodies are binary,
/// streamed and limited by `media.max_upload_size` instead of `limits.max_request_size`.
pub struct Authenticated(pub Session);

impl FromRequestParts<Arc<Services>> for Authenticated {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        services: &Arc<Services>,
    ) -> Result<Self, Error> {
        authenticate(parts, services, AuthRequirement::AccessToken)?
            .map(Authenticated)
            .ok_or_else(|| Error::internal("authenticated request without a session"))
    }
}

impl<T> FromRequest<Arc<Services>> for Ruma<T>
where
    T: IncomingRequest + Send,
    T::Authentication: AuthKind,
{
    type Rejection = Error;

    async fn from_request(req: Request, services: &Arc<Services>) -> Result<Self, Error> {
        let (mut parts, body) = req.into_parts();
        let mut path_args: Vec<String> =
            match RawPathParams::from_request_parts(&mut parts, services).await {
                Ok(params) => params.iter().map(|(_, v)| v.to_owned()).collect(),
                Err(e) => return Err(Error::invalid_param(format!("Invalid path: {e}"))),
            };
        // Routes registered without a trailing empty state key still give ruma all its arguments.
        let expected = T::PATH_BUILDER
            .all_paths()
            .next()
            .map(|p| p.matches('{').count())
            .unwrap_or(0);
        while path_args.len() < expected {
            path_args.push(String::new());
        }
        let client_ip = client_ip(&parts);
        let session = authenticate(&parts, services, T::Authentication::REQUIREMENT)?;
        // Only appservice endpoints read the token here: federation requests carry X-Matrix.
        let token = match T::Authentication::REQUIREMENT {
            AuthRequirement::Appservice | AuthRequirement::AppserviceOptional => {
                access_token(&parts)?
            }
            _ => None,
        };
        let appservice = match T::Authentication::REQUIREMENT {
            AuthRequirement::Appservice | AuthRequirement::AppserviceOptional => {
                let found = token
                    .as_deref()
                    .and_then(|t| services.appservice.by_as_token(t))
                    .cloned();
                if found.is_none() && T::Authentication::REQUIREMENT == AuthRequirement::Appservice
                {
                    return Err(match &token {
                        Some(_) => Error::matrix(
                            crate::error::unknown_token_kind(false),
                            "Not an application service token",
                        ),
                        None => Error::missing_token("Missing application service token"),
                    });
                }
                found
            }
            _ => None,
        };

        let limit = services.config.limits.max_request_size.0 as usize;
        let bytes = read_body(&parts, body, limit).await?;
        let origin = if T::Authentication::REQUIREMENT == AuthRequirement::ServerSignatures {
            let origin = services.federation.authenticate(&parts, &bytes).await?;
            // A peer that talks to us is up: stop waiting to retry it.
            services.sender.peer_is_back(&origin);
            Some(origin)
        } else {
            None
        };
        for path in T::PATH_BUILDER.all_paths() {
            add_query_defaults(&mut parts, path);
        }
        let request = http::Request::from_parts(parts, bytes);
        let body = T::try_from_http_request(request, &path_args).map_err(parse_error)?;
        Ok(Ruma {
            body,
            session,
            client_ip,
            origin,
            appservice,
            // Read for appservice endpoints only, the ones that look at it.
            token_given: token.is_some(),
        })
    }
}

/// Optional query parameters that some of ruma's request types nonetheless require: (path,
/// parameter, the spec's default).
const QUERY_DEFAULTS: &[(&str, &str, &str)] = &[(
    "/_matrix/client/v1/rooms/{room_id}/threads",
    "include",
    "all",
)];

/// Fills in the spec's default for optional query parameters the request left out.
fn add_query_defaults(parts: &mut http::request::Parts, path: &str) {
    for (p, param, default) in QUERY_DEFAULTS {
        if *p != path {
            continue;
        }
        let query = parts.uri.query().unwrap_or_default();
        let present = query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(param));
        if present {
            continue;
        }
        let joined = if query.is_empty() {
            format!("{param}={default}")
        } else {
            format!("{query}&{param}={default}")
        };
        let Ok(pq) = format!("{}?{joined}", parts.uri.path()).parse::<http::uri::PathAndQuery>()
        else {
            continue;
        };
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = Some(pq);
        if let Ok(new) = http::Uri::from_parts(uri) {
            parts.uri = new;
        }
    }
}

/// A ruma response as an axum response.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(res) => res
                .map(|b| axum::body::Body::from(b.freeze()))
                .into_response(),
            Err(e) => Error::internal(format!("response serialisation: {e}")).into_response(),
        }
    }
}
