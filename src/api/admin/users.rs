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
    let (short, record) = services
        .users
        .get(user_id)?
        .ok_or_else(|| Error::not_found("User not found"))?;
    let profile = services.profiles.all(short)?;
    Ok(json!({
        "name": record.user_id,
        "admin": record.admin,
        "deactivated": record.deactivated,
        "creation_ts": record.created_ts / 1000,
        "displayname": profile.get("displayname"),
        "avatar_url": profile.get("avatar_url"),
        "devices": services.sessions.devices(short)?.len(),
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
    let status = match services.users.get(&user_id)? {
        None => {
            services
                .users
                .user_id_for_new_localpart(user_id.localpart())?;
            accounts::create(
                &services,
                &user_id,
                body.password.clone(),
                body.admin.unwrap_or(false),
                body.displayname.clone(),
                None,
            )
            .await?;
            StatusCode::CREATED
        }
        Some((short, mut record)) => {
            if let Some(p) = body.password {
                let logout = body.logout_devices.unwrap_or(true).then_some(None);
                accounts::set_password(&services, &user_id, p, logout).await?;
                record = services
                    .users
                    .get(&user_id)?
                    .map(|(_, r)| r)
                    .unwrap_or(record);
            }
            if let Some(name) = body.displayname {
                services
                    .profiles
                    .set(short, "displayname", Some(Value::String(name)))
                    .await?;
            }
            if body.deactivated == Some(true) && !record.deactivated {
                accounts::deactivate(&services, &user_id, false).await?;
                record = services
                    .users
                    .get(&user_id)?
                    .map(|(_, r)| r)
                    .unwrap_or(record);
            }
            if let Some(admin) = body.admin {
                record.admin = admin;
            }
            if body.deactivated == Some(false) {
                record.deactivated = false;
            }
            let mut batch = crate::storage::Batch::new();
            services.users.put_in(&mut batch, short, &record);
            services.db.write(batch).await?;
            StatusCode::OK
        }
    };
    Ok((status, Json(describe(&services, &user_id)?)))
}
