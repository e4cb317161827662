//! Room aliases (`/directory/room`), `/rooms/{id}/aliases`, and the public room directory.

use axum::{extract::State, Router};
use ruma::{
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        directory::{
            get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
        },
        room::{aliases, Visibility},
    },
    events::StateEventType,
};

use super::room::joined_room;
use crate::{
    api::{public_rooms_response, ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
    service::directory::{self, PageQuery},
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(put_alias)
        .ruma(get_alias_route)
        .ruma(delete_alias_route)
        .ruma(list_aliases)
        .ruma(get_visibility)
        .ruma(set_visibility)
        .ruma(public_rooms)
        .ruma(public_rooms_filtered)
}

async fn put_alias(
    State(services): State<AppState>,
    req: Ruma<create_alias::v3::Request>,
) -> Result<create_alias::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    if !services.rooms.aliases.is_local_alias(&b.room_alias) {
        return Err(Error::invalid_param("Aliases must be on this server"));
    }
    services
        .appservice
        .check_alias(&b.room_alias, session.appservice.as_deref())?;
    joined_room(&services, &session.user_id, &b.room_id)?;
    services
        .rooms
        .aliases
        .create_alias(&b.room_alias, &b.room_id, &session.user_id)
        .await?;
    Ok(create_alias::v3::Response::new())
}

async fn get_alias_route(
    State(services): State<AppState>,
    req: Ruma<get_alias::v3::Request>,
) -> Result<get_alias::v3::Response> {
    let alias = &req.body.room_alias;
    if !services.rooms.aliases.is_local_alias(alias) {
        if !services.config.federation.enabled {
            return Err(Error::not_found(
                "Aliases of other servers need federation, which is off",
            ));
        }
        let (room_id, mut servers) = services.replication.resolve_remote_alias(alias).await?;
        // The alias's server is put first, and may also be in its own list.
        let mut seen = std::collections::HashSet::new();
        servers.retain(|s| seen.insert(s.clone()));
        return Ok(get_alias::v3::Response::new(room_id, servers));
    }
    let record = services
        .appservice
        .resolve_alias(alias)
        .await?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    Ok(get_alias::v3::Response::new(
        record.room_id,
        vec![services.config.server_name.clone()],
    ))
}

async fn delete_alias_route(
    State(services): State<AppState>,
    req: Ruma<delete_alias::v3::Request>,
) -> Result<delete_alias::v3::Response> {
    let session = req.session()?;
    let alias = &req.body.room_alias;
    services
        .appservice
        .check_alias(alias, session.appservice.as_deref())?;
    let record = services
        .rooms
        .aliases
        .resolve_alias(alias)?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    // The alias's creator, a server admin, or a room member who may change the canonical alias.
    let allowed = record.creator == session.user_id
        || services
            .users
            .get(&session.user_id)?
            .is_some_and(|(_, r)| r.admin)
        || match services.rooms.events.room_short(&record.room_id)? {
            Some(room) => {
                services
                    .rooms
                    .membership
                    .is_joined(&session.user_id, room)?
                    && services.rooms.user_can_send_state(
                        room,
                        &session.user_id,
                        &StateEventType::RoomCanonicalAlias,
                    )?
            }
            None => false,
        };
    if !allowed {
        return Err(Error::forbidden("You may not delete this alias"));
    }
    services.rooms.aliases.delete_alias(alias).await?;
    Ok(delete_alias::v3::Response::new())
}

async fn list_aliases(
    State(services): State<AppState>,
    req: Ruma<aliases::v3::Request>,
) -> Result<aliases::v3::Response> {
    let session = req.session()?;
    let room = joined_room(&services, &session.user_id, &req.body.room_id)?;
    Ok(aliases::v3::Response::new(
        services.rooms.aliases.room_aliases(room)?,
    ))
}

async fn get_visibility(
    State(services): State<AppState>,
    req: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response> {
    let (room, _) = services.rooms.state.known_room(&req.body.room_id)?;
    let visibility = if services.rooms.aliases.is_public(room)? {
        Visibility::Public
    } else {
        Visibility::Private
    };
    Ok(get_room_visibility::v3::Response::new(visibility))
}

async fn set_visibility(
    State(services): State<AppState>,
    req: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response> {
    let session = req.session()?;
    let room = joined_room(&services, &session.user_id, &req.body.room_id)?;
    // Publishing a room is a moderator's decision: the level that changes its canonical alias.
    if !services.rooms.user_can_send_state(
        room,
        &session.user_id,
        &StateEventType::RoomCanonicalAlias,
    )? {
        return Err(Error::forbidden(
            "You may not change this room's visibility",
        ));
    }
    let public = match req.body.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        _ => return Err(Error::invalid_param("Unknown visibility")),
    };
    services.rooms.aliases.set_public(room, public).await?;
    Ok(set_room_visibility::v3::Response::new())
}

async fn public_rooms(
    State(services): State<AppState>,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    let query = PageQuery::unfiltered(req.body.limit, req.body.since.as_deref());
    let page = directory::page(&services, req.body.server.as_deref(), query).await?;
    Ok(public_rooms_response!(
        get_public_rooms::v3::Response::new(Vec::new()),
        page
    ))
}

async fn public_rooms_filtered(
    State(services): State<AppState>,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response> {
    let query = PageQuery::filtered(req.body.limit, req.body.since.as_deref(), &req.body.filter)
        .on(&req.body.room_network);
    let page = directory::page(&services, req.body.server.as_deref(), query).await?;
    Ok(public_rooms_response!(
        get_public_rooms_filtered::v3::Response::new(),
        page
    ))
}
