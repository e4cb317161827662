//! Account life cycle across services: creating an account (user, default profile, first device
//! in one atomic write), changing its password, deactivating it.

use ruma::{DeviceId, OwnedDeviceId, UserId};
use serde_json::Value as JsonValue;

use super::{sessions::IssuedTokens, users, Services};
use crate::{
    error::{Error, ErrorCode, Result},
    storage::{Batch, ShortId},
};

/// The first device of a new account, when the caller wants it logged in.
pub struct FirstDevice {
    pub device_id: Option<OwnedDeviceId>,
    pub display_name: Option<String>,
    pub want_refresh: bool,
    pub client_ip: Option<String>,
}

pub struct NewAccount {
    pub user: ShortId,
    pub login: Option<(OwnedDeviceId, IssuedTokens)>,
}

pub fn user_in_use() -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        ErrorCode::UserInUse,
        "User ID already taken",
    )
}

/// Checks a new password against the configured policy.
pub fn check_password_policy(services: &Services, password: &str) -> Result<()> {
    if password.chars().count() < services.config.registration.password_min_length {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            ErrorCode::WeakPassword,
            format!(
                "Password must be at least {} characters long",
                services.config.registration.password_min_length
            ),
        ));
    }
    Ok(())
}

/// Creates a local account. Fails with M_USER_IN_USE if the ID is taken.
pub async fn create(
    services: &Services,
    user_id: &UserId,
    password: Option<String>,
    admin: bool,
    displayname: Option<String>,
    device: Option<FirstDevice>,
) -> Result<NewAccount> {
    let password_hash = match password {
        Some(p) => Some(users::hash_password(p).await?),
        None => None,
    };
    let _guard = services.users.creation.lock().await;
    if services.users.exists(user_id)? {
        return Err(user_in_use());
    }
    let mut batch = Batch::new();
    let user = services
        .users
        .create_in(&mut batch, user_id, password_hash, admin)?;
    let displayname = displayname.unwrap_or_else(|| user_id.localpart().to_owned());
    services.profiles.set_in(
        &mut batch,
        user,
        "displayname",
        &JsonValue::String(displayname),
    );
    let login = match device {
        Some(d) => Some(services.sessions.login_in(
            &mut batch,
            user_id,
            user,
            d.device_id,
            d.display_name,
            d.want_refresh,
            d.client_ip,
        )?),
        None => None,
    };
    services.db.write(batch).await?;
    tracing::info!(%user_id, admin, "account created");
    Ok(NewAccount { user, login })
}

/// Sets a new password; with `logout_except`, every other device is logged out.
pub async fn set_password(
    services: &Services,
    user_id: &UserId,
    password: String,
    logout_others: Option<Option<&DeviceId>>,
) -> Result<()> {
    let hash = users::hash_password(password).await?;
    let short = services
        .users
        .short_id(user_id)?
        .ok_or_else(|| Error::not_found("Unknown user"))?;
    {
        // Re-read under the lock after the slow hash, so no concurrent change is overwritten.
        let _guard = services.sessions.lock_user(short).await;
        let (_, mut record) = services
            .users
            .get(user_id)?
            .ok_or_else(|| Error::not_found("Unknown user"))?;
        record.password_hash = Some(hash);
        let mut batch = Batch::new();
        services.users.put_in(&mut batch, short, &record);
        services.db.write(batch).await?;
    }
    if let Some(keep) = logout_others {
        services.sessions.delete_all_devices(short, keep).await?;
    }
    Ok(())
}

/// Deactivates an account: it can no longer log in and all its devices are gone.
pub async fn deactivate(services: &Services, user_id: &UserId, erase: bool) -> Result<()> {
    let short = services
        .users
        .short_id(user_id)?
        .ok_or_else(|| Error::not_found("Unknown user"))?;
    {
        let _guard = services.sessions.lock_user(short).await;
        let (_, mut record) = services
            .users
            .get(user_id)?
            .ok_or_else(|| Error::not_found("Unknown user"))?;
        record.deactivated = true;
        let mut batch = Batch::new();
        services.users.put_in(&mut batch, short, &record);
        services.db.write(batch).await?;
    }
    services.sessions.delete_all_devices(short, None).await?;
    if erase {
        services.profiles.erase(short).await?;
    }
    tracing::info!(%user_id, erase, "account deactivated");
    Ok(())
}
