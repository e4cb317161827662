//! Relations (/relations with rel_type and event_type filters, recursive), /threads, /context,
//! timestamp_to_event, and reporting events.

use axum::{extract::State, Router};
use ruma::{
    api::{
        client::{
            context::get_context,
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            room::{get_event_by_timestamp, report_content},
            threads::get_threads,
        },
        Direction,
    },
    serde::Raw,
    EventId, MilliSecondsSinceUnixEpoch, RoomId, UInt, UserId,
};
use serde_json::Value as JsonValue;

use super::room::{client_json, make_token, parse_token, to_raw};
use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
    service::{rooms::history::Viewer, timeline::event_matches, Services},
    storage::ShortId,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(relations)
        .ruma(relations_by_type)
        .ruma(relations_by_type_and_event)
        .ruma(threads)
        .ruma(context)
        .ruma(timestamp_to_event)
        .ruma(report)
}

/// A visible event of a room the user may read, with the viewer used to decide it; 403 for
/// rooms they cannot read, 404 for events they cannot see.
fn event_in_room(
    services: &Services,
    user: &UserId,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<(ShortId, ShortId, Viewer)> {
    let (room, _) = services.rooms.timeline.room_access(user, room_id)?;
    let mut viewer = services.rooms.timeline.viewer(user, room)?;
    let short = services
        .rooms
        .events
        .event_short(event_id)?
        .filter(|s| {
            services
                .rooms
                .timeline
                .can_see(&mut viewer, *s)
                .unwrap_or(false)
        })
        .ok_or_else(|| Error::not_found("Event not found"))?;
    Ok((room, short, viewer))
}

struct RelationQuery<'a> {
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<&'a str>,
    to: Option<&'a str>,
    dir: Direction,
    limit: Option<UInt>,
    recurse: bool,
}

struct RelationPage {
    chunk: Vec<JsonValue>,
    next_batch: Option<String>,
    recursion_depth: Option<UInt>,
}

/// How deep `recurse=true` follows relations of relations (Synapse's limit too).
const MAX_RECURSION: usize = 3;

fn relation_page(
    services: &Services,
    seer: &mut Viewer,
    viewer: &UserId,
    room_id: &RoomId,
    parent: ShortId,
    q: RelationQuery<'_>,
) -> Result<RelationPage> {
    // Children, optionally of children too, filtered by rel_type (at the first level) and type.
    let mut found: Vec<ShortId> = Vec::new();
    let mut frontier = vec![parent];
    let depth = if q.recurse { MAX_RECURSION } else { 1 };
    let mut reached = 0;
    for level in 0..depth {
        let mut next = Vec::new();
        for p in &frontier {
            for (child, rel_type) in services.rooms.timeline.children(*p)? {
                if level == 0 && q.rel_type.as_ref().is_some_and(|t| *t != rel_type) {
                    continue;
                }
                next.push(child);
            }
        }
        if next.is_empty() {
            break;
        }
        reached = level + 1;
        found.extend(next.iter().copied());
        frontier = next;
    }
    found.sort_unstable();
    found.dedup();
    let forward = q.dir == Direction::Forward;
    if !forward {
        found.reverse();
    }
    let from = q.from.map(parse_token).transpose()?;
    let to = q.to.map(parse_token).transpose()?;
    let limit = q
        .limit
        .map(|l| u64::from(l) as usize)
        .unwrap_or(50)
        .clamp(1, 1000);
    let mut chunk = Vec::new();
    let mut last = None;
    let mut more = false;
    for pos in found {
        let after_from = match from {
            Some(f) if forward => pos > f,
            Some(f) => pos <= f,
            None => true,
        };
        let before_to = match to {
            Some(t) if forward => pos <= t,
            Some(t) => pos > t,
            None => true,
        };
        if !after_from || !before_to {
            continue;
        }
        if chunk.len() >= limit {
            more = true;
            break;
        }
        if !services.rooms.timeline.can_see(seer, pos)? {
            last = Some(pos);
            continue;
        }
        let Some(json) = client_json(services, pos, room_id, viewer)? else {
            continue;
        };
        if q.event_type
            .as_deref()
            .is_some_and(|t| json.get("type").and_then(JsonValue::as_str) != Some(t))
        {
            last = Some(pos);
            continue;
        }
        chunk.push(json);
        last = Some(pos);
    }
    let next_batch = if more {
        last.map(|p| make_token(if forward { p } else { p.saturating_sub(1) }))
    } else {
        None
    };
    Ok(RelationPage {
        chunk,
        next_batch,
        recursion_depth: q.recurse.then(|| UInt::from(reached as u32)),
    })
}

macro_rules! relations_handler {
    ($name:ident, $module:ident, $rel:expr, $ev:expr) => {
        async fn $name(
            State(services): State<AppState>,
            req: Ruma<$module::v1::Request>,
        ) -> Result<$module::v1::Response> {
            let session = req.session()?;
            let b = &req.body;
            let (_, parent, mut seer) =
                event_in_room(&services, &session.user_id, &b.room_id, &b.event_id)?;
            #[allow(clippy::redundant_closure_call)]
            let page = relation_page(
                &services,
                &mut seer,
                &session.user_id,
                &b.room_id,
                parent,
                RelationQuery {
                    rel_type: ($rel)(b),
                    event_type: ($ev)(b),
                    from: b.from.as_deref(),
                    to: b.to.as_deref(),
                    dir: b.dir,
                    limit: b.limit,
                    recurse: b.recurse,
                },
            )?;
            let chunk = page.chunk.iter().map(to_raw).collect::<Result<Vec<_>>>()?;
            let mut resp = $module::v1::Response::new(chunk);
            resp.next_batch = page.next_batch;
            resp.recursion_depth = page.recursion_depth;
            Ok(resp)
        }
    };
}

relations_handler!(
    relations,
    get_relating_events,
    |_b: &get_relating_events::v1::Request| None::<String>,
    |_b: &get_relating_events::v1::Request| None::<String>
);
relations_handler!(
    relations_by_type,
    get_relating_events_with_rel_type,
    |b: &get_relating_events_with_rel_type::v1::Request| Some(b.rel_type.to_string()),
    |_b: &get_relating_events_with_rel_type::v1::Request| None::<String>
);
relations_handler!(
    relations_by_type_and_event,
    get_relating_events_with_rel_type_and_event_type,
    |b: &get_relating_events_with_rel_type_and_event_type::v1::Request| Some(
        b.rel_type.to_string()
    ),
    |b: &get_relating_events_with_rel_type_and_event_type::v1::Request| Some(
        b.event_type.to_string()
    )
);

async fn threads(
    State(services): State<AppState>,
    req: Ruma<get_threads::v1::Request>,
) -> Result<get_threads::v1::Response> {
    use ruma::api::client::threads::get_threads::v1::IncludeThreads;
    let session = req.session()?;
    let b = &req.body;
    let (room, _) = services
        .rooms
        .timeline
        .room_access(&session.user_id, &b.room_id)?;
    let mut seer = services.rooms.timeline.viewer(&session.user_id, room)?;
    let mut roots = services.rooms.timeline.threads(room)?;
    // Most recently active first.
    roots.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let from = b.from.as_deref().map(parse_token).transpose()?;
    let limit = b
        .limit
        .map(|l| u64::from(l) as usize)
        .unwrap_or(20)
        .clamp(1, 100);
    let mut chunk = Vec::new();
    let mut next_batch = None;
    for (root, latest) in roots {
        if from.is_some_and(|f| latest > f) {
            continue;
        }
        if b.include == IncludeThreads::Participated {
            let mine = services
                .rooms
                .events
                .pdu(root)?
                .is_some_and(|p| p.sender == session.user_id)
                || services
                    .rooms
                    .timeline
                    .children(root)?
                    .iter()
                    .filter(|(_, t)| t == "m.thread")
                    .any(|(c, _)| {
                        services
                            .rooms
                            .events
                            .pdu(*c)
                            .ok()
                            .flatten()
                            .is_some_and(|p| p.sender == session.user_id)
                    });
            if !mine {
                continue;
            }
        }
        if !services.rooms.timeline.can_see(&mut seer, root)? {
            continue;
        }
        if chunk.len() >= limit {
            next_batch = Some(make_token(latest));
            break;
        }
        if let Some(json) = client_json(&services, root, &b.room_id, &session.user_id)? {
            chunk.push(to_raw(&json)?);
        }
    }
    let mut resp = get_threads::v1::Response::new(chunk);
    resp.next_batch = next_batch;
    Ok(resp)
}

async fn context(
    State(services): State<AppState>,
    req: Ruma<get_context::v3::Request>,
) -> Result<get_context::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    let (room, short, mut seer) =
        event_in_room(&services, &session.user_id, &b.room_id, &b.event_id)?;
    let limit = u64::from(b.limit).min(100) as usize;
    let before_n = limit / 2;
    let after_n = limit - before_n;
    let before =
        services
            .rooms
            .timeline
            .timeline(room, short.saturating_sub(1), false, before_n)?;
    let after = services
        .rooms
        .timeline
        .timeline(room, short, true, after_n)?;
    let mut senders = std::collections::BTreeSet::new();
    let mut render = |positions: &[ShortId]| -> Result<Vec<Raw<_>>> {
        let mut out = Vec::new();
        for p in positions {
            if !services.rooms.timeline.can_see(&mut seer, *p)? {
                continue;
            }
            let Some(json) = client_json(&services, *p, &b.room_id, &session.user_id)? else {
                continue;
            };
            if let Some(obj) = json.as_object() {
                if !event_matches(&b.filter, obj) {
                    continue;
                }
            }
            if let Some(sender) = json.get("sender").and_then(JsonValue::as_str) {
                senders.insert(sender.to_owned());
            }
            out.push(to_raw(&json)?);
        }
        Ok(out)
    };
    let mut resp = get_context::v3::Response::new();
    resp.start = Some(make_token(
        before
            .last()
            .map(|p| p.saturating_sub(1))
            .unwrap_or(short.saturating_sub(1)),
    ));
    resp.end = Some(make_token(after.last().copied().unwrap_or(short)));
    resp.events_before = render(&before)?;
    resp.events_after = render(&after)?;
    let event = client_json(&services, short, &b.room_id, &session.user_id)?;
    if let Some(sender) = event
        .as_ref()
        .and_then(|e| e.get("sender"))
        .and_then(JsonValue::as_str)
    {
        senders.insert(sender.to_owned());
    }
    resp.event = event.map(|j| to_raw(&j)).transpose()?;
    // The state at the last event returned; with lazy-loading, only the senders' members.
    let lazy = !b.filter.lazy_load_options.is_disabled();
    let last = after.last().copied().unwrap_or(short);
    if let Some(meta) = services.rooms.events.event_meta(last)? {
        let state = services.rooms.state.state_at(meta.state_after)?;
        let mut events = Vec::new();
        for (key, event) in state.iter() {
            if lazy {
                let (kind, state_key) = services.rooms.state.state_key_of(*key)?;
                if kind == ruma::events::StateEventType::RoomMember && !senders.contains(&state_key)
                {
                    continue;
                }
            }
            if let Some(json) = client_json(&services, *event, &b.room_id, &session.user_id)? {
                events.push(to_raw(&json)?);
            }
        }
        resp.state = events;
    }
    Ok(resp)
}

async fn timestamp_to_event(
    State(services): State<AppState>,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<get_event_by_timestamp::v1::Response> {
    let session = req.session()?;
    let b = &req.body;
    let (room, _) = services
        .rooms
        .timeline
        .room_access(&session.user_id, &b.room_id)?;
    let mut seer = services.rooms.timeline.viewer(&session.user_id, room)?;
    let target = u64::from(b.ts.get());
    let forward = b.dir == Direction::Forward;
    // Walk the timeline in the asked direction from the end nearest the target; timelines are
    // in stream order, which for local events is also timestamp order.
    let mut cursor = if forward { 0 } else { u64::MAX };
    loop {
        let page = services
            .rooms
            .timeline
            .timeline(room, cursor, forward, 500)?;
        if page.is_empty() {
            return Err(Error::not_found("No event found in that direction"));
        }
        for pos in page.iter().copied() {
            cursor = if forward { pos } else { pos.saturating_sub(1) };
            if !services.rooms.timeline.can_see(&mut seer, pos)? {
                continue;
            }
            let Some(pdu) = services.rooms.events.pdu(pos)? else {
                continue;
            };
            let ts = u64::from(pdu.origin_server_ts.get());
            if (forward && ts >= target) || (!forward && ts <= target) {
                return Ok(get_event_by_timestamp::v1::Response::new(
                    pdu.event_id,
                    MilliSecondsSinceUnixEpoch(pdu.origin_server_ts.get()),
                ));
            }
        }
    }
}

async fn report(
    State(services): State<AppState>,
    req: Ruma<report_content::v3::Request>,
) -> Result<report_content::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    event_in_room(&services, &session.user_id, &b.room_id, &b.event_id)?;
    if b.reason.as_ref().is_some_and(|r| r.len() > 1000) {
        return Err(Error::invalid_param(
            "The reason is at most 1000 characters",
        ));
    }
    services
        .rooms
        .report(
            &session.user_id,
            &b.room_id,
            Some(&b.event_id),
            b.reason.as_deref(),
        )
        .await?;
    Ok(report_content::v3::Response::new())
}
