//! VoIP: `GET /_matrix/client/{r0,v3}/voip/turnServer`, the TURN server credentials clients use
//! for calls (see `service::voip`).

use axum::{extract::State, Router};
use ruma::api::client::voip::get_turn_server_info;
use serde::Serialize;

use crate::{
    api::{
        endpoint::{JsonResponse, Reanswered},
        ruma::Ruma,
        AppState, RouterExt,
    },
    error::Result,
    service::voip,
    util::now_ms,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(turn_server)
}

/// The spec's answer, or `{}` without a TURN server (see [`turn_server`]); ruma's response type
/// has every field required.
#[derive(Default, Serialize)]
struct TurnServer {
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uris: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u64>,
}

/// Without a TURN server this answers 200 `{}`, as Synapse does: clients (Element, matrix-js-sdk)
/// read that as "no TURN server" and call with direct and STUN candidates, while an error would be
/// retried and logged as a failure on every call.
async fn turn_server(
    State(services): State<AppState>,
    req: Ruma<Reanswered<get_turn_server_info::v3::Request, JsonResponse<TurnServer>>>,
) -> Result<JsonResponse<TurnServer>> {
    let session = req.session()?;
    let answer = match voip::credentials(&services.config.turn, &session.user_id, now_ms()) {
        Some(c) => TurnServer {
            username: Some(c.username),
            password: Some(c.password),
            uris: Some(c.uris),
            ttl: Some(c.ttl),
        },
        None => TurnServer::default(),
    };
    Ok(JsonResponse(answer))
}
