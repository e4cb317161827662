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
    directory::{PublicRoomsChunk, PublicRoomsChunkInit},
    events::{room::member::MembershipState, StateEventType},
    room::JoinRuleKind,
    UInt,
};

use super::room::joined_room;
use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
    service::Services,
    storage::ShortId,
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
    if !services.rooms.is_local_alias(&b.room_alias) {
        return Err(Error::invalid_param("Aliases must be on this server"));
    }
    joined_room(&services, &session.user_id, &b.room_id)?;
    services
        .rooms
        .create_alias(&b.room_alias, &b.room_id, &session.user_id)
        .await?;
    Ok(create_alias::v3::Response::new())
}

async fn get_alias_route(
    State(services): State<AppState>,
    req: Ruma<get_alias::v3::Request>,
) -> Result<get_alias::v3::Response> {
    let alias = &req.body.room_alias;
    if !services.rooms.is_local_alias(alias) {
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
        .rooms
        .resolve_alias(alias)?
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
    let record = services
        .rooms
        .resolve_alias(alias)?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    // The alias's creator, a server admin, or a room member who may change the canonical alias.
    let allowed = record.creator == session.user_id
        || services
            .users
            .get(&session.user_id)?
            .is_some_and(|(_, r)| r.admin)
        || match services.rooms.room_short(&record.room_id)? {
            Some(room) => {
                services.rooms.is_joined(&session.user_id, room)?
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
    services.rooms.delete_alias(alias).await?;
    Ok(delete_alias::v3::Response::new())
}

async fn list_aliases(
    State(services): State<AppState>,
    req: Ruma<aliases::v3::Request>,
) -> Result<aliases::v3::Response> {
    let session = req.session()?;
    let room = joined_room(&services, &session.user_id, &req.body.room_id)?;
    Ok(aliases::v3::Response::new(
        services.rooms.room_aliases(room)?,
    ))
}

async fn get_visibility(
    State(services): State<AppState>,
    req: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response> {
    let (room, _) = services.rooms.known_room(&req.body.room_id)?;
    let visibility = if services.rooms.is_public(room)? {
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
    services.rooms.set_public(room, public).await?;
    Ok(set_room_visibility::v3::Response::new())
}

fn state_str(
    services: &Services,
    room: ShortId,
    kind: StateEventType,
    field: &str,
) -> Option<String> {
    services
        .rooms
        .current_state_pdu(room, &kind, "")
        .ok()
        .flatten()
        .and_then(|p| p.content_field(field))
        .and_then(|v| v.as_str().map(str::to_owned))
}

fn chunk(services: &Services, room: ShortId) -> Result<PublicRoomsChunk> {
    let room_id = services.rooms.room_id_of(room)?;
    let joined = services
        .rooms
        .members(room)?
        .into_iter()
        .filter(|(_, m)| m.membership() == MembershipState::Join)
        .count();
    let world_readable = state_str(
        services,
        room,
        StateEventType::RoomHistoryVisibility,
        "history_visibility",
    )
    .as_deref()
        == Some("world_readable");
    let guest_can_join = state_str(
        services,
        room,
        StateEventType::RoomGuestAccess,
        "guest_access",
    )
    .as_deref()
        == Some("can_join");
    let mut chunk: PublicRoomsChunk = PublicRoomsChunkInit {
        num_joined_members: UInt::try_from(joined as u64).unwrap_or_default(),
        room_id,
        world_readable,
        guest_can_join,
    }
    .into();
    chunk.name = state_str(services, room, StateEventType::RoomName, "name");
    chunk.topic = state_str(services, room, StateEventType::RoomTopic, "topic");
    chunk.canonical_alias = state_str(services, room, StateEventType::RoomCanonicalAlias, "alias")
        .and_then(|a| a.try_into().ok());
    chunk.avatar_url = state_str(services, room, StateEventType::RoomAvatar, "url").map(Into::into);
    chunk.join_rule =
        match state_str(services, room, StateEventType::RoomJoinRules, "join_rule").as_deref() {
            Some("public") => JoinRuleKind::Public,
            Some("knock") => JoinRuleKind::Knock,
            Some("restricted") => JoinRuleKind::Restricted,
            Some("knock_restricted") => JoinRuleKind::KnockRestricted,
            _ => JoinRuleKind::Invite,
        };
    chunk.room_type = services
        .rooms
        .current_state_pdu(room, &StateEventType::RoomCreate, "")?
        .and_then(|p| p.content_field("type"))
        .and_then(|v| v.as_str().map(Into::into));
    Ok(chunk)
}

/// The directory, largest rooms first, filtered by a search term and room types, paginated by
/// offset tokens (`o<n>`).
pub(crate) fn directory_page(
    services: &Services,
    limit: Option<UInt>,
    since: Option<&str>,
    search: Option<&str>,
    room_types: Option<&[ruma::directory::RoomTypeFilter]>,
) -> Result<get_public_rooms::v3::Response> {
    let offset = match since {
        Some(t) => t
            .strip_prefix('o')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::invalid_param("Invalid directory pagination token"))?,
        None => 0,
    };
    let search = search.map(str::to_lowercase);
    let mut rooms = Vec::new();
    for room in services.rooms.public_rooms()? {
        let c = chunk(services, room)?;
        if let Some(term) = &search {
            let hay = [
                c.name.as_deref(),
                c.topic.as_deref(),
                c.canonical_alias.as_ref().map(|a| a.as_str()),
            ]
            .into_iter()
            .flatten()
            .any(|s| s.to_lowercase().contains(term.as_str()));
            if !hay {
                continue;
            }
        }
        if let Some(types) = room_types.filter(|t| !t.is_empty()) {
            use ruma::directory::RoomTypeFilter;
            let ok = types.iter().any(|t| match t {
                RoomTypeFilter::Default => c.room_type.is_none(),
                other => c.room_type.as_ref().map(|rt| rt.as_str()) == other.as_str(),
            });
            if !ok {
                continue;
            }
        }
        rooms.push(c);
    }
    rooms.sort_by(|a, b| {
        b.num_joined_members
            .cmp(&a.num_joined_members)
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
    let total = rooms.len();
    let limit = limit
        .map(|l| u64::from(l) as usize)
        .unwrap_or(100)
        .clamp(1, 500);
    let page: Vec<_> = rooms.into_iter().skip(offset).take(limit).collect();
    let mut resp = get_public_rooms::v3::Response::new(Vec::new());
    resp.next_batch = (offset + page.len() < total).then(|| format!("o{}", offset + page.len()));
    resp.prev_batch = (offset > 0).then(|| format!("o{}", offset.saturating_sub(limit)));
    resp.total_room_count_estimate = UInt::try_from(total as u64).ok();
    resp.chunk = page;
    Ok(resp)
}

/// The object without its null fields, at any depth.
fn without_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k, without_nulls(v)))
            .collect(),
        other => other,
    }
}

/// Another server's directory, when the client names one: its /publicRooms over federation.
async fn remote_directory(
    services: &Services,
    server: Option<&ruma::ServerName>,
    body: serde_json::Value,
) -> Result<Option<get_public_rooms::v3::Response>> {
    let Some(server) = server.filter(|s| *s != services.config.server_name) else {
        return Ok(None);
    };
    if !services.config.federation.enabled {
        return Err(Error::not_found(
            "Federation is off, so other servers' directories cannot be read",
        ));
    }
    // Absent, not null: Synapse fails with a 500 on `"limit": null`.
    let body = without_nulls(body);
    let answer = services
        .federation
        .request_json(
            server,
            http::Method::POST,
            "/_matrix/federation/v1/publicRooms",
            Some(&body),
        )
        .await?;
    let bad = |e: String| Error::internal(format!("{server}'s directory: {e}"));
    let mut chunk: Vec<ruma::directory::PublicRoomsChunk> =
        serde_json::from_value(answer.get("chunk").cloned().unwrap_or_default())
            .map_err(|e| bad(e.to_string()))?;
    chunk.truncate(500);
    let text = |f: &str| answer.get(f).and_then(|v| v.as_str()).map(str::to_owned);
    let mut resp = get_public_rooms::v3::Response::new(chunk);
    resp.next_batch = text("next_batch");
    resp.prev_batch = text("prev_batch");
    resp.total_room_count_estimate = answer
        .get("total_room_count_estimate")
        .and_then(|v| v.as_u64())
        .and_then(|n| UInt::try_from(n).ok());
    Ok(Some(resp))
}

async fn public_rooms(
    State(services): State<AppState>,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    let remote = remote_directory(
        &services,
        req.body.server.as_deref(),
        serde_json::json!({ "limit": req.body.limit, "since": req.body.since }),
    )
    .await?;
    if let Some(page) = remote {
        return Ok(page);
    }
    directory_page(
        &services,
        req.body.limit,
        req.body.since.as_deref(),
        None,
        None,
    )
}

async fn public_rooms_filtered(
    State(services): State<AppState>,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response> {
    let remote = remote_directory(
        &services,
        req.body.server.as_deref(),
        serde_json::json!({
            "limit": req.body.limit,
            "since": req.body.since,
            "filter": { "generic_search_term": req.body.filter.generic_search_term },
        }),
    )
    .await?;
    let page = match remote {
        Some(p) => p,
        None => directory_page(
            &services,
            req.body.limit,
            req.body.since.as_deref(),
            req.body.filter.generic_search_term.as_deref(),
            Some(&req.body.filter.room_types),
        )?,
    };
    let mut resp = get_public_rooms_filtered::v3::Response::new();
    resp.chunk = page.chunk;
    resp.next_batch = page.next_batch;
    resp.prev_batch = page.prev_batch;
    resp.total_room_count_estimate = page.total_room_count_estimate;
    Ok(resp)
}
