//! Client-server endpoints only application services call.

use std::time::Duration;

use axum::{extract::State, Router};
use ruma::api::client::{
    appservice::{request_ping, set_room_visibility},
    room::Visibility,
};

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(ping).ruma(network_visibility)
}

/// `PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}`: an appservice lists
/// a room in (or removes it from) the directory of one of its networks, which clients read with
/// `third_party_instance_id` = `{appserviceId}|{networkId}` (as `/thirdparty/protocols` names
/// the instance).
async fn network_visibility(
    State(services): State<AppState>,
    req: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response> {
    let reg = req.appservice()?;
    let b = &req.body;
    if b.network_id.is_empty() {
        return Err(Error::invalid_param("The network ID is empty"));
    }
    let public = match b.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        _ => return Err(Error::invalid_param("Unknown visibility")),
    };
    let Some(room) = services.rooms.events.room_short(&b.room_id)? else {
        return Err(Error::not_found("Unknown room"));
    };
    if services.rooms.state.meta(room)?.is_none() {
        return Err(Error::not_found("Unknown room"));
    }
    let instance = format!("{}|{}", reg.id, b.network_id);
    services
        .rooms
        .aliases
        .set_network_public(&instance, room, public)
        .await?;
    Ok(set_room_visibility::v3::Response::new())
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
