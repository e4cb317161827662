//! Rooms: createRoom, sending events, state, history (/messages, /event) and redaction.

use axum::{extract::State, Router};
use ruma::{
    api::{
        client::{
            message::{get_message_events, send_message_event},
            redact::redact_event,
            room::{create_room, get_room_event, report_room, upgrade_room},
            state::{get_state_event_for_key, get_state_events, send_state_event},
        },
        Direction,
    },
    events::TimelineEventType,
    serde::Raw,
    RoomId, RoomVersionId, UserId,
};
use serde_json::Value as JsonValue;

use super::delayed_events::{Delayable, DelayableResponse};
use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, ErrorKind, Result},
    service::{
        delayed_events,
        rooms::{create, history::Access, ClientEvent, NewEvent, Txn},
        sync::Since,
        timeline, Services,
    },
    storage::ShortId,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(create_room)
        .ruma(send_message)
        .ruma(send_state)
        .ruma(get_state)
        .ruma(get_state_for_key)
        .ruma(messages)
        .ruma(get_event)
        .ruma(redact)
        .ruma(upgrade)
        .ruma(report_room_handler)
}

/// The room's short ID, requiring the user to be joined. Rooms the user is not in answer 403
/// whether or not they exist, so nothing leaks.
pub fn joined_room(services: &Services, user_id: &UserId, room_id: &RoomId) -> Result<ShortId> {
    let not_in = || Error::forbidden("You are not in this room");
    let room = services
        .rooms
        .events
        .room_short(room_id)?
        .ok_or_else(not_in)?;
    if !services.rooms.membership.is_joined(user_id, room)? {
        return Err(not_in());
    }
    Ok(room)
}

/// The room state a reader sees: the current state for members and world-readable rooms, the
/// state when they left for former members. As (state key, event) pairs.
pub fn visible_state(
    services: &Services,
    user_id: &UserId,
    room_id: &RoomId,
) -> Result<(ShortId, Vec<(ShortId, ShortId)>)> {
    let (room, access) = services.rooms.timeline.room_access(user_id, room_id)?;
    match access {
        Access::Former(membership_event) => {
            let meta = services
                .rooms
                .events
                .event_meta(membership_event)?
                .ok_or_else(|| Error::internal("membership event without metadata"))?;
            let state = services.rooms.state.state_at(meta.state_after)?;
            Ok((room, state.iter().map(|(k, v)| (*k, *v)).collect()))
        }
        Access::Joined | Access::Public => Ok((room, services.rooms.state.current_state(room)?)),
    }
}

/// An event in the client format as `viewer` sees it, with bundled aggregations.
pub fn client_json(
    services: &Services,
    short: ShortId,
    room_id: &RoomId,
    viewer: &UserId,
) -> Result<Option<JsonValue>> {
    services
        .rooms
        .timeline
        .client_event_json(short, room_id, viewer)
}

/// Serialises JSON as a raw event.
pub fn to_raw<T>(json: &JsonValue) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(json).map_err(Error::internal)?,
    ))
}

/// An event in the client format, serialised.
pub fn client_raw<T>(
    services: &Services,
    short: ShortId,
    room_id: &RoomId,
) -> Result<Option<Raw<T>>> {
    services
        .rooms
        .timeline
        .client_event(short, room_id)?
        .map(|json| to_raw(&json))
        .transpose()
}

async fn create_room(
    State(services): State<AppState>,
    req: Ruma<create_room::v3::Request>,
) -> Result<create_room::v3::Response> {
    let session = req.session()?;
    let body = &req.body;
    let version = body.room_version.clone().unwrap_or(RoomVersionId::V12);
    let rules = version.rules().ok_or_else(|| {
        Error::matrix(
            ErrorKind::UnsupportedRoomVersion,
            format!("Room version {version} is not supported"),
        )
    })?;
    let remote_invitees: Vec<_> = body
        .invite
        .iter()
        .filter(|u| !services.users.is_local(u))
        .collect();
    if !remote_invitees.is_empty() && !services.config.federation.enabled {
        return Err(Error::forbidden(
            "Federation is off, so users of other servers cannot be invited",
        ));
    }
    let alias = match &body.room_alias_name {
        Some(name) => {
            let alias = ruma::OwnedRoomAliasId::try_from(format!(
                "#{name}:{}",
                services.config.server_name
            ))
            .map_err(|e| Error::invalid_param(format!("Invalid room_alias_name: {e}")))?;
            services
                .appservice
                .check_alias(&alias, session.appservice.as_deref())?;
            if services.rooms.aliases.resolve_alias(&alias)?.is_some() {
                return Err(Error::matrix(
                    ErrorKind::RoomInUse,
                    "Room alias already taken",
                ));
            }
            Some(alias)
        }
        None => None,
    };
    let profile = services.profiles.all(session.user)?;
    let str_field = |f: &str| {
        profile
            .get(f)
            .and_then(JsonValue::as_str)
            .map(str::to_owned)
    };
    let plan = create::plan(
        body,
        &rules,
        &session.user_id,
        (str_field("displayname"), str_field("avatar_url")),
        alias.as_deref(),
    )?;
    let room_id = services
        .rooms
        .create_room(&version, &session.user_id, plan.create_content, plan.events)
        .await?;
    if let Some(alias) = &alias {
        services
            .rooms
            .aliases
            .create_alias(alias, &room_id, &session.user_id)
            .await?;
    }
    if body.visibility == ruma::api::client::room::Visibility::Public {
        let (room, _) = services.rooms.state.known_room(&room_id)?;
        services.rooms.aliases.set_public(room, true).await?;
    }
    // The plan left these out: each goes through the invitee's server. A refusal fails the
    // request (as in Synapse), though the room stays.
    for invitee in remote_invitees {
        services
            .replication
            .invite_remote(&room_id, &session.user_id, invitee, None, body.is_direct)
            .await?;
    }
    Ok(create_room::v3::Response::new(room_id))
}

async fn send_message(
    State(services): State<AppState>,
    req: Ruma<Delayable<send_message_event::v3::Request>>,
) -> Result<DelayableResponse<send_message_event::v3::Response>> {
    let session = req.session()?;
    let delay = req.body.delay_ms()?;
    let body = &req.body.request;
    let content: JsonValue =
        serde_json::from_str(body.body.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
    let event = ClientEvent {
        kind: body.event_type.to_string(),
        state_key: None,
        content,
    };
    if let Some(delay_ms) = delay {
        let delay_id = services
            .delayed_events
            .schedule(delayed_events::Request {
                user_id: &session.user_id,
                user: session.user,
                device_id: session.device_id.as_str(),
                room_id: &body.room_id,
                event,
                delay_ms,
                txn_id: Some(body.txn_id.as_str()),
            })
            .await?;
        return Ok(DelayableResponse::Delayed(delay_id));
    }
    let sent = services
        .rooms
        .send_as_client(
            &session.user_id,
            &body.room_id,
            event,
            Some(Txn {
                user: session.user,
                device_id: session.device_id.as_str(),
                txn_id: body.txn_id.as_str(),
            }),
        )
        .await?;
    Ok(DelayableResponse::Sent(
        send_message_event::v3::Response::new(sent.event_id),
    ))
}

async fn send_state(
    State(services): State<AppState>,
    req: Ruma<Delayable<send_state_event::v3::Request>>,
) -> Result<DelayableResponse<send_state_event::v3::Response>> {
    let session = req.session()?;
    let delay = req.body.delay_ms()?;
    let body = &req.body.request;
    let content: JsonValue =
        serde_json::from_str(body.body.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
    let event = ClientEvent {
        kind: body.event_type.to_string(),
        state_key: Some(body.state_key.clone()),
        content,
    };
    if let Some(delay_ms) = delay {
        let delay_id = services
            .delayed_events
            .schedule(delayed_events::Request {
                user_id: &session.user_id,
                user: session.user,
                device_id: session.device_id.as_str(),
                room_id: &body.room_id,
                event,
                delay_ms,
                txn_id: None,
            })
            .await?;
        return Ok(DelayableResponse::Delayed(delay_id));
    }
    let sent = services
        .rooms
        .send_as_client(&session.user_id, &body.room_id, event, None)
        .await?;
    Ok(DelayableResponse::Sent(
        send_state_event::v3::Response::new(sent.event_id),
    ))
}

async fn get_state(
    State(services): State<AppState>,
    req: Ruma<get_state_events::v3::Request>,
) -> Result<get_state_events::v3::Response> {
    let session = req.session()?;
    let (_, state) = visible_state(&services, &session.user_id, &req.body.room_id)?;
    let mut events = Vec::new();
    for (_, event) in state {
        if let Some(raw) = client_raw(&services, event, &req.body.room_id)? {
            events.push(raw);
        }
    }
    Ok(get_state_events::v3::Response::new(events))
}

async fn get_state_for_key(
    State(services): State<AppState>,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<get_state_event_for_key::v3::Response> {
    let session = req.session()?;
    let body = &req.body;
    let (_, state) = visible_state(&services, &session.user_id, &body.room_id)?;
    let key = services
        .rooms
        .state
        .state_key_short(&body.event_type, &body.state_key)?;
    let event = key
        .and_then(|k| state.iter().find(|(sk, _)| *sk == k).map(|(_, e)| *e))
        .ok_or_else(|| Error::not_found("No such state event"))?;
    let raw: Raw<ruma::events::AnyStateEvent> = client_raw(&services, event, &body.room_id)?
        .ok_or_else(|| Error::not_found("No such state event"))?;
    if body.format == get_state_event_for_key::v3::StateEventFormat::Event {
        return Ok(raw.into());
    }
    let content = raw
        .get_field::<Raw<ruma::events::AnyStateEventContent>>("content")
        .map_err(Error::internal)?
        .ok_or_else(|| Error::not_found("No such state event"))?;
    Ok(content.into())
}

/// Pagination tokens are stream positions: `p<position>`. A /sync token (`next_batch`,
/// `s<position>_<typing serial>`) names a stream position too, and the spec has clients page
/// /messages (and /relations) from one, so it reads as that position.
pub fn parse_token(token: &str) -> Result<u64> {
    let bad = || Error::invalid_param(format!("Invalid pagination token `{token}`"));
    if token.starts_with('s') {
        return Since::parse(token)
            .map(|since| since.pos)
            .map_err(|_| bad());
    }
    token
        .strip_prefix('p')
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)
}

pub fn make_token(pos: u64) -> String {
    format!("p{pos}")
}

async fn messages(
    State(services): State<AppState>,
    req: Ruma<get_message_events::v3::Request>,
) -> Result<get_message_events::v3::Response> {
    let session = req.session()?;
    let body = &req.body;
    let query = timeline::PageQuery {
        from: body.from.as_deref().map(parse_token).transpose()?,
        to: body.to.as_deref().map(parse_token).transpose()?,
        forward: body.dir == Direction::Forward,
        limit: u64::from(body.limit).try_into().unwrap_or(usize::MAX),
        filter: &body.filter,
    };
    let page = timeline::page(
        &services,
        &session.user_id,
        &session.device_id,
        &body.room_id,
        query,
    )?;
    let mut resp = get_message_events::v3::Response::new();
    // The token given, whichever kind (a /sync one included) it was.
    resp.start = body.from.clone().unwrap_or_else(|| make_token(page.start));
    resp.end = page.end.map(make_token);
    resp.chunk = page.events.iter().map(to_raw).collect::<Result<_>>()?;
    if !body.filter.lazy_load_options.is_disabled() {
        resp.state =
            timeline::member_events(&services, &session.user_id, &body.room_id, &page.senders)?
                .iter()
                .map(to_raw)
                .collect::<Result<_>>()?;
    }
    Ok(resp)
}

async fn get_event(
    State(services): State<AppState>,
    req: Ruma<get_room_event::v3::Request>,
) -> Result<get_room_event::v3::Response> {
    let session = req.session()?;
    let body = &req.body;
    let (room, _) = services
        .rooms
        .timeline
        .room_access(&session.user_id, &body.room_id)?;
    let mut viewer = services.rooms.timeline.viewer(&session.user_id, room)?;
    // `can_see` also checks the event is in this room.
    let short = services
        .rooms
        .events
        .event_short(&body.event_id)?
        .filter(|s| {
            services
                .rooms
                .timeline
                .can_see(&mut viewer, *s)
                .unwrap_or(false)
        })
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let json = client_json(&services, short, &body.room_id, &session.user_id)?
        .ok_or_else(|| Error::not_found("Event not found"))?;
    Ok(get_room_event::v3::Response::new(to_raw(&json)?))
}

async fn redact(
    State(services): State<AppState>,
    req: Ruma<redact_event::v3::Request>,
) -> Result<redact_event::v3::Response> {
    let session = req.session()?;
    let body = &req.body;
    let room = joined_room(&services, &session.user_id, &body.room_id)?;
    let target_in_room = services
        .rooms
        .events
        .event_short(&body.event_id)?
        .and_then(|s| services.rooms.events.event_meta(s).ok().flatten())
        .is_some_and(|m| m.room == room);
    if !target_in_room {
        return Err(Error::not_found("Event not found"));
    }
    let mut content = serde_json::json!({});
    if let Some(reason) = &body.reason {
        content["reason"] = reason.as_str().into();
    }
    let mut ev = NewEvent::message(TimelineEventType::RoomRedaction, content);
    ev.redacts = Some(body.event_id.clone());
    let sent = services
        .rooms
        .send(
            &body.room_id,
            &session.user_id,
            ev,
            Some(Txn {
                user: session.user,
                device_id: session.device_id.as_str(),
                txn_id: body.txn_id.as_str(),
            }),
        )
        .await?;
    Ok(redact_event::v3::Response::new(sent.event_id))
}

async fn upgrade(
    State(services): State<AppState>,
    req: Ruma<upgrade_room::v3::Request>,
) -> Result<upgrade_room::v3::Response> {
    let session = req.session()?;
    let body = &req.body;
    if body.new_version.rules().is_none() {
        return Err(Error::matrix(
            ErrorKind::UnsupportedRoomVersion,
            format!("Room version {} is not supported", body.new_version),
        ));
    }
    // 403 for rooms the user is not in, whether or not they exist.
    joined_room(&services, &session.user_id, &body.room_id)?;
    let profile = services.profiles.all(session.user)?;
    let field = |f: &str| {
        profile
            .get(f)
            .and_then(JsonValue::as_str)
            .map(str::to_owned)
    };
    let replacement = services
        .rooms
        .upgrade(crate::service::rooms::upgrade::Upgrade {
            old: &body.room_id,
            sender: &session.user_id,
            version: body.new_version.clone(),
            additional_creators: body.additional_creators.clone(),
            profile: (field("displayname"), field("avatar_url")),
        })
        .await?;
    Ok(upgrade_room::v3::Response::new(replacement))
}

async fn report_room_handler(
    State(services): State<AppState>,
    req: Ruma<report_room::v3::Request>,
) -> Result<report_room::v3::Response> {
    let session = req.session()?;
    let body = &req.body;
    // Reporting a room one cannot see would confirm it exists: only members may.
    joined_room(&services, &session.user_id, &body.room_id)?;
    if body.reason.len() > 1000 {
        return Err(Error::invalid_param(
            "The reason is at most 1000 characters",
        ));
    }
    services
        .rooms
        .report(&session.user_id, &body.room_id, None, Some(&body.reason))
        .await?;
    Ok(report_room::v3::Response::new())
}
