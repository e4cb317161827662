//! Account life cycle across services: creating an account (user, default profile, first device
//! in one atomic write), changing its password, deactivating it.

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::Value as JsonValue;

use super::{ratelimit::Action, sessions::IssuedTokens, users, Services};
use crate::{
    error::{Error, ErrorKind, Result},
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
    Error::matrix(ErrorKind::UserInUse, "User ID already taken")
}

/// Checks a new password against the configured policy.
pub fn check_password_policy(services: &Services, password: &str) -> Result<()> {
    if password.chars().count() < services.config.registration.password_min_length {
        return Err(Error::matrix(
            ErrorKind::WeakPassword,
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
        user_id,
        "displayname",
        &JsonValue::String(displayname),
    )?;
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

/// Changes a user's record under their lock, read there so no concurrent change is overwritten;
/// returns the user's short ID.
async fn update_record(
    services: &Services,
    user_id: &UserId,
    change: impl FnOnce(&mut users::UserRecord),
) -> Result<ShortId> {
    let short = services
        .users
        .short_id(user_id)?
        .ok_or_else(|| Error::not_found("Unknown user"))?;
    let _guard = services.sessions.lock_user(short).await;
    let (_, mut record) = services
        .users
        .get(user_id)?
        .ok_or_else(|| Error::not_found("Unknown user"))?;
    change(&mut record);
    let mut batch = Batch::new();
    services.users.put_in(&mut batch, short, &record);
    services.db.write(batch).await?;
    Ok(short)
}

/// Sets a new password; with `logout_except`, every other device is logged out.
pub async fn set_password(
    services: &Services,
    user_id: &UserId,
    password: String,
    logout_others: Option<Option<&DeviceId>>,
) -> Result<()> {
    let hash = users::hash_password(password).await?;
    // Read under the lock after the slow hash, so no concurrent change is overwritten.
    let short = update_record(services, user_id, |record| {
        record.password_hash = Some(hash)
    })
    .await?;
    if let Some(keep) = logout_others {
        services.sessions.delete_all_devices(short, keep).await?;
    }
    Ok(())
}

/// Deactivates an account: it can no longer log in and all its devices are gone.
pub async fn deactivate(services: &Services, user_id: &UserId, erase: bool) -> Result<()> {
    let short = update_record(services, user_id, |record| record.deactivated = true).await?;
    services.sessions.delete_all_devices(short, None).await?;
    services.profiles.unlist(short).await?;
    if erase {
        services.profiles.erase(short).await?;
    }
    tracing::info!(%user_id, erase, "account deactivated");
    Ok(())
}

/// What an administrator may change on a local account (Synapse's `PUT /_synapse/admin/v2/users`).
pub struct AdminChanges {
    pub password: Option<String>,
    /// With a new password, log out every device (the default).
    pub logout_devices: bool,
    pub displayname: Option<String>,
    pub admin: Option<bool>,
    pub deactivated: Option<bool>,
}

/// Creates the account if it does not exist (true), otherwise applies `changes` to it (false).
pub async fn create_or_modify(
    services: &Services,
    user_id: &UserId,
    changes: AdminChanges,
) -> Result<bool> {
    let Some((short, record)) = services.users.get(user_id)? else {
        services
            .users
            .user_id_for_new_localpart(user_id.localpart())?;
        create(
            services,
            user_id,
            changes.password,
            changes.admin.unwrap_or(false),
            changes.displayname,
            None,
        )
        .await?;
        return Ok(true);
    };
    if let Some(p) = changes.password {
        let logout = changes.logout_devices.then_some(None);
        set_password(services, user_id, p, logout).await?;
    }
    if let Some(name) = changes.displayname {
        services
            .profiles
            .set(short, "displayname", Some(JsonValue::String(name)))
            .await?;
    }
    if changes.deactivated == Some(true) && !record.deactivated {
        deactivate(services, user_id, false).await?;
    }
    if changes.admin.is_some() || changes.deactivated == Some(false) {
        let _guard = services.sessions.lock_user(short).await;
        let (_, mut record) = services
            .users
            .get(user_id)?
            .ok_or_else(|| Error::not_found("Unknown user"))?;
        if let Some(admin) = changes.admin {
            record.admin = admin;
        }
        if changes.deactivated == Some(false) {
            record.deactivated = false;
        }
        let mut batch = Batch::new();
        services.users.put_in(&mut batch, short, &record);
        services.db.write(batch).await?;
    }
    Ok(false)
}

/// A local account as the admin API shows it.
pub struct Summary {
    pub user_id: OwnedUserId,
    pub admin: bool,
    pub deactivated: bool,
    /// Milliseconds since the epoch.
    pub created_ts: u64,
    pub displayname: Option<JsonValue>,
    pub avatar_url: Option<JsonValue>,
    pub devices: usize,
}

pub fn summary(services: &Services, user_id: &UserId) -> Result<Summary> {
    let (short, record) = services
        .users
        .get(user_id)?
        .ok_or_else(|| Error::not_found("User not found"))?;
    let mut profile = services.profiles.all(short)?;
    Ok(Summary {
        user_id: record.user_id,
        admin: record.admin,
        deactivated: record.deactivated,
        created_ts: record.created_ts,
        displayname: profile.remove("displayname"),
        avatar_url: profile.remove("avatar_url"),
        devices: services.sessions.devices(short)?.len(),
    })
}

fn invalid_login() -> Error {
    Error::forbidden("Invalid username or password")
}

/// Logs in with a user name (localpart or user ID) and password, on `device`: a new device, or
/// the named one with fresh tokens. Attempts are rate-limited per client address and per account.
pub async fn login_with_password(
    services: &Services,
    login_name: &str,
    password: String,
    device: FirstDevice,
) -> Result<(OwnedUserId, OwnedDeviceId, IssuedTokens)> {
    let client_ip = device.client_ip.clone().unwrap_or_default();
    services
        .ratelimit
        .take(Action::Login, &client_ip)
        .map_err(Error::limit_exceeded)?;
    let user_id = services
        .users
        .user_id_from_login_name(login_name)
        .ok_or_else(invalid_login)?;
    // Failed attempts per account are limited too, so spreading guesses over addresses fails.
    // Taken before the slow check so parallel guesses cannot all pass; refunded on success.
    services
        .ratelimit
        .take(Action::LoginFailure, user_id.as_str())
        .map_err(Error::limit_exceeded)?;

    let record = services.users.get(&user_id)?;
    let verified = match &record {
        Some((_, r)) => match &r.password_hash {
            Some(hash) => users::verify_password(password, hash.clone()).await,
            None => false,
        },
        None => {
            // Spend the same time on unknown users as on known ones, so timing reveals nothing.
            let _ = users::hash_password(password).await;
            false
        }
    };
    let Some((short, record)) = record.filter(|_| verified) else {
        return Err(invalid_login());
    };
    services
        .ratelimit
        .refund(Action::LoginFailure, user_id.as_str());
    if record.deactivated {
        return Err(Error::matrix(
            ErrorKind::UserDeactivated,
            "This account has been deactivated",
        ));
    }

    new_session(services, user_id, short, device).await
}

/// Logs an appservice in as one of its users (`m.login.application_service`): no password.
pub async fn login_as_appservice(
    services: &Services,
    reg: &hearth_appservice::Registration,
    login_name: &str,
    device: FirstDevice,
) -> Result<(OwnedUserId, OwnedDeviceId, IssuedTokens)> {
    let user_id = services
        .users
        .user_id_from_login_name(login_name)
        .ok_or_else(invalid_login)?;
    if user_id.server_name() != services.users.server_name() || !reg.is_user_ours(&user_id) {
        return Err(Error::matrix(
            ErrorKind::Exclusive,
            "This user is outside the application service's namespace",
        ));
    }
    let Some((short, record)) = services.users.get(&user_id)? else {
        return Err(invalid_login());
    };
    if record.deactivated {
        return Err(Error::matrix(
            ErrorKind::UserDeactivated,
            "This account has been deactivated",
        ));
    }
    new_session(services, user_id, short, device).await
}

/// A new device and tokens for a user whose credentials were checked.
async fn new_session(
    services: &Services,
    user_id: OwnedUserId,
    short: ShortId,
    device: FirstDevice,
) -> Result<(OwnedUserId, OwnedDeviceId, IssuedTokens)> {
    // Under the user's lock, so a concurrent logout/all or deactivation cannot be overtaken.
    let _guard = services.sessions.lock_user(short).await;
    if services
        .users
        .get(&user_id)?
        .is_none_or(|(_, r)| r.deactivated)
    {
        return Err(invalid_login());
    }
    let mut batch = Batch::new();
    let (device_id, tokens) = services.sessions.login_in(
        &mut batch,
        &user_id,
        short,
        device.device_id,
        device.display_name,
        device.want_refresh,
        device.client_ip,
    )?;
    services.db.write(batch).await?;
    tracing::info!(%user_id, %device_id, "logged in");
    Ok((user_id, device_id, tokens))
}
