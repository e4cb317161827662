//! Client-server endpoints only application services call.

use std::time::Duration;

use axum::{extract::State, Router};
use ruma::api::client::appservice::request_ping;

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(ping)
}

/// `POST /_matrix/client/v1/appservice/{appserviceId}/ping`: the server pings the appservice
/// and reports how long it took to answer.
async fn ping(
    State(services): State<AppState>,
    req: Ruma<request_ping::v1::Request>,
) -> Result<request_ping::v1::Response> {
    let reg = req.appservice()?;
    if reg.id != req.body.appservice_id {
        return Err(Error::forbidden(
            "The token is not this application service's",
        ));
    }
    let ms = services
        .appservice
        .ping(reg, req.body.transaction_id.as_ref().map(|t| t.as_str()))
        .await?;
    Ok(request_ping::v1::Response::new(Duration::from_millis(ms)))
}
