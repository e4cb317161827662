//! Shared-secret registration (`/_synapse/admin/v1/register`), compatible with Synapse's
//! `register_new_matrix_user`: a single-use nonce, then an HMAC-SHA1 over the request.

use std::time::{Duration, Instant};

use axum::{
    extract::{Request, State},
    Json,
};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha1::Sha1;

use super::json_body;
use crate::{
    api::AppState,
    error::{Error, Result},
    service::accounts,
    util::random_string,
};

const NONCE_LIFETIME: Duration = Duration::from_secs(60);
const MAX_NONCES: usize = 10_000;

fn enabled_secret(services: &AppState) -> Result<&str> {
    let secret = services.config.registration.shared_secret.as_str();
    if secret.is_empty() {
        return Err(Error::bad_json("Shared secret registration is not enabled")
            .with_kind(crate::error::ErrorKind::Forbidden));
    }
    Ok(secret)
}

pub async fn nonce(State(services): State<AppState>) -> Result<Json<Value>> {
    enabled_secret(&services)?;
    let nonce = random_string(32);
    let mut map = services.registration_nonces.lock();
    map.retain(|_, t| t.elapsed() < NONCE_LIFETIME);
    if map.len() >= MAX_NONCES {
        return Err(Error::limit_exceeded(NONCE_LIFETIME.as_millis() as u64));
    }
    map.insert(nonce.clone(), Instant::now());
    Ok(Json(json!({ "nonce": nonce })))
}

#[derive(Deserialize)]
struct RegisterBody {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    displayname: Option<String>,
    #[serde(default)]
    user_type: Option<String>,
    mac: String,
}

/// The MAC Synapse's protocol defines: HMAC-SHA1 over NUL-separated fields, hex encoded.
pub fn registration_mac(
    secret: &str,
    nonce: &str,
    username: &str,
    password: &str,
    admin: bool,
    user_type: Option<&str>,
) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(nonce.as_bytes());
    mac.update(b"\x00");
    mac.update(username.as_bytes());
    mac.update(b"\x00");
    mac.update(password.as_bytes());
    mac.update(b"\x00");
    mac.update(if admin { b"admin" } else { b"notadmin" });
    if let Some(t) = user_type {
        mac.update(b"\x00");
        mac.update(t.as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

pub async fn register(State(services): State<AppState>, req: Request) -> Result<Json<Value>> {
    let secret = enabled_secret(&services)?.to_owned();
    let body: RegisterBody = json_body(&services, req).await?;
    let fresh = services
        .registration_nonces
        .lock()
        .remove(&body.nonce)
        .is_some_and(|t| t.elapsed() < NONCE_LIFETIME);
    if !fresh {
        return Err(
            Error::bad_json("Unrecognised nonce").with_kind(crate::error::ErrorKind::Unknown)
        );
    }
    let expected = registration_mac(
        &secret,
        &body.nonce,
        &body.username,
        &body.password,
        body.admin,
        body.user_type.as_deref(),
    );
    if !super::constant_time_eq(expected.as_bytes(), body.mac.to_lowercase().as_bytes()) {
        return Err(Error::forbidden("HMAC incorrect"));
    }
    let user_id = services.users.user_id_for_new_localpart(&body.username)?;
    let account = accounts::create(
        &services,
        &user_id,
        Some(body.password),
        body.admin,
        body.displayname,
        Some(accounts::FirstDevice {
            device_id: None,
            display_name: None,
            want_refresh: false,
            client_ip: None,
        }),
    )
    .await?;
    let (device_id, tokens) = account
        .login
        .ok_or_else(|| Error::internal("account created without a device"))?;
    Ok(Json(json!({
        "user_id": user_id,
        "home_server": services.config.server_name,
        "access_token": tokens.access_token,
        "device_id": device_id,
    })))
}
