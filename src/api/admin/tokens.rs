//! `/_synapse/admin/v1/registration_tokens`: list, create, read, update and delete tokens.

use axum::{
    extract::{Path, Query, Request, State},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{json_body, Admin};
use crate::{
    api::AppState,
    error::{Error, Result},
    service::registration_tokens::RegistrationToken,
    util::{now_ms, random_string},
};

fn describe(services: &AppState, t: &RegistrationToken) -> Value {
    json!({
        "token": t.token,
        "uses_allowed": t.uses_allowed,
        "pending": services.registration_tokens.pending(&t.token),
        "completed": t.completed,
        "expiry_time": t.expiry_time,
    })
}

#[derive(Deserialize)]
pub struct ListQuery {
    valid: Option<bool>,
}

pub async fn list(
    State(services): State<AppState>,
    _: Admin,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    let mut tokens = Vec::new();
    for t in services.registration_tokens.list()? {
        if let Some(want) = q.valid {
            if services.registration_tokens.is_valid(&t.token)? != want {
                continue;
            }
        }
        tokens.push(describe(&services, &t));
    }
    Ok(Json(json!({ "registration_tokens": tokens })))
}

#[derive(Deserialize)]
struct NewToken {
    token: Option<String>,
    uses_allowed: Option<u64>,
    expiry_time: Option<u64>,
    length: Option<usize>,
}

fn valid_token_text(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 64
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
}

pub async fn create(
    State(services): State<AppState>,
    _: Admin,
    req: Request,
) -> Result<Json<Value>> {
    let body: NewToken = json_body(&services, req).await?;
    let token = match body.token {
        Some(t) => t,
        None => {
            let len = body.length.unwrap_or(16);
            if !(1..=64).contains(&len) {
                return Err(Error::invalid_param("length must be between 1 and 64"));
            }
            random_string(len)
        }
    };
    if !valid_token_text(&token) {
        return Err(Error::invalid_param(
            "Tokens are 1-64 characters of A-Z, a-z, 0-9, '.', '_', '~' and '-'",
        ));
    }
    if body.expiry_time.is_some_and(|t| t <= now_ms()) {
        return Err(Error::invalid_param("expiry_time is in the past"));
    }
    let _guard = services.registration_tokens.lock().await;
    if services.registration_tokens.get(&token)?.is_some() {
        return Err(Error::invalid_param("Token already exists"));
    }
    let t = RegistrationToken {
        token,
        uses_allowed: body.uses_allowed,
        completed: 0,
        expiry_time: body.expiry_time,
    };
    services.registration_tokens.put(&t).await?;
    Ok(Json(describe(&services, &t)))
}

/// The token named in the path, or not found.
fn existing(services: &AppState, token: &str) -> Result<RegistrationToken> {
    services
        .registration_tokens
        .get(token)?
        .ok_or_else(|| Error::not_found("No such registration token"))
}

pub async fn get_one(
    State(services): State<AppState>,
    _: Admin,
    Path(token): Path<String>,
) -> Result<Json<Value>> {
    let t = existing(&services, &token)?;
    Ok(Json(describe(&services, &t)))
}

#[derive(Deserialize)]
struct UpdateToken {
    #[serde(default, deserialize_with = "present")]
    uses_allowed: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    expiry_time: Option<Option<u64>>,
}

/// Distinguishes a field set to null (Some(None)) from one left out (None).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

pub async fn update(
    State(services): State<AppState>,
    _: Admin,
    Path(token): Path<String>,
    req: Request,
) -> Result<Json<Value>> {
    let body: UpdateToken = json_body(&services, req).await?;
    let _guard = services.registration_tokens.lock().await;
    let mut t = existing(&services, &token)?;
    if let Some(u) = body.uses_allowed {
        t.uses_allowed = u;
    }
    if let Some(e) = body.expiry_time {
        t.expiry_time = e;
    }
    services.registration_tokens.put(&t).await?;
    Ok(Json(describe(&services, &t)))
}

pub async fn delete(
    State(services): State<AppState>,
    _: Admin,
    Path(token): Path<String>,
) -> Result<Json<Value>> {
    if !services.registration_tokens.delete(&token).await? {
        return Err(Error::not_found("No such registration token"));
    }
    Ok(Json(json!({})))
}
