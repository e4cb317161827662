//! OpenID userinfo: who an OpenID token our server issued belongs to.

use axum::extract::State;
use ruma::api::federation::openid::get_openid_userinfo;

use super::super::{ruma::Ruma, AppState};
use crate::error::{unknown_token_kind, Error, Result};

pub async fn userinfo(
    State(services): State<AppState>,
    req: Ruma<get_openid_userinfo::v1::Request>,
) -> Result<get_openid_userinfo::v1::Response> {
    let user = services
        .openid
        .check(&req.body.access_token)
        .ok_or_else(|| {
            Error::matrix(unknown_token_kind(false), "Unknown or expired OpenID token")
        })?;
    Ok(get_openid_userinfo::v1::Response::new(user))
}
