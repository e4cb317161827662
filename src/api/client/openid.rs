//! OpenID tokens: a client proves its user's identity to a third party (an integration
//! manager, a widget), which checks the token with this server over federation.

use axum::{extract::State, Router};
use ruma::api::client::account::request_openid_token;

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(request_token)
}

async fn request_token(
    State(services): State<AppState>,
    req: Ruma<request_openid_token::v3::Request>,
) -> Result<request_openid_token::v3::Response> {
    let session = req.session()?;
    if req.body.user_id != session.user_id {
        return Err(Error::forbidden("You can only request tokens for yourself"));
    }
    let (token, lifetime) = services.openid.issue(session.user_id.clone());
    Ok(request_openid_token::v3::Response::new(
        token,
        ruma::authentication::TokenType::Bearer,
        services.config.server_name.clone(),
        lifetime,
    ))
}
