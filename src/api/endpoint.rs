//! Endpoints ruma 0.16 has no type for, or answers otherwise than Hearth must, declared so that
//! they still go through the `Ruma` extractor (authentication, body limit, errcodes) and
//! `RouterExt::ruma`. ruma's own `#[request]`/`#[response]` macros cannot be used here: they read
//! the crate's Cargo.toml, which uses workspace inheritance they do not parse.
//!
//! - [`JsonEndpoint`]: method, path, authentication and a serde body; requests arrive as
//!   [`JsonRequest`].
//! - [`Reanswered`]: a ruma request, parsed as ruma parses it, with another answer.
//! - [`JsonResponse`]: any serialisable value, answered as JSON with 200.

use std::marker::PhantomData;

use bytes::BufMut;
use http::Method;
use ruma::api::{
    auth_scheme::AuthScheme,
    error::{DeserializationError, FromHttpRequestError, IntoHttpError},
    path_builder::SinglePath,
    IncomingRequest, Metadata, OutgoingResponse,
};
use serde::{de::DeserializeOwned, Serialize};

/// An endpoint declared by hand.
pub trait JsonEndpoint: 'static {
    const METHOD: Method;
    /// With `{name}` path variables.
    const PATH: &'static str;
    type Authentication: AuthScheme;
    /// The JSON body (an empty struct for none; read as `{}` when the request has none).
    type Body: DeserializeOwned;
    /// The JSON answer.
    type Response: Serialize;
}

/// A request to a [`JsonEndpoint`]: its path variables in order, and its body.
pub struct JsonRequest<E: JsonEndpoint> {
    pub path: Vec<String>,
    pub body: E::Body,
}

impl<E: JsonEndpoint> Metadata for JsonRequest<E> {
    const METHOD: Method = E::METHOD;
    const RATE_LIMITED: bool = false;
    type Authentication = E::Authentication;
    type PathBuilder = SinglePath;
    const PATH_BUILDER: SinglePath = SinglePath::new(E::PATH);
}

impl<E: JsonEndpoint> IncomingRequest for JsonRequest<E> {
    type EndpointError = ruma::api::error::Error;
    type OutgoingResponse = JsonResponse<E::Response>;

    fn try_from_http_request<B, S>(
        req: http::Request<B>,
        path_args: &[S],
    ) -> Result<Self, FromHttpRequestError>
    where
        B: AsRef<[u8]>,
        S: AsRef<str>,
    {
        Self::check_request_method(req.method())?;
        let raw = req.body().as_ref();
        let raw = if raw.is_empty() { b"{}" } else { raw };
        let body = serde_json::from_slice(raw).map_err(DeserializationError::Json)?;
        Ok(Self {
            path: path_args.iter().map(|a| a.as_ref().to_owned()).collect(),
            body,
        })
    }
}

/// A ruma request `R` answered with `T` instead of `R`'s response.
pub struct Reanswered<R, T> {
    pub request: R,
    answer: PhantomData<fn() -> T>,
}

impl<R: Metadata, T> Metadata for Reanswered<R, T> {
    const METHOD: Method = R::METHOD;
    const RATE_LIMITED: bool = R::RATE_LIMITED;
    type Authentication = R::Authentication;
    type PathBuilder = R::PathBuilder;
    const PATH_BUILDER: R::PathBuilder = R::PATH_BUILDER;
}

impl<R: IncomingRequest, T: OutgoingResponse> IncomingRequest for Reanswered<R, T> {
    type EndpointError = R::EndpointError;
    type OutgoingResponse = T;

    fn try_from_http_request<B, S>(
        req: http::Request<B>,
        path_args: &[S],
    ) -> Result<Self, FromHttpRequestError>
    where
        B: AsRef<[u8]>,
        S: AsRef<str>,
    {
        Ok(Self {
            request: R::try_from_http_request(req, path_args)?,
            answer: PhantomData,
        })
    }
}

/// The body of a request that has none: `{}` (or nothing) and any fields are accepted.
#[derive(serde::Deserialize)]
pub struct NoBody {}

/// An empty JSON object, as answer.
#[derive(Serialize)]
pub struct Empty {}

/// A 200 answer with `T` as its JSON body.
pub struct JsonResponse<T>(pub T);

impl<T: Serialize> OutgoingResponse for JsonResponse<T> {
    fn try_into_http_response<B: Default + BufMut>(
        self,
    ) -> Result<http::Response<B>, IntoHttpError> {
        let mut body = B::default();
        body.put_slice(&serde_json::to_vec(&self.0)?);
        Ok(http::Response::builder()
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)?)
    }
}
