//! Logging in and out: login flows, password login, refresh tokens, logout and logout/all.

use axum::{extract::State, Router};
use ruma::api::client::{
    session::{
        get_login_types::{
            self,
            v3::{LoginType, PasswordLoginType},
        },
        login::{
            self,
            v3::{DiscoveryInfo, HomeserverInfo, LoginInfo},
        },
        logout, logout_all, refresh_token,
    },
    uiaa::UserIdentifier,
};

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, ErrorCode, Result},
    service::{ratelimit::Action, users},
    storage::Batch,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(login_types)
        .ruma(login)
        .ruma(refresh)
        .ruma(logout)
        .ruma(logout_all)
}

async fn login_types(
    _: State<AppState>,
    _: Ruma<get_login_types::v3::Request>,
) -> Result<get_login_types::v3::Response> {
    Ok(get_login_types::v3::Response::new(vec![
        LoginType::Password(PasswordLoginType::new()),
    ]))
}

fn invalid_login() -> Error {
    Error::forbidden("Invalid username or password")
}

async fn login(
    State(services): State<AppState>,
    req: Ruma<login::v3::Request>,
) -> Result<login::v3::Response> {
    services
        .ratelimit
        .take(Action::Login, &req.client_ip.to_string())
        .map_err(Error::limit_exceeded)?;
    let LoginInfo::Password(info) = &req.body.login_info else {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            ErrorCode::Unknown,
            "Unsupported login type; see GET /login for the supported ones",
        ));
    };
    let Some(UserIdentifier::Matrix(identifier)) = &info.identifier else {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            ErrorCode::Unknown,
            "Unknown login identifier type; only m.id.user is supported",
        ));
    };
    let user_id = services
        .users
        .user_id_from_login_name(&identifier.user)
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
            Some(hash) => users::verify_password(info.password.clone(), hash.clone()).await,
            None => false,
        },
        None => {
            // Spend the same time on unknown users as on known ones, so timing reveals nothing.
            let _ = users::hash_password(info.password.clone()).await;
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
        return Err(Error::new(
            http::StatusCode::FORBIDDEN,
            ErrorCode::UserDeactivated,
            "This account has been deactivated",
        ));
    }

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
        req.body.device_id.clone(),
        req.body.initial_device_display_name.clone(),
        req.body.refresh_token,
        Some(req.client_ip.to_string()),
    )?;
    services.db.write(batch).await?;
    tracing::info!(%user_id, %device_id, "logged in");

    let mut resp = login::v3::Response::new(user_id, tokens.access_token, device_id);
    resp.refresh_token = tokens.refresh_token;
    resp.expires_in = tokens.expires_in;
    resp.well_known = services
        .config
        .client_base_url()
        .map(|url| DiscoveryInfo::new(HomeserverInfo::new(url)));
    Ok(resp)
}

async fn refresh(
    State(services): State<AppState>,
    req: Ruma<refresh_token::v3::Request>,
) -> Result<refresh_token::v3::Response> {
    let tokens = services.sessions.refresh(&req.body.refresh_token).await?;
    let mut resp = refresh_token::v3::Response::new(tokens.access_token);
    resp.refresh_token = tokens.refresh_token;
    resp.expires_in_ms = tokens.expires_in;
    Ok(resp)
}

async fn logout(
    State(services): State<AppState>,
    req: Ruma<logout::v3::Request>,
) -> Result<logout::v3::Response> {
    let session = req.session()?;
    services.sessions.logout(session).await?;
    // The device goes with the session: its keys too, and peers stop encrypting for it.
    super::keys::forget_devices(
        &services,
        session.user,
        &session.user_id,
        std::slice::from_ref(&session.device_id),
    )
    .await?;
    Ok(logout::v3::Response::new())
}

async fn logout_all(
    State(services): State<AppState>,
    req: Ruma<logout_all::v3::Request>,
) -> Result<logout_all::v3::Response> {
    let session = req.session()?;
    let devices: Vec<_> = services
        .sessions
        .devices(session.user)?
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    services
        .sessions
        .delete_all_devices(session.user, None)
        .await?;
    super::keys::forget_devices(&services, session.user, &session.user_id, &devices).await?;
    Ok(logout_all::v3::Response::new())
}
