//! Account endpoints: registration (UIAA with registration tokens or m.login.dummy), name
//! availability, whoami, password change and deactivation.

use axum::{extract::State, Router};
use ruma::api::client::{
    account::{
        change_password, check_registration_token_validity, deactivate, get_username_availability,
        register, whoami, ThirdPartyIdRemovalStatus,
    },
    uiaa::{AuthFlow, AuthType},
};

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    config::RegistrationMode,
    error::{Error, ErrorKind, Result},
    service::{accounts, ratelimit::Action, uiaa},
    util::random_string,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(register)
        .ruma(available)
        .ruma(token_validity)
        .ruma(whoami)
        .ruma(change_password)
        .ruma(deactivate)
}

fn registration_flows(mode: RegistrationMode) -> Vec<AuthFlow> {
    let token = AuthFlow::new(vec![AuthType::RegistrationToken]);
    match mode {
        RegistrationMode::Open => vec![AuthFlow::new(vec![AuthType::Dummy]), token],
        RegistrationMode::Token => vec![token],
        RegistrationMode::Disabled => Vec::new(),
    }
}

async fn register(
    State(services): State<AppState>,
    req: Ruma<register::v3::Request>,
) -> Result<register::v3::Response> {
    let body = &req.body;
    if body.login_type.is_some() {
        return register_appservice_user(&services, &req).await;
    }
    let mode = services.config.registration.mode;
    if mode == RegistrationMode::Disabled {
        return Err(Error::forbidden("Registration is disabled"));
    }
    if body.kind == register::RegistrationKind::Guest {
        return Err(Error::forbidden("Guest access is disabled"));
    }
    services
        .ratelimit
        .take(Action::Registration, &req.client_ip.to_string())
        .map_err(Error::limit_exceeded)?;

    // Refuse a bad or taken name before any stage is spent on it.
    let requested = match &body.username {
        Some(name) => {
            let user_id = services.users.user_id_for_new_localpart(name)?;
            services.appservice.check_user_free(&user_id, None)?;
            if services.users.exists(&user_id)? {
                return Err(accounts::user_in_use());
            }
            Some(user_id)
        }
        None => None,
    };
    if let Some(p) = &body.password {
        accounts::check_password_policy(&services, p)?;
    }

    let completed = services
        .uiaa
        .authenticate(
            uiaa::Purpose::Register,
            registration_flows(mode),
            body.auth.as_ref(),
            None,
        )
        .await?;

    let result = async {
        let password = body
            .password
            .clone()
            .ok_or_else(|| Error::missing_param("A password is required"))?;
        let user_id = match requested {
            Some(id) => id,
            None => services
                .users
                .user_id_for_new_localpart(&random_string(12).to_lowercase())?,
        };
        let device = first_device(&req);
        let account =
            accounts::create(&services, &user_id, Some(password), false, None, device).await?;
        Ok((user_id, account))
    }
    .await;

    let (user_id, account) = match result {
        Ok(ok) => ok,
        Err(e) => {
            services.uiaa.abandon(completed);
            return Err(e);
        }
    };
    if let Some(token) = &completed.registration_token {
        services.registration_tokens.complete(token).await?;
    }

    Ok(registered(user_id, account))
}

/// `type: m.login.application_service`: an appservice creates a user of its namespace, with no
/// password and no interactive authentication, whatever the registration mode.
async fn register_appservice_user(
    services: &AppState,
    req: &Ruma<register::v3::Request>,
) -> Result<register::v3::Response> {
    let body = &req.body;
    if body.login_type != Some(register::LoginType::ApplicationService) {
        return Err(Error::bad_json("Unknown registration type"));
    }
    let reg = req.appservice()?;
    let name = body
        .username
        .as_deref()
        .ok_or_else(|| Error::missing_param("username is required"))?;
    let user_id = services.users.user_id_for_new_localpart(name)?;
    if !reg.is_user_ours(&user_id) {
        return Err(Error::matrix(
            ErrorKind::Exclusive,
            "This user ID is outside the application service's namespace",
        ));
    }
    // Another appservice may hold it exclusively under a namespace this one shares.
    services.appservice.check_user_free(&user_id, Some(reg))?;
    let account =
        accounts::create(services, &user_id, None, false, None, first_device(req)).await?;
    Ok(registered(user_id, account))
}

/// The device a registration asks for, unless it inhibits login.
fn first_device(req: &Ruma<register::v3::Request>) -> Option<accounts::FirstDevice> {
    let body = &req.body;
    (!body.inhibit_login).then(|| accounts::FirstDevice {
        device_id: body.device_id.clone(),
        display_name: body.initial_device_display_name.clone(),
        want_refresh: body.refresh_token,
        client_ip: Some(req.client_ip.to_string()),
    })
}

/// The answer to a registration: the user, and its tokens when it was logged in.
fn registered(user_id: ruma::OwnedUserId, account: accounts::NewAccount) -> register::v3::Response {
    let mut resp = register::v3::Response::new(user_id);
    if let Some((device_id, tokens)) = account.login {
        resp.device_id = Some(device_id);
        resp.access_token = Some(tokens.access_token);
        resp.refresh_token = tokens.refresh_token;
        resp.expires_in = tokens.expires_in;
    }
    resp
}

async fn available(
    State(services): State<AppState>,
    req: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response> {
    services
        .ratelimit
        .take(Action::Registration, &req.client_ip.to_string())
        .map_err(Error::limit_exceeded)?;
    let user_id = services
        .users
        .user_id_for_new_localpart(&req.body.username)?;
    services.appservice.check_user_free(&user_id, None)?;
    if services.users.exists(&user_id)? {
        return Err(accounts::user_in_use());
    }
    Ok(get_username_availability::v3::Response::new(true))
}

async fn token_validity(
    State(services): State<AppState>,
    req: Ruma<check_registration_token_validity::v1::Request>,
) -> Result<check_registration_token_validity::v1::Response> {
    if services.config.registration.mode == RegistrationMode::Disabled {
        return Err(Error::forbidden("Registration is disabled"));
    }
    services
        .ratelimit
        .take(Action::Registration, &req.client_ip.to_string())
        .map_err(Error::limit_exceeded)?;
    Ok(check_registration_token_validity::v1::Response::new(
        services.registration_tokens.is_valid(&req.body.token)?,
    ))
}

async fn whoami(
    State(_services): State<AppState>,
    req: Ruma<whoami::v3::Request>,
) -> Result<whoami::v3::Response> {
    let session = req.session()?;
    let mut resp = whoami::v3::Response::new(session.user_id.clone(), false);
    resp.device_id = Some(session.device_id.clone());
    Ok(resp)
}

async fn change_password(
    State(services): State<AppState>,
    req: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response> {
    let session = req.session()?;
    accounts::check_password_policy(&services, &req.body.new_password)?;
    services
        .uiaa
        .authenticate(
            uiaa::Purpose::ChangePassword,
            uiaa::Service::password_flows(),
            req.body.auth.as_ref(),
            Some(&session.user_id),
        )
        .await?;
    let logout = req
        .body
        .logout_devices
        .then_some(Some(session.device_id.as_ref()));
    accounts::set_password(
        &services,
        &session.user_id,
        req.body.new_password.clone(),
        logout,
    )
    .await?;
    Ok(change_password::v3::Response::new())
}

async fn deactivate(
    State(services): State<AppState>,
    req: Ruma<deactivate::v3::Request>,
) -> Result<deactivate::v3::Response> {
    let session = req.session()?;
    services
        .uiaa
        .authenticate(
            uiaa::Purpose::Deactivate,
            uiaa::Service::password_flows(),
            req.body.auth.as_ref(),
            Some(&session.user_id),
        )
        .await?;
    accounts::deactivate(&services, &session.user_id, req.body.erase).await?;
    Ok(deactivate::v3::Response::new(
        ThirdPartyIdRemovalStatus::NoSupport,
    ))
}
