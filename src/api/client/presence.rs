//! Presence: set your own, read that of users you share a room with.

use axum::{extract::State, Router};
use ruma::{
    api::client::presence::{get_presence, set_presence},
    presence::PresenceState,
};

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(set).ruma(get)
}

/// Longest status message accepted.
const MAX_STATUS: usize = 1024;

async fn set(
    State(services): State<AppState>,
    req: Ruma<set_presence::v3::Request>,
) -> Result<set_presence::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    if b.user_id != session.user_id {
        return Err(Error::forbidden("You can only set your own presence"));
    }
    if !services.presence.enabled() {
        return Err(Error::forbidden("Presence is disabled on this server"));
    }
    if b.status_msg.as_ref().is_some_and(|m| m.len() > MAX_STATUS) {
        return Err(Error::invalid_param("The status message is too long"));
    }
    if !matches!(
        b.presence,
        PresenceState::Online | PresenceState::Unavailable | PresenceState::Offline
    ) {
        return Err(Error::invalid_param("Unknown presence state"));
    }
    let peers = crate::service::presence::room_peers(services.rooms.clone());
    services
        .presence
        .set(
            session.user,
            b.presence.clone(),
            b.status_msg.clone(),
            &peers,
        )
        .await?;
    let mut update = serde_json::json!({
        "user_id": session.user_id,
        "presence": b.presence.as_str(),
        "last_active_ago": 0,
        "currently_active": b.presence == ruma::presence::PresenceState::Online,
    });
    if let Some(msg) = &b.status_msg {
        update["status_msg"] = msg.as_str().into();
    }
    let edu = serde_json::json!({ "edu_type": "m.presence", "content": { "push": [update] } });
    services.sender.edu_to_peers_of(session.user, edu).await?;
    Ok(set_presence::v3::Response::new())
}

async fn get(
    State(services): State<AppState>,
    req: Ruma<get_presence::v3::Request>,
) -> Result<get_presence::v3::Response> {
    let session = req.session()?;
    let user_id = &req.body.user_id;
    let user = services
        .users
        .short_id(user_id)?
        .ok_or_else(|| Error::not_found("Unknown user"))?;
    // Presence is shared with users who share a room, and nobody else.
    if !services.keys.share_a_room(session.user, user)? {
        return Err(Error::forbidden("You do not share a room with this user"));
    }
    let stored = services
        .presence
        .get(user)?
        .ok_or_else(|| Error::not_found("No presence for this user"))?;
    let mut resp = get_presence::v3::Response::new(stored.presence.clone());
    resp.status_msg = stored.status_msg.clone();
    resp.currently_active = Some(stored.presence == PresenceState::Online);
    resp.last_active_ago = Some(std::time::Duration::from_millis(
        services.presence.last_active_ago(user, &stored),
    ));
    Ok(resp)
}
