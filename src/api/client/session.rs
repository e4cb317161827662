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
    error::{Error, Result},
    service::{accounts, devices},
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
        LoginType::ApplicationService(get_login_types::v3::ApplicationServiceLoginType::new()),
    ]))
}

async fn login(
    State(services): State<AppState>,
    req: Ruma<login::v3::Request>,
) -> Result<login::v3::Response> {
    let device = accounts::FirstDevice {
        device_id: req.body.device_id.clone(),
        display_name: req.body.initial_device_display_name.clone(),
        want_refresh: req.body.refresh_token,
        client_ip: Some(req.client_ip.to_string()),
    };
    let unknown_identifier =
        || Error::unknown("Unknown login identifier type; only m.id.user is supported");
    let (user_id, device_id, tokens) = match &req.body.login_info {
        LoginInfo::Password(info) => {
            let Some(UserIdentifier::Matrix(identifier)) = &info.identifier else {
                return Err(unknown_identifier());
            };
            accounts::login_with_password(
                &services,
                &identifier.user,
                info.password.clone(),
                device,
            )
            .await?
        }
        LoginInfo::ApplicationService(info) => {
            let reg = req.appservice()?;
            let Some(UserIdentifier::Matrix(identifier)) = &info.identifier else {
                return Err(unknown_identifier());
            };
            accounts::login_as_appservice(&services, reg, &identifier.user, device).await?
        }
        _ => {
            return Err(Error::unknown(
                "Unsupported login type; see GET /login for the supported ones",
            ))
        }
    };
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
    devices::logout(&services, req.session()?).await?;
    Ok(logout::v3::Response::new())
}

async fn logout_all(
    State(services): State<AppState>,
    req: Ruma<logout_all::v3::Request>,
) -> Result<logout_all::v3::Response> {
    let session = req.session()?;
    devices::logout_all(&services, session.user, &session.user_id).await?;
    Ok(logout_all::v3::Response::new())
}
