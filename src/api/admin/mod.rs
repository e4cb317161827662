//! The Synapse-compatible admin API subset Hearth serves: shared-secret registration, user
//! create/modify/query, registration tokens and media purges. Callers are server admins (by access token) or
//! the local console (by the secret in the data folder, used by `hearth` CLI commands).

mod media;
mod register;
mod tokens;
mod users;

use std::sync::Arc;

use axum::{
    extract::{FromRequestParts, Request},
    routing::get,
    Router,
};
use serde::de::DeserializeOwned;

use super::{
    ruma::{access_token, read_body},
    AppState,
};
use crate::{
    error::{Error, Result},
    service::Services,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/_synapse/admin/v1/server_version", get(server_version))
        .route("/_hearth/admin/v1/appservices", get(appservices))
        .route(
            "/_synapse/admin/v1/register",
            get(register::nonce).post(register::register),
        )
        .route(
            "/_synapse/admin/v2/users/{user_id}",
            get(users::get_user).put(users::put_user),
        )
        .route("/_synapse/admin/v1/registration_tokens", get(tokens::list))
        .route(
            "/_synapse/admin/v1/registration_tokens/new",
            axum::routing::post(tokens::create),
        )
        .route(
            "/_synapse/admin/v1/purge_media_cache",
            axum::routing::post(media::purge_media_cache),
        )
        .route(
            "/_synapse/admin/v1/media/delete",
            axum::routing::post(media::delete_local_media),
        )
        .route(
            "/_synapse/admin/v1/registration_tokens/{token}",
            get(tokens::get_one)
                .put(tokens::update)
                .delete(tokens::delete),
        )
}

async fn server_version() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "server_version": env!("CARGO_PKG_VERSION") }))
}

/// The registered application services and the state of their queues.
async fn appservices(
    axum::extract::State(services): axum::extract::State<AppState>,
    _: Admin,
) -> Result<axum::Json<serde_json::Value>> {
    let states = services.appservice.queue_states()?;
    Ok(axum::Json(serde_json::json!({ "appservices": states })))
}

/// Proof that the caller may use the admin API.
pub struct Admin;

impl FromRequestParts<Arc<Services>> for Admin {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        services: &Arc<Services>,
    ) -> Result<Self> {
        let Some(token) = access_token(parts)? else {
            return Err(Error::missing_token("Missing access token"));
        };
        if constant_time_eq(token.as_bytes(), services.console_secret.as_bytes()) {
            return Ok(Admin);
        }
        let session = services.sessions.authenticate(&token)?;
        match services.users.get(&session.user_id)? {
            Some((_, r)) if r.admin && !r.deactivated => Ok(Admin),
            _ => Err(Error::forbidden("You are not a server admin")),
        }
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a JSON body with the client API's size limit and errcodes.
pub async fn json_body<T: DeserializeOwned>(services: &Services, req: Request) -> Result<T> {
    let (parts, body) = req.into_parts();
    let bytes = read_body(
        &parts,
        body,
        services.config.limits.max_request_size.0 as usize,
    )
    .await?;
    let bytes = if bytes.is_empty() {
        bytes::Bytes::from_static(b"{}")
    } else {
        bytes
    };
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Error::bad_json(e.to_string()),
        _ => Error::not_json(format!("Body is not valid JSON: {e}")),
    })
}
