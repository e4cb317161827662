//! Spaces and room previews: `/hierarchy` (the rooms of a space, page by page) and the room
//! summary (MSC3266) of a room the user may not be in (see `service::spaces`).

use axum::{extract::State, Router};
use ruma::{
    api::client::{room::get_summary, space::get_hierarchy},
    events::room::member::MembershipState,
};

use super::membership::resolve_room_remote;
use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
    service::spaces::{self, Requester},
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(hierarchy).ruma(summary)
}

async fn hierarchy(
    State(services): State<AppState>,
    req: Ruma<get_hierarchy::v1::Request>,
) -> Result<get_hierarchy::v1::Response> {
    let session = req.session()?;
    let b = &req.body;
    let as_usize =
        |v: Option<ruma::UInt>| v.map(|v| usize::try_from(u64::from(v)).unwrap_or(usize::MAX));
    let page = services
        .spaces
        .hierarchy(
            &services,
            session.user,
            &session.user_id,
            &b.room_id,
            b.from.as_deref(),
            as_usize(b.limit),
            as_usize(b.max_depth),
            b.suggested_only,
        )
        .await?;
    let mut response = get_hierarchy::v1::Response::new();
    response.next_batch = page.next_batch;
    // A room another server described in a shape that does not fit is left out.
    response.rooms = page
        .rooms
        .into_iter()
        .filter_map(|r| serde_json::from_value(r).ok())
        .collect();
    Ok(response)
}

async fn summary(
    State(services): State<AppState>,
    req: Ruma<get_summary::v1::Request>,
) -> Result<get_summary::v1::Response> {
    let (room_id, mut via) =
        resolve_room_remote(&services, req.body.room_id_or_alias.as_str()).await?;
    via.extend(req.body.via.iter().cloned());
    let who = match &req.session {
        Some(s) => Requester::User(s.user, &s.user_id),
        None => Requester::Anonymous,
    };
    let summary = spaces::summary_for(&services, who, &room_id, &via).await?;
    let summary = serde_json::from_value(summary.into())
        .map_err(|e| Error::upstream(format!("the room's summary is malformed: {e}")))?;
    let mut response = get_summary::v1::Response::new(summary);
    if let Some(s) = &req.session {
        let membership = match services.rooms.events.room_short(&room_id)? {
            Some(room) => services
                .rooms
                .membership
                .membership(s.user, room)?
                .map(|m| m.membership()),
            None => None,
        };
        response.membership = Some(membership.unwrap_or(MembershipState::Leave));
    }
    Ok(response)
}
