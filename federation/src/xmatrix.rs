//! X-Matrix request authentication: signing outgoing requests and verifying incoming ones, over
//! ruma's header type (which parses the header's quoting rules exactly).

use ruma::{
    api::federation::authentication::{ServerSignaturesInput, XMatrix},
    signatures::PublicKeyMap,
    ServerName,
};

use crate::ServerSigningKey;

#[derive(Debug, thiserror::Error)]
pub enum XMatrixError {
    #[error("missing X-Matrix authorization")]
    Missing,
    #[error("malformed X-Matrix authorization: {0}")]
    Malformed(String),
    #[error("the request was meant for another server")]
    WrongDestination,
    #[error("invalid signature: {0}")]
    BadSignature(String),
    #[error("cannot sign the request: {0}")]
    Signing(String),
}

/// The `Authorization` header value for a request from `origin` to `destination`.
pub fn sign_request<T: AsRef<[u8]>>(
    key: &ServerSigningKey,
    origin: &ServerName,
    destination: &ServerName,
    request: &http::Request<T>,
) -> Result<http::HeaderValue, XMatrixError> {
    let input = ServerSignaturesInput::new(origin.to_owned(), destination.to_owned(), key.pair());
    let header = XMatrix::try_from_http_request(request, input)
        .map_err(|e| XMatrixError::Signing(e.to_string()))?;
    Ok(http::HeaderValue::from(&header))
}

/// The parsed X-Matrix header of a request: who claims to send it, with which key.
pub fn parse<T>(request: &http::Request<T>) -> Result<XMatrix, XMatrixError> {
    let value = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .ok_or(XMatrixError::Missing)?;
    XMatrix::try_from(value).map_err(|e| XMatrixError::Malformed(e.to_string()))
}

/// Verifies a request's X-Matrix signature against its origin's keys.
pub fn verify_request<T: AsRef<[u8]>>(
    header: &XMatrix,
    request: &http::Request<T>,
    destination: &ServerName,
    origin_keys: &PublicKeyMap,
) -> Result<(), XMatrixError> {
    if header
        .destination
        .as_deref()
        .is_some_and(|d| d != destination)
    {
        return Err(XMatrixError::WrongDestination);
    }
    header
        .verify_request(request, destination, origin_keys)
        .map_err(|e| XMatrixError::BadSignature(e.to_string()))
}
