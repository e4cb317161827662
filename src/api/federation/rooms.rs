//! Server-server room endpoints: transactions, joins and leaves as the resident server, and the
//! reads other servers make of our copy of a room's DAG (events, state, auth chains, backfill).
//! A peer reads a room only while one of its users is in it (or the room is world-readable).

use axum::extract::State;
use ruma::{
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
        membership::{
            create_invite, create_join_event, create_knock_event, create_leave_event,
            prepare_join_event, prepare_knock_event, prepare_leave_event,
        },
        query::get_room_information,
        transactions::send_transaction_message,
    },
    events::{room::member::MembershipState, StateEventType},
    CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, ServerName,
};
use serde_json::{json, value::RawValue as RawJsonValue, Value as JsonValue};

use super::super::{ruma::Ruma, AppState};
use crate::{
    error::{incompatible_room_version_kind, Error, Result},
    service::{
        join_rules, receiver,
        replication::{stripped, Refused},
        sender::{MAX_EDUS, MAX_PDUS},
        Services,
    },
    storage::ShortId,
};

fn origin<T>(req: &Ruma<T>) -> Result<&ServerName> {
    req.origin
        .as_deref()
        .ok_or_else(|| Error::unauthorized("Missing X-Matrix origin"))
}

fn raw_event(services: &Services, short: ShortId) -> Result<Box<RawJsonValue>> {
    let json = services
        .rooms
        .events
        .event_json(short)?
        .ok_or_else(|| Error::not_found("Event not found"))?;
    serde_json::value::to_raw_value(&json).map_err(Error::internal)
}

/// Whether a server has a user joined to the room now (it may read the room's DAG).
fn server_in_room(services: &Services, server: &ServerName, room: ShortId) -> Result<bool> {
    Ok(services
        .rooms
        .membership
        .remote_servers(room)?
        .iter()
        .any(|s| s == server))
}

fn world_readable(services: &Services, room: ShortId) -> Result<bool> {
    Ok(services
        .rooms
        .state
        .current_state_pdu(room, &StateEventType::RoomHistoryVisibility, "")?
        .and_then(|p| p.content_field("history_visibility"))
        .and_then(|v| v.as_str().map(str::to_owned))
        .as_deref()
        == Some("world_readable"))
}

/// The room, if `origin` may read it.
fn readable_room(services: &Services, origin: &ServerName, room_id: &RoomId) -> Result<ShortId> {
    let (room, _) = services.rooms.state.known_room(room_id)?;
    if services.replication.denied_by_acl(room, origin)? {
        return Err(Error::forbidden("The room's server ACL denies your server"));
    }
    if server_in_room(services, origin, room)? || world_readable(services, room)? {
        Ok(room)
    } else {
        Err(Error::forbidden("Your server is not in this room"))
    }
}

/// A stored event of `room` by ID.
fn event_in_room(services: &Services, room: ShortId, event_id: &EventId) -> Result<ShortId> {
    let short = services
        .rooms
        .events
        .event_short(event_id)?
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let in_room = match services.rooms.events.event_meta(short)? {
        Some(m) => m.room == room,
        None => services
            .rooms
            .events
            .pdu(short)?
            .and_then(|p| p.room_id)
            .is_some_and(|r| services.rooms.events.room_short(&r).ok().flatten() == Some(room)),
    };
    if !in_room {
        return Err(Error::not_found("Event not found"));
    }
    Ok(short)
}

pub async fn send_transaction(
    State(services): State<AppState>,
    req: Ruma<send_transaction_message::v1::Request>,
) -> Result<send_transaction_message::v1::Response> {
    let origin = origin(&req)?.to_owned();
    let body = &req.body;
    if body.origin != origin {
        return Err(Error::forbidden(
            "The transaction's origin is not the signer",
        ));
    }
    if body.pdus.len() > MAX_PDUS || body.edus.len() > MAX_EDUS {
        return Err(Error::bad_json(format!(
            "A transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
        )));
    }
    let results = receiver::receive_transaction(
        &services,
        &origin,
        body.transaction_id.as_str(),
        &body.pdus,
        &body.edus,
    )
    .await?;
    Ok(send_transaction_message::v1::Response::new(results))
}

/// 400 M_INCOMPATIBLE_ROOM_VERSION unless the asking server supports the room's version.
fn check_version(supported: bool, version: &ruma::RoomVersionId) -> Result<()> {
    if supported {
        return Ok(());
    }
    Err(Error::matrix(
        incompatible_room_version_kind(version.as_str()),
        format!("The room is version {version}, which your server does not support"),
    ))
}

pub async fn make_join(
    State(services): State<AppState>,
    req: Ruma<prepare_join_event::v1::Request>,
) -> Result<prepare_join_event::v1::Response> {
    let origin = origin(&req)?;
    let b = &req.body;
    if b.user_id.server_name() != origin {
        return Err(Error::forbidden("You may only join your own users"));
    }
    let (room, meta) = services.rooms.state.known_room(&b.room_id)?;
    if services.replication.denied_by_acl(room, origin)? {
        return Err(Error::forbidden("The room's server ACL denies your server"));
    }
    // No `ver` at all means the asking server only knows version 1.
    let supported = if b.ver.is_empty() {
        meta.version == ruma::RoomVersionId::V1
    } else {
        b.ver.contains(&meta.version)
    };
    check_version(supported, &meta.version)?;
    let mut content = json!({ "membership": "join" });
    let current = services.rooms.membership.membership_of(&b.user_id, room)?;
    if current != Some(MembershipState::Invite) && current != Some(MembershipState::Join) {
        if let Some(via) = join_rules::restricted_join_authoriser(&services, &b.user_id, room)? {
            content["join_authorised_via_users_server"] = via.as_str().into();
        }
    }
    let (version, template) = services
        .rooms
        .membership_template(room, &b.user_id, content)?;
    let mut resp = prepare_join_event::v1::Response::new(
        serde_json::value::to_raw_value(&template).map_err(Error::internal)?,
    );
    resp.room_version = Some(version);
    Ok(resp)
}

pub async fn send_join(
    State(services): State<AppState>,
    req: Ruma<create_join_event::v2::Request>,
) -> Result<create_join_event::v2::Response> {
    let origin = origin(&req)?.to_owned();
    let b = &req.body;
    let object: CanonicalJsonObject = serde_json::from_str(b.pdu.get())
        .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;
    let (short, stored) = services
        .replication
        .accept_join(&origin, &b.room_id, &b.event_id, object, "join")
        .await?;
    let state = services
        .rooms
        .state
        .state_before(short)?
        .ok_or_else(|| Error::internal("join without state"))?;
    let state_ids = services.rooms.state.state_event_ids(&state)?;
    let chain = services
        .rooms
        .events
        .auth_chain(state_ids.iter().cloned())?;
    let mut room_state = create_join_event::v2::RoomState::new();
    for s in state.values() {
        room_state.state.push(raw_event(&services, *s)?);
    }
    for id in chain {
        if let Some(s) = services.rooms.events.event_short(&id)? {
            room_state.auth_chain.push(raw_event(&services, s)?);
        }
    }
    room_state.event = Some(serde_json::value::to_raw_value(&stored).map_err(Error::internal)?);
    let (room, _) = services.rooms.state.known_room(&b.room_id)?;
    let mut servers: Vec<String> = services
        .rooms
        .membership
        .remote_servers(room)?
        .iter()
        .map(|s| s.to_string())
        .collect();
    servers.push(services.config.server_name.to_string());
    room_state.servers_in_room = Some(servers);
    Ok(create_join_event::v2::Response::new(room_state))
}

pub async fn make_leave(
    State(services): State<AppState>,
    req: Ruma<prepare_leave_event::v1::Request>,
) -> Result<prepare_leave_event::v1::Response> {
    let origin = origin(&req)?;
    let b = &req.body;
    if b.user_id.server_name() != origin {
        return Err(Error::forbidden("You may only make your own users leave"));
    }
    let (room, _) = services.rooms.state.known_room(&b.room_id)?;
    let (version, template) =
        services
            .rooms
            .membership_template(room, &b.user_id, json!({ "membership": "leave" }))?;
    Ok(prepare_leave_event::v1::Response::new(
        Some(version),
        serde_json::value::to_raw_value(&template).map_err(Error::internal)?,
    ))
}

pub async fn send_leave(
    State(services): State<AppState>,
    req: Ruma<create_leave_event::v2::Request>,
) -> Result<create_leave_event::v2::Response> {
    let origin = origin(&req)?.to_owned();
    let b = &req.body;
    let object: CanonicalJsonObject = serde_json::from_str(b.pdu.get())
        .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;
    services
        .replication
        .accept_join(&origin, &b.room_id, &b.event_id, object, "leave")
        .await?;
    Ok(create_leave_event::v2::Response::new())
}

pub async fn make_knock(
    State(services): State<AppState>,
    req: Ruma<prepare_knock_event::v1::Request>,
) -> Result<prepare_knock_event::v1::Response> {
    let origin = origin(&req)?;
    let b = &req.body;
    if b.user_id.server_name() != origin {
        return Err(Error::forbidden("You may only knock for your own users"));
    }
    let (room, meta) = services.rooms.state.known_room(&b.room_id)?;
    if services.replication.denied_by_acl(room, origin)? {
        return Err(Error::forbidden("The room's server ACL denies your server"));
    }
    check_version(b.ver.contains(&meta.version), &meta.version)?;
    let (version, template) =
        services
            .rooms
            .membership_template(room, &b.user_id, json!({ "membership": "knock" }))?;
    Ok(prepare_knock_event::v1::Response::new(
        version,
        serde_json::value::to_raw_value(&template).map_err(Error::internal)?,
    ))
}

pub async fn send_knock(
    State(services): State<AppState>,
    req: Ruma<create_knock_event::v1::Request>,
) -> Result<create_knock_event::v1::Response> {
    let origin = origin(&req)?.to_owned();
    let b = &req.body;
    let object: CanonicalJsonObject = serde_json::from_str(b.pdu.get())
        .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;
    let (_, stored) = services
        .replication
        .accept_join(&origin, &b.room_id, &b.event_id, object, "knock")
        .await?;
    let (room, _) = services.rooms.state.known_room(&b.room_id)?;
    let sender = stored
        .get("sender")
        .and_then(|s| match s {
            ruma::CanonicalJsonValue::String(s) => ruma::UserId::parse(s.as_str()).ok(),
            _ => None,
        })
        .ok_or_else(|| Error::bad_json("knock without sender"))?;
    let state = services
        .replication
        .outsider_state(room, &sender)?
        .into_iter()
        .filter_map(|v| serde_json::value::to_raw_value(&v).ok())
        .map(ruma::api::federation::membership::RawStrippedState::Pdu)
        .collect();
    Ok(create_knock_event::v1::Response::new(state))
}

pub async fn invite(
    State(services): State<AppState>,
    req: Ruma<create_invite::v2::Request>,
) -> Result<create_invite::v2::Response> {
    let origin = origin(&req)?.to_owned();
    let b = &req.body;
    let object: CanonicalJsonObject = serde_json::from_str(b.event.get())
        .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;
    let state: Vec<JsonValue> = b
        .invite_room_state
        .iter()
        .filter_map(|s| {
            #[allow(deprecated)]
            let json = match s {
                ruma::api::federation::membership::RawStrippedState::Stripped(r) => r.json(),
                ruma::api::federation::membership::RawStrippedState::Pdu(p) => &**p,
                _ => return None,
            };
            let v: JsonValue = serde_json::from_str(json.get()).ok()?;
            // Clients get the stripped form, whichever form the server sent.
            stripped(&v)
        })
        .collect();
    let signed = services
        .replication
        .receive_invite(
            &origin,
            &b.room_id,
            &b.event_id,
            &b.room_version,
            object,
            state,
        )
        .await?;
    Ok(create_invite::v2::Response::new(
        serde_json::value::to_raw_value(&signed).map_err(Error::internal)?,
    ))
}

pub async fn event(
    State(services): State<AppState>,
    req: Ruma<get_event::v1::Request>,
) -> Result<get_event::v1::Response> {
    let origin = origin(&req)?;
    let short = services
        .rooms
        .events
        .event_short(&req.body.event_id)?
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let pdu = services
        .rooms
        .events
        .pdu(short)?
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let room_id = pdu
        .room_id
        .clone()
        .ok_or_else(|| Error::not_found("Event not found"))?;
    readable_room(&services, origin, &room_id)?;
    Ok(get_event::v1::Response::new(
        services.config.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        raw_event(&services, short)?,
    ))
}

/// The state at (before) an event and the auth chain of that state.
fn state_and_chain(
    services: &Services,
    room: ShortId,
    event_id: &EventId,
) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>)> {
    let short = event_in_room(services, room, event_id)?;
    let state = services
        .rooms
        .state
        .state_before(short)?
        .ok_or_else(|| Error::not_found("No state known at this event"))?;
    let ids = services.rooms.state.state_event_ids(&state)?;
    let chain: Vec<OwnedEventId> = services
        .rooms
        .events
        .auth_chain(ids.iter().cloned())?
        .into_iter()
        .collect();
    Ok((ids, chain))
}

pub async fn state_ids(
    State(services): State<AppState>,
    req: Ruma<get_room_state_ids::v1::Request>,
) -> Result<get_room_state_ids::v1::Response> {
    let room = readable_room(&services, origin(&req)?, &req.body.room_id)?;
    let (ids, chain) = state_and_chain(&services, room, &req.body.event_id)?;
    Ok(get_room_state_ids::v1::Response::new(chain, ids))
}

pub async fn state(
    State(services): State<AppState>,
    req: Ruma<get_room_state::v1::Request>,
) -> Result<get_room_state::v1::Response> {
    let room = readable_room(&services, origin(&req)?, &req.body.room_id)?;
    let (ids, chain) = state_and_chain(&services, room, &req.body.event_id)?;
    let load = |ids: Vec<OwnedEventId>| -> Result<Vec<Box<RawJsonValue>>> {
        ids.iter()
            .filter_map(|id| services.rooms.events.event_short(id).ok().flatten())
            .map(|s| raw_event(&services, s))
            .collect()
    };
    Ok(get_room_state::v1::Response::new(load(chain)?, load(ids)?))
}

pub async fn event_auth(
    State(services): State<AppState>,
    req: Ruma<get_event_authorization::v1::Request>,
) -> Result<get_event_authorization::v1::Response> {
    let room = readable_room(&services, origin(&req)?, &req.body.room_id)?;
    event_in_room(&services, room, &req.body.event_id)?;
    let chain = services
        .rooms
        .events
        .auth_chain([req.body.event_id.clone()])?;
    let mut out = Vec::with_capacity(chain.len());
    for id in chain {
        if let Some(s) = services.rooms.events.event_short(&id)? {
            out.push(raw_event(&services, s)?);
        }
    }
    Ok(get_event_authorization::v1::Response::new(out))
}

pub async fn backfill(
    State(services): State<AppState>,
    req: Ruma<get_backfill::v1::Request>,
) -> Result<get_backfill::v1::Response> {
    let room = readable_room(&services, origin(&req)?, &req.body.room_id)?;
    let limit = u64::from(req.body.limit).clamp(1, 100) as usize;
    let shorts = services
        .rooms
        .events
        .backfill_from(room, &req.body.v, limit)?;
    let pdus = shorts
        .into_iter()
        .map(|s| raw_event(&services, s))
        .collect::<Result<Vec<_>>>()?;
    Ok(get_backfill::v1::Response::new(
        services.config.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        pdus,
    ))
}

pub async fn missing_events(
    State(services): State<AppState>,
    req: Ruma<get_missing_events::v1::Request>,
) -> Result<get_missing_events::v1::Response> {
    let b = &req.body;
    let room = readable_room(&services, origin(&req)?, &b.room_id)?;
    let limit = u64::from(b.limit).clamp(1, 100) as usize;
    let min_depth = u64::from(b.min_depth);
    // Walk back from latest_events until earliest_events, oldest first in the answer.
    let mut out: Vec<(u64, ShortId)> = Vec::new();
    let mut seen: std::collections::HashSet<OwnedEventId> =
        b.earliest_events.iter().cloned().collect();
    let mut queue: std::collections::VecDeque<OwnedEventId> = b
        .latest_events
        .iter()
        .filter_map(|id| services.rooms.events.pdu_by_id(id).ok().flatten())
        .flat_map(|p| p.prev_events)
        .collect();
    while let Some(id) = queue.pop_front() {
        if out.len() >= limit {
            break;
        }
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(short) = services.rooms.events.event_short(&id)? else {
            continue;
        };
        let Some(meta) = services.rooms.events.event_meta(short)? else {
            continue;
        };
        if meta.room != room || meta.depth < min_depth {
            continue;
        }
        if let Some(p) = services.rooms.events.pdu(short)? {
            queue.extend(p.prev_events);
        }
        out.push((meta.depth, short));
    }
    out.sort_unstable();
    let events = out
        .into_iter()
        .map(|(_, s)| raw_event(&services, s))
        .collect::<Result<Vec<_>>>()?;
    Ok(get_missing_events::v1::Response::new(events))
}

pub async fn directory(
    State(services): State<AppState>,
    req: Ruma<get_room_information::v1::Request>,
) -> Result<get_room_information::v1::Response> {
    let alias = &req.body.room_alias;
    if alias.server_name() != services.config.server_name {
        return Err(Error::not_found("The alias is not on this server"));
    }
    let record = services
        .appservice
        .resolve_alias(alias)
        .await?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    let room_id = record.room_id;
    let mut servers = vec![services.config.server_name.clone()];
    if let Some(room) = services.rooms.events.room_short(&room_id)? {
        servers.extend(services.rooms.membership.remote_servers(room)?);
    }
    Ok(get_room_information::v1::Response::new(room_id, servers))
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Rejected(m) => Error::forbidden(m),
            Refused::Dropped(m) => Error::bad_json(m),
        }
    }
}
