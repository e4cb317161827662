//! One room of a sliding sync response: sent whole when the connection does not have it (or
//! the user's membership changed), else only what changed since the connection last had it.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{
    api::client::sync::sync_events::v5,
    events::{room::member::MembershipState, StateEventType},
    OwnedMxcUri, RoomId, UInt,
};
use serde_json::Value as JsonValue;

use super::{Candidate, ConnState, Request, RequiredState, RoomConfig, RoomSent};
use crate::{
    error::Result,
    service::{
        rooms::state::StateMap,
        sync::{raw, stripped_state, Since},
        Services,
    },
    storage::ShortId,
};

/// Most `$LAZY` members remembered per room and connection; past it they start over (and are
/// sent again, which costs bytes, not correctness).
const MAX_LAZY: usize = 1000;

/// A room to send, and what the connection will then have of it.
pub(super) struct RoomOut {
    pub room: v5::response::Room,
    pub sent: RoomSent,
    /// Sent whole (initial, or with an expanded timeline): the extensions send its receipts and
    /// typing whole too.
    pub fresh: bool,
    pub expanded: bool,
}

/// The state at a stream position: after the room's latest timeline event at or before it.
fn state_at(services: &Services, room: ShortId, pos: u64) -> Result<Option<Arc<StateMap>>> {
    let rooms = &services.rooms;
    let Some(event) = rooms
        .timeline
        .timeline(room, pos, false, 1)?
        .first()
        .copied()
    else {
        return Ok(None);
    };
    rooms.state.state_after(event)
}

/// The newest visible timeline events in (lower, top], at most `limit`, oldest first, and
/// whether there were more.
fn timeline(
    services: &Services,
    req: &Request<'_>,
    room: ShortId,
    room_id: &RoomId,
    top: u64,
    lower: Option<u64>,
    limit: u64,
) -> Result<(Vec<(ShortId, JsonValue)>, bool)> {
    let rooms = &services.rooms;
    let limit = limit as usize;
    let mut viewer = rooms.timeline.viewer(req.user_id, room)?;
    let mut picked = Vec::new();
    let mut limited = false;
    let mut cursor = top;
    'scan: loop {
        let page = rooms
            .timeline
            .timeline(room, cursor, false, limit.saturating_mul(2).max(16))?;
        if page.is_empty() {
            break;
        }
        for pos in page {
            if lower.is_some_and(|l| pos <= l) {
                break 'scan;
            }
            cursor = pos.saturating_sub(1);
            if !rooms.timeline.can_see(&mut viewer, pos)? {
                continue;
            }
            if picked.len() == limit {
                limited = true;
                break 'scan;
            }
            let Some(mut json) = rooms
                .timeline
                .client_event_json(pos, room_id, req.user_id)?
            else {
                continue;
            };
            if json.get("sender").and_then(JsonValue::as_str) == Some(req.user_id.as_str()) {
                rooms
                    .events
                    .add_transaction_id(pos, req.device_id, &mut json)?;
            }
            picked.push((pos, json));
        }
        if cursor == 0 {
            break;
        }
    }
    picked.reverse();
    Ok((picked, limited))
}

/// The state events of `map` that `rs` asks for, and the members of `lazy`.
fn pick_state(
    services: &Services,
    map: &StateMap,
    rs: &RequiredState,
    lazy: &BTreeSet<String>,
) -> Result<Vec<ShortId>> {
    let state = &services.rooms.state;
    let mut out = Vec::new();
    if rs.walks() {
        for (key, event) in map {
            let (kind, state_key) = state.state_key_of(*key)?;
            let kind = kind.to_string();
            if rs.wants(&kind, &state_key) || (kind == "m.room.member" && lazy.contains(&state_key))
            {
                out.push(*event);
            }
        }
        return Ok(out);
    }
    let pairs = rs
        .pairs
        .iter()
        .map(|(k, s)| (k.as_str(), s.as_str()))
        .chain(lazy.iter().map(|u| ("m.room.member", u.as_str())));
    for (kind, state_key) in pairs {
        if let Some(key) = state.state_key_short(&StateEventType::from(kind), state_key)? {
            if let Some(event) = map.get(&key) {
                out.push(*event);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The room's name, avatar and whether members changed, from its state.
struct Summary {
    name: Option<String>,
    avatar: Option<OwnedMxcUri>,
}

fn content_str(services: &Services, event: ShortId, field: &str) -> Result<Option<String>> {
    Ok(services
        .rooms
        .events
        .pdu(event)?
        .and_then(|p| p.content_field(field))
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|s| !s.is_empty()))
}

fn summary(services: &Services, map: &StateMap) -> Result<Summary> {
    let state = &services.rooms.state;
    let get = |kind: StateEventType, field: &str| -> Result<Option<String>> {
        match state.state_key_short(&kind, "")? {
            Some(key) => match map.get(&key) {
                Some(e) => content_str(services, *e, field),
                None => Ok(None),
            },
            None => Ok(None),
        }
    };
    Ok(Summary {
        name: get(StateEventType::RoomName, "name")?,
        avatar: get(StateEventType::RoomAvatar, "url")?.map(Into::into),
    })
}

/// Up to five members other than the user (joined and invited first), for rooms without a
/// name, and the joined and invited counts.
fn heroes_and_counts(
    services: &Services,
    req: &Request<'_>,
    room: ShortId,
) -> Result<(Vec<v5::response::Hero>, u64, u64)> {
    let rooms = &services.rooms;
    let mut heroes = Vec::new();
    let (mut joined, mut invited) = (0u64, 0u64);
    for (member, m) in rooms.membership.members(room)? {
        match m.membership() {
            MembershipState::Join => joined += 1,
            MembershipState::Invite => invited += 1,
            _ => continue,
        }
        if member == req.user || heroes.len() >= 5 {
            continue;
        }
        let mut hero = v5::response::Hero::new(rooms.events.user_id_of(member)?);
        if let Some(pdu) = rooms.events.pdu(m.event)? {
            hero.name = pdu
                .content_field("displayname")
                .and_then(|v| v.as_str().map(str::to_owned));
            hero.avatar = pdu
                .content_field("avatar_url")
                .and_then(|v| v.as_str().map(Into::into));
        }
        heroes.push(hero);
    }
    Ok((heroes, joined, invited))
}

/// The room's entry in the response, or `None` when the connection has it and nothing changed.
#[allow(clippy::too_many_arguments)]
pub(super) fn room_data(
    services: &Services,
    req: &Request<'_>,
    base: &ConnState,
    upto: Since,
    candidate: &Candidate,
    room_id: &RoomId,
    config: &RoomConfig,
    previous: Option<&RoomSent>,
) -> Result<Option<RoomOut>> {
    let rooms = &services.rooms;
    let room = candidate.room;
    let membership = candidate.membership.membership();
    let mut out = v5::response::Room::default();
    out.bump_stamp = Some(UInt::new_saturating(candidate.stamp));

    // Invites and knocks: the stripped state, once per membership.
    if matches!(membership, MembershipState::Invite | MembershipState::Knock) {
        // Sent once per membership event: a new invite after a rejection is sent again.
        if previous
            .is_some_and(|p| p.membership == membership && p.upto == candidate.membership.event)
        {
            return Ok(None);
        }
        out.invite_state = Some(stripped_state(
            services,
            req.user,
            room,
            candidate.membership,
        )?);
        out.initial = Some(true);
        let sent = RoomSent {
            upto: candidate.membership.event,
            timeline_limit: config.timeline_limit,
            required_state: Arc::new(config.required_state.clone()),
            lazy: Arc::default(),
            membership,
        };
        return Ok(Some(RoomOut {
            room: out,
            sent,
            fresh: true,
            expanded: false,
        }));
    }

    // Joined, or left or banned (shown up to the leave).
    let joined = membership == MembershipState::Join;
    let top = if joined {
        upto.pos
    } else {
        candidate.membership.event
    };
    // A join after an invite, a knock or a leave starts the room over for the client.
    let fresh_membership = previous.is_none_or(|p| p.membership != membership && joined);
    let initial = fresh_membership;
    let previous = previous.filter(|_| !initial);
    let expanded = previous.is_some_and(|p| config.timeline_limit > p.timeline_limit);
    let added_state = previous.and_then(|p| config.required_state.added_since(&p.required_state));
    let membership_changed = previous.is_some_and(|p| p.membership != membership);
    if let Some(p) = previous {
        let latest = rooms
            .timeline
            .timeline(room, top, false, 1)?
            .first()
            .copied();
        let moved = latest.is_some_and(|l| l > p.upto);
        // Counts grow with events and shrink with the user's own receipts (any device's).
        let counts_moved = services
            .push
            .counts_changed_between(req.user, room, p.upto, upto.pos)
            || services
                .receipts
                .changes(room, Some(p.upto), upto.pos)?
                .iter()
                .any(|r| r.user == req.user_id);
        if !moved && !counts_moved && !expanded && added_state.is_none() && !membership_changed {
            return Ok(None);
        }
    }
    let lower = match previous {
        Some(p) if !expanded => Some(p.upto),
        _ => None,
    };
    let (events, limited) = timeline(
        services,
        req,
        room,
        room_id,
        top,
        lower,
        config.timeline_limit,
    )?;
    let senders: BTreeSet<String> = events
        .iter()
        .flat_map(|(_, e)| {
            let sender = e.get("sender").and_then(JsonValue::as_str);
            let target = (e.get("type").and_then(JsonValue::as_str) == Some("m.room.member"))
                .then(|| e.get("state_key").and_then(JsonValue::as_str))
                .flatten();
            sender.into_iter().chain(target).map(str::to_owned)
        })
        .collect();
    let rs = &config.required_state;
    let mut lazy_sent: BTreeSet<String> = previous.map(|p| (*p.lazy).clone()).unwrap_or_default();
    let lazy_wanted: BTreeSet<String> = if rs.lazy {
        senders
            .iter()
            .filter(|u| !lazy_sent.contains(*u))
            .cloned()
            .collect()
    } else {
        BTreeSet::new()
    };

    // Required state: whole on an initial send; else the changes since the connection had the
    // room, what the request asks for anew, and members the timeline brings in.
    let now_state = state_at(services, room, top)?;
    let mut state_events: Vec<ShortId> = Vec::new();
    let mut name_changed = initial;
    let mut avatar_changed = initial;
    let mut members_changed = initial || membership_changed;
    if let Some(now) = &now_state {
        match previous {
            None => state_events = pick_state(services, now, rs, &lazy_wanted)?,
            Some(p) => {
                let before = state_at(services, room, p.upto)?;
                let state = &rooms.state;
                for (key, event) in now.iter() {
                    if before.as_ref().is_some_and(|b| b.get(key) == Some(event)) {
                        continue;
                    }
                    let (kind, state_key) = state.state_key_of(*key)?;
                    match kind {
                        StateEventType::RoomName => name_changed = true,
                        StateEventType::RoomAvatar => avatar_changed = true,
                        StateEventType::RoomMember => members_changed = true,
                        _ => {}
                    }
                    let kind = kind.to_string();
                    // Without a gap every member change is sent; with one, only the timeline's.
                    // Members the client already has are kept current even across a gap.
                    let lazy_member = rs.lazy
                        && kind == "m.room.member"
                        && (!limited
                            || senders.contains(&state_key)
                            || lazy_sent.contains(&state_key));
                    if rs.wants(&kind, &state_key) || lazy_member {
                        state_events.push(*event);
                        if lazy_member {
                            lazy_sent.insert(state_key);
                        }
                    }
                }
                let mut extra = BTreeSet::new();
                extra.extend(lazy_wanted.iter().cloned());
                let added = added_state.clone().unwrap_or_default();
                let fetch = RequiredState {
                    lazy: false,
                    ..added
                };
                if fetch != RequiredState::default() || !extra.is_empty() {
                    state_events.extend(pick_state(services, now, &fetch, &extra)?);
                }
            }
        }
    }
    state_events.sort_unstable();
    state_events.dedup();
    lazy_sent.extend(lazy_wanted);
    if lazy_sent.len() > MAX_LAZY {
        lazy_sent.clear();
    }
    for event in &state_events {
        if let Some(json) = rooms
            .timeline
            .client_event_json(*event, room_id, req.user_id)?
        {
            out.required_state.push(raw(&json)?);
        }
    }

    if let Some(now) = &now_state {
        let s = summary(services, now)?;
        if name_changed {
            out.name = s.name.clone();
        }
        if avatar_changed {
            out.avatar = match s.avatar {
                Some(a) => ruma::JsOption::Some(a),
                None if !initial => ruma::JsOption::Null,
                None => ruma::JsOption::Undefined,
            };
        }
        if members_changed && joined {
            let (heroes, j, i) = heroes_and_counts(services, req, room)?;
            if s.name.is_none() {
                out.heroes = Some(heroes);
            }
            out.joined_count = Some(UInt::new_saturating(j));
            out.invited_count = Some(UInt::new_saturating(i));
        }
    }
    if joined {
        let counts = services.push.counts(req.user, room, false)?;
        out.unread_notifications.notification_count =
            Some(UInt::new_saturating(counts.notifications));
        out.unread_notifications.highlight_count = Some(UInt::new_saturating(counts.highlights));
    }
    let since = base.since.map(|s| s.pos);
    out.num_live = Some(UInt::new_saturating(
        events
            .iter()
            .filter(|(p, _)| since.is_some_and(|s| *p > s))
            .count() as u64,
    ));
    out.prev_batch = Some(format!(
        "p{}",
        events.first().map_or(top, |(p, _)| p.saturating_sub(1))
    ));
    out.limited = limited;
    for (_, json) in &events {
        out.timeline.push(raw(json)?);
    }
    if initial {
        out.initial = Some(true);
    }
    // A smaller limit after a gap is remembered, so asking for more later expands again.
    let timeline_limit = match previous {
        Some(p) if !expanded && limited => p.timeline_limit.min(config.timeline_limit),
        _ => config.timeline_limit,
    };
    let sent = RoomSent {
        upto: top,
        timeline_limit,
        required_state: Arc::new(config.required_state.clone()),
        lazy: Arc::new(lazy_sent),
        membership,
    };
    Ok(Some(RoomOut {
        room: out,
        sent,
        fresh: initial || expanded,
        expanded,
    }))
}
