//! `/_synapse/admin/v2/users/{user_id}`: query, create or modify a local account.

use axum::{
    extract::{Path, Request, State},
    http::StatusCode,
    Json,
};
use ruma::UserId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{json_body, Admin};
use crate::{
    api::AppState,
    error::{Error, Result},
    service::accounts,
};

fn local_user_id(services: &AppState, raw: &str) -> Result<ruma::OwnedUserId> {
    let user_id =
        UserId::parse(raw).map_err(|e| Error::invalid_param(format!("Invalid user ID: {e}")))?;
    if !services.users.is_local(&user_id) {
        return Err(Error::invalid_param("Can only manage local users"));
    }
    Ok(user_id)
}

fn describe(services: &AppState, user_id: &UserId) -> Result<Value> {
    let account = accounts::summary(services, user_id)?;
    Ok(json!({
        "name": account.user_id,
        "admin": account.admin,
        "deactivated": account.deactivated,
        "creation_ts": account.created_ts / 1000,
        "displayname": account.displayname,
        "avatar_url": account.avatar_url,
        "devices": account.devices,
    }))
}

pub async fn get_user(
    State(services): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = local_user_id(&services, &user_id)?;
    Ok(Json(describe(&services, &user_id)?))
}

#[derive(Deserialize)]
pub struct PutUser {
    password: Option<String>,
    #[serde(default)]
    logout_devices: Option<bool>,
    displayname: Option<String>,
    admin: Option<bool>,
    deactivated: Option<bool>,
}

pub async fn put_user(
    State(services): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
    req: Request,
) -> Result<(StatusCode, Json<Value>)> {
    let user_id = local_user_id(&services, &user_id)?;
    let body: PutUser = json_body(&services, req).await?;
    let changes = accounts::AdminChanges {
        password: body.password,
        logout_devices: body.logout_devices.unwrap_or(true),
        displayname: body.displayname,
        admin: body.admin,
        deactivated: body.deactivated,
    };
    let status = if accounts::create_or_modify(&services, &user_id, changes).await? {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(describe(&services, &user_id)?)))
}
