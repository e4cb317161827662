//! Reading a room's timeline the way a client pages through it (`/messages`): a filtered page of
//! events in either direction between two stream positions, as the reader may see them, and the
//! member events of their senders for lazy-loading. Built on public `rooms` reads only; token
//! formats are the API layer's business, positions are plain `u64`s here.

use std::collections::BTreeSet;

use ruma::{
    api::client::filter::RoomEventFilter, events::StateEventType, DeviceId, RoomId, UserId,
};
use serde_json::{Map as JsonMap, Value as JsonValue};

use super::{rooms::history::Access, Services};

use crate::error::Result;

/// What a page request asks for.
pub struct PageQuery<'a> {
    /// Where to start; `None` is the start of the room (forwards) or its live end (backwards).
    pub from: Option<u64>,
    /// Where to stop, if anywhere.
    pub to: Option<u64>,
    pub forward: bool,
    /// At most this many events (clamped to 1..=1000).
    pub limit: usize,
    pub filter: &'a RoomEventFilter,
}

/// One page of the timeline.
pub struct Page {
    /// The events, in the client format, as the reader sees them.
    pub events: Vec<JsonValue>,
    /// The position the page started at: `from`, or the room's latest event when paging back
    /// from the live end.
    pub start: u64,
    /// Where the next page starts; `None` when there is nothing further (or the page is empty).
    pub end: Option<u64>,
    /// Who sent the events of the page.
    pub senders: BTreeSet<String>,
}

/// A page of `room_id`'s timeline for `reader` (on `device`, whose own transaction IDs are shown).
pub fn page(
    services: &Services,
    reader: &UserId,
    device: &DeviceId,
    room_id: &RoomId,
    query: PageQuery<'_>,
) -> Result<Page> {
    let (room, _) = services.rooms.timeline.room_access(reader, room_id)?;
    let mut viewer = services.rooms.timeline.viewer(reader, room)?;
    let PageQuery {
        from,
        to,
        forward,
        limit,
        filter,
    } = query;
    let from = from.unwrap_or(if forward { 0 } else { u64::MAX });
    let limit = limit.clamp(1, 1000);

    let mut events = Vec::new();
    let mut senders = BTreeSet::new();
    let mut cursor = from;
    let mut end = None;
    // Filtered-out events still advance the cursor; read in pages until the chunk is full.
    'pages: loop {
        let page = services
            .rooms
            .timeline
            .timeline(room, cursor, forward, limit * 2)?;
        if page.is_empty() {
            break;
        }
        for pos in page.iter().copied() {
            if to.is_some_and(|t| if forward { pos > t } else { pos <= t }) {
                end = None;
                break 'pages;
            }
            cursor = if forward { pos } else { pos.saturating_sub(1) };
            end = Some(cursor);
            let Some(stored) = services.rooms.events.event_json(pos)? else {
                continue;
            };
            if !event_matches(filter, &stored)
                || !services.rooms.timeline.can_see(&mut viewer, pos)?
            {
                continue;
            }
            if let Some(mut json) = services
                .rooms
                .timeline
                .client_event_json(pos, room_id, reader)?
            {
                if let Some(sender) = json
                    .get("sender")
                    .and_then(JsonValue::as_str)
                    .map(str::to_owned)
                {
                    if sender == reader.as_str() {
                        services.rooms.events.add_transaction_id(
                            pos,
                            device.as_str(),
                            &mut json,
                        )?;
                    }
                    senders.insert(sender);
                }
                events.push(json);
            }
            if events.len() >= limit {
                break 'pages;
            }
        }
    }
    // A concrete position even when paging from the live end, so the token stays meaningful.
    let start = if from == u64::MAX {
        services
            .rooms
            .timeline
            .timeline(room, u64::MAX, false, 1)?
            .first()
            .copied()
            .unwrap_or(0)
    } else {
        from
    };
    Ok(Page {
        end: if events.is_empty() { None } else { end },
        events,
        start,
        senders,
    })
}

/// Whether a stored event passes a room event filter's type and sender conditions.
pub fn event_matches(filter: &RoomEventFilter, stored: &JsonMap<String, JsonValue>) -> bool {
    let kind = stored.get("type").and_then(JsonValue::as_str).unwrap_or("");
    let sender = stored
        .get("sender")
        .and_then(JsonValue::as_str)
        .unwrap_or("");
    let type_matches = |pattern: &String| match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => kind == pattern,
    };
    if filter.not_types.iter().any(type_matches) {
        return false;
    }
    if let Some(types) = &filter.types {
        if !types.iter().any(type_matches) {
            return false;
        }
    }
    if filter.not_senders.iter().any(|s| s.as_str() == sender) {
        return false;
    }
    if let Some(senders) = &filter.senders {
        if !senders.iter().any(|s| s.as_str() == sender) {
            return false;
        }
    }
    true
}

/// The member events of `users` as the reader sees the room (for lazy-loading members), in the
/// client format: from the current state, or from the state when a former member left.
pub fn member_events(
    services: &Services,
    reader: &UserId,
    room_id: &RoomId,
    users: &BTreeSet<String>,
) -> Result<Vec<JsonValue>> {
    let (room, access) = services.rooms.timeline.room_access(reader, room_id)?;
    let left_state = match access {
        Access::Former(event) => match services.rooms.events.event_meta(event)? {
            Some(meta) => Some(services.rooms.state.state_at(meta.state_after)?),
            None => None,
        },
        Access::Joined | Access::Public => None,
    };
    let mut out = Vec::new();
    for user in users {
        let event = match &left_state {
            Some(state) => services
                .rooms
                .state
                .state_key_short(&StateEventType::RoomMember, user)?
                .and_then(|k| state.get(&k).copied()),
            None => {
                services
                    .rooms
                    .state
                    .current_state_event(room, &StateEventType::RoomMember, user)?
            }
        };
        if let Some(json) = event
            .map(|e| services.rooms.timeline.client_event(e, room_id))
            .transpose()?
            .flatten()
        {
            out.push(json);
        }
    }
    Ok(out)
}
