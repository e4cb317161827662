//! /sync (v3): everything that changed for a user between two stream positions, assembled from
//! the rooms' timelines and state groups, receipts, typing and account data. A request with
//! nothing new waits on the user's wake-up channel (see `stream`), never polls.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use ruma::{
    api::client::{
        filter::{FilterDefinition, RoomEventFilter},
        sync::sync_events::v3::{
            self, InviteState, InvitedRoom, JoinedRoom, KnockState, KnockedRoom, LeftRoom,
            RoomSummary, State, StateEvents, Timeline,
        },
    },
    events::{room::member::MembershipState, StateEventType},
    serde::Raw,
    OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::{json, Value as JsonValue};

use crate::{
    error::{Error, Result},
    service::{
        account_data,
        rooms::{history::Viewer, state::StateMap, Membership},
        Services,
    },
    storage::ShortId,
};

/// A `since` / `next_batch` token: the durable stream position and the typing serial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Since {
    pub pos: u64,
    pub typing: u64,
}

impl Since {
    pub fn parse(token: &str) -> Result<Self> {
        let bad = || Error::invalid_param(format!("Invalid since token `{token}`"));
        let rest = token.strip_prefix('s').ok_or_else(bad)?;
        let (pos, typing) = rest.split_once('_').ok_or_else(bad)?;
        Ok(Self {
            pos: pos.parse().map_err(|_| bad())?,
            typing: typing.parse().map_err(|_| bad())?,
        })
    }

    pub fn token(&self) -> String {
        format!("s{}_{}", self.pos, self.typing)
    }
}

pub struct Request<'a> {
    pub user_id: &'a UserId,
    pub user: ShortId,
    pub device_id: &'a str,
    pub since: Option<Since>,
    pub filter: FilterDefinition,
    pub full_state: bool,
    pub timeout: Duration,
    pub use_state_after: bool,
    pub set_presence: ruma::presence::PresenceState,
}

/// Marks the end of a /sync for presence, however the request ends (a client hanging up
/// drops the future).
pub(crate) struct SyncInFlight<'a>(&'a Services, ShortId);

impl Drop for SyncInFlight<'_> {
    fn drop(&mut self) {
        self.0.presence.sync_ended(self.1);
    }
}

/// Default number of timeline events per room.
const DEFAULT_TIMELINE_LIMIT: usize = 10;
/// Most timeline events per room whatever the filter asks.
const MAX_TIMELINE_LIMIT: usize = 500;
/// State types shown to invitees and knockers (the spec's recommended stripped state).
const STRIPPED_STATE: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// Answers a /sync, waiting up to the timeout for something new when `since` is given.
pub async fn sync(services: &Services, req: Request<'_>) -> Result<v3::Response> {
    let deadline = tokio::time::Instant::now() + req.timeout;
    let _in_flight = presence_in_flight(services, req.user, &req.set_presence).await?;
    // Subscribe before reading, so a change between the read and the wait still wakes us.
    let mut wake = services.stream.subscribe(req.user);
    loop {
        let upto = Since {
            pos: services.stream.current(),
            typing: services.typing.serial(),
        };
        let (response, has_data) = build(services, &req, upto).await?;
        let waiting_allowed = req.since.is_some() && !req.full_state;
        if has_data || !waiting_allowed || tokio::time::Instant::now() >= deadline {
            return Ok(response);
        }
        match tokio::time::timeout_at(deadline, wake.changed()).await {
            Ok(Ok(())) => continue,
            // Timed out (or the channel went away): answer with what there is, which is nothing.
            _ => {
                let upto = Since {
                    pos: services.stream.current(),
                    typing: services.typing.serial(),
                };
                let (response, _) = build(services, &req, upto).await?;
                return Ok(response);
            }
        }
    }
}

/// A device's one-time key counts (`signed_curve25519` always there, so a client whose keys ran
/// out sees 0 and uploads more) and its unused fallback key types.
#[allow(clippy::type_complexity)]
pub(crate) fn key_counts(
    services: &Services,
    user: ShortId,
    device: &str,
) -> Result<(
    BTreeMap<ruma::OneTimeKeyAlgorithm, UInt>,
    Vec<ruma::OneTimeKeyAlgorithm>,
)> {
    let mut counts = services.keys.one_time_key_counts(user, device)?;
    counts.entry("signed_curve25519".to_owned()).or_insert(0);
    let counts = counts
        .into_iter()
        .map(|(a, n)| (a.as_str().into(), UInt::new_saturating(n)))
        .collect();
    let fallback = services
        .keys
        .unused_fallback_types(user, device)?
        .iter()
        .map(|a| a.as_str().into())
        .collect();
    Ok((counts, fallback))
}

/// Counts a syncing request for presence (a sync sets the user online unless it says
/// otherwise); the guard uncounts it however the request ends.
pub(crate) async fn presence_in_flight<'a>(
    services: &'a Services,
    user: ShortId,
    set_presence: &ruma::presence::PresenceState,
) -> Result<Option<SyncInFlight<'a>>> {
    if !services.presence.enabled() {
        return Ok(None);
    }
    // Counted before anything can be cancelled, and uncounted by the guard however the
    // request ends (a client hanging up drops this future at any await).
    let store = services.presence.sync_started(user, set_presence);
    let in_flight = SyncInFlight(services, user);
    if let Some(presence) = store {
        // A write with a wake-up after it: a task of its own, so a dropped /sync cannot
        // stop it between the two.
        let (service, rooms) = (services.presence.clone(), services.rooms.clone());
        services
            .tasks
            .spawn(async move {
                let peers = move |u: ShortId| {
                    rooms
                        .membership
                        .peers(u)
                        .map(|p| p.into_iter().collect())
                        .unwrap_or_default()
                };
                service.store_started(user, presence, &peers).await
            })
            .await
            .map_err(|e| Error::internal(format!("presence task failed: {e}")))??;
    }
    Ok(Some(in_flight))
}

fn room_allowed(filter: &FilterDefinition, room_id: &RoomId) -> bool {
    let rf = &filter.room;
    if rf.not_rooms.iter().any(|r| r == room_id) {
        return false;
    }
    rf.rooms
        .as_ref()
        .is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
}

fn type_matches(patterns: &[String], kind: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => kind == p,
    })
}

/// Whether an event passes a RoomEventFilter's type and sender conditions.
fn event_passes(filter: &RoomEventFilter, json: &JsonValue) -> bool {
    let kind = json.get("type").and_then(JsonValue::as_str).unwrap_or("");
    let sender = json.get("sender").and_then(JsonValue::as_str).unwrap_or("");
    if type_matches(&filter.not_types, kind) {
        return false;
    }
    if filter
        .types
        .as_ref()
        .is_some_and(|t| !type_matches(t, kind))
    {
        return false;
    }
    if filter.not_senders.iter().any(|s| s == sender) {
        return false;
    }
    if filter
        .senders
        .as_ref()
        .is_some_and(|s| !s.iter().any(|x| x == sender))
    {
        return false;
    }
    true
}

pub(crate) fn raw<T>(json: &JsonValue) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(json).map_err(Error::internal)?,
    ))
}

/// What a room section is built from.
struct Window {
    /// Exclusive lower bound of the timeline; `None` for a full (initial) view.
    since: Option<u64>,
    /// Inclusive upper bound.
    upto: u64,
}

struct RoomView {
    timeline: Timeline,
    state: State,
    has_data: bool,
    has_members_change: bool,
    /// (user, membership) of the member events in the timeline.
    member_changes: Vec<(String, String)>,
}

async fn build(
    services: &Services,
    req: &Request<'_>,
    upto: Since,
) -> Result<(v3::Response, bool)> {
    let mut response = v3::Response::new(upto.token());
    let mut has_data = false;
    let since_pos = req.since.map(|s| s.pos);
    let rooms = &services.rooms;

    // The user's joined rooms, for "shares a room with" checks (presence, device lists); read
    // once per sync rather than once per user checked.
    let my_rooms = services.keys.joined_rooms(req.user)?;
    let shares = |other: ShortId| services.keys.shares_with(req.user, &my_rooms, other);

    // To-device messages: what the client's `since` acknowledges is dropped now.
    for message in services
        .keys
        .to_device_inbox(req.user, req.device_id, since_pos, upto.pos)
        .await?
    {
        response.to_device.events.push(raw(&json!({
            "sender": message.sender,
            "type": message.kind,
            "content": message.content,
        }))?);
        has_data = true;
    }
    // Keys: one-time key counts and fallback keys of this device; whose device lists changed.
    let (counts, fallback) = key_counts(services, req.user, req.device_id)?;
    response.device_one_time_keys_count = counts;
    response.device_unused_fallback_key_types = Some(fallback);
    if services.presence.enabled() {
        for user in services.presence.changes(since_pos, upto.pos)? {
            if !shares(user)? {
                continue;
            }
            let Some(stored) = services.presence.get(user)? else {
                continue;
            };
            let ago = services.presence.last_active_ago(user, &stored);
            let user_id = rooms.events.user_id_of(user)?;
            response
                .presence
                .events
                .push(raw(&crate::service::presence::event(
                    &user_id, &stored, ago,
                ))?);
            has_data = true;
        }
    }
    if let Some(since) = since_pos {
        for user in services.keys.changed_users(since, upto.pos)? {
            if shares(user)? {
                response
                    .device_lists
                    .changed
                    .push(rooms.events.user_id_of(user)?);
                has_data = true;
            }
        }
    }

    // Account data, global and per room.
    let mut room_account_data: BTreeMap<ShortId, Vec<JsonValue>> = BTreeMap::new();
    let mut has_push_rules = false;
    let account_filter = &req.filter.account_data;
    for entry in services
        .account_data
        .changes(req.user, since_pos, upto.pos)?
    {
        if type_matches(&account_filter.not_types, &entry.kind)
            || account_filter
                .types
                .as_ref()
                .is_some_and(|t| !type_matches(t, &entry.kind))
        {
            continue;
        }
        if entry.room == account_data::GLOBAL && entry.kind == "m.push_rules" {
            has_push_rules = true;
        }
        let event = json!({ "type": entry.kind, "content": entry.content });
        if entry.room == account_data::GLOBAL {
            response.account_data.events.push(raw(&event)?);
            has_data = true;
        } else {
            room_account_data.entry(entry.room).or_default().push(event);
        }
    }

    // Clients expect their push rules on the first sync, defaults included.
    if since_pos.is_none() && !has_push_rules {
        let ruleset = services.push.ruleset(req.user, req.user_id)?;
        response.account_data.events.push(raw(&json!({
            "type": "m.push_rules",
            "content": { "global": *ruleset },
        }))?);
    }

    // Device-list bookkeeping from membership changes seen below: (user, still shares a room?).
    let mut joined_users: BTreeSet<String> = BTreeSet::new();
    let mut maybe_left: BTreeSet<String> = BTreeSet::new();

    for (room, membership) in rooms.membership.memberships(req.user)? {
        // A membership written after the published position shows up in a later sync.
        if membership.event > upto.pos {
            continue;
        }
        let room_id = rooms.events.room_id_of(room)?;
        if !room_allowed(&req.filter, &room_id) {
            continue;
        }
        let changed = since_pos.is_none_or(|s| membership.event > s);
        let room_data = room_account_data.remove(&room).unwrap_or_default();
        match membership.membership() {
            MembershipState::Join => {
                let fresh = changed || req.full_state;
                let window = Window {
                    since: if fresh { None } else { since_pos },
                    upto: upto.pos,
                };
                let mut joined = JoinedRoom::new();
                let view = room_view(services, req, room, &room_id, &window, since_pos)?;
                if !fresh {
                    for (user, m) in &view.member_changes {
                        if user == req.user_id.as_str() {
                            continue;
                        }
                        match m.as_str() {
                            "join" => {
                                joined_users.insert(user.clone());
                            }
                            "leave" | "ban" => {
                                maybe_left.insert(user.clone());
                            }
                            _ => {}
                        }
                    }
                } else if changed && since_pos.is_some() {
                    // Newly joined: everyone in the room may have keys we do not track yet.
                    for (member, m) in rooms.membership.members(room)? {
                        if m.membership() == MembershipState::Join && member != req.user {
                            joined_users.insert(rooms.events.user_id_of(member)?.to_string());
                        }
                    }
                }
                let mut room_has_data = view.has_data || fresh;
                // Ephemeral: typing and receipts.
                if let Some(users) = services
                    .typing
                    .changed_since(room, req.since.map(|s| s.typing).filter(|_| !fresh))
                {
                    if !(users.is_empty() && fresh) {
                        joined.ephemeral.events.push(raw(&json!({
                            "type": "m.typing",
                            "content": { "user_ids": users },
                        }))?);
                    }
                }
                let receipts = receipt_event(
                    services,
                    req.user_id,
                    room,
                    if fresh { None } else { since_pos },
                    upto.pos,
                )?;
                if let Some(r) = receipts {
                    joined.ephemeral.events.push(raw(&r)?);
                }
                if !joined.ephemeral.events.is_empty() {
                    room_has_data = true;
                }
                for event in &room_data {
                    joined.account_data.events.push(raw(event)?);
                    room_has_data = true;
                }
                if fresh || view.has_members_change {
                    joined.summary = summary(services, room, req.user)?;
                }
                // Unread counts, after the user's receipts; the room is resent when they grew.
                let by_thread = req.filter.room.timeline.unread_thread_notifications;
                let counts = services.push.counts(req.user, room, by_thread)?;
                joined.unread_notifications.notification_count =
                    Some(UInt::new_saturating(counts.notifications));
                joined.unread_notifications.highlight_count =
                    Some(UInt::new_saturating(counts.highlights));
                for (root, (n, h)) in counts.threads {
                    let Ok(root) = ruma::OwnedEventId::try_from(root) else {
                        continue;
                    };
                    let mut c =
                        ruma::api::client::sync::sync_events::UnreadNotificationsCount::new();
                    c.notification_count = Some(UInt::new_saturating(n));
                    c.highlight_count = Some(UInt::new_saturating(h));
                    joined.unread_thread_notifications.insert(root, c);
                }
                if since_pos.is_some_and(|s| {
                    services
                        .push
                        .counts_changed_between(req.user, room, s, upto.pos)
                }) {
                    room_has_data = true;
                }
                if !room_has_data {
                    continue;
                }
                joined.timeline = view.timeline;
                joined.state = view.state;
                response.rooms.join.insert(room_id, joined);
                has_data = true;
            }
            MembershipState::Invite if changed => {
                let mut invited = InvitedRoom::new();
                let mut state = InviteState::new();
                state.events = stripped_state(services, req.user, room, membership)?;
                invited.invite_state = state;
                response.rooms.invite.insert(room_id, invited);
                has_data = true;
            }
            MembershipState::Knock if changed => {
                let mut knocked = KnockedRoom::new();
                let mut state = KnockState::new();
                state.events = stripped_state(services, req.user, room, membership)?;
                knocked.knock_state = state;
                response.rooms.knock.insert(room_id, knocked);
                has_data = true;
            }
            MembershipState::Leave | MembershipState::Ban => {
                // A leave since the last sync, or (with include_leave) any room left before.
                let show = if since_pos.is_some() {
                    changed
                } else {
                    req.filter.room.include_leave
                };
                if !show || rooms.membership.is_forgotten(req.user, room)? {
                    continue;
                }
                // Rejected invites and withdrawn knocks have nothing to show but the leave.
                let window = Window {
                    since: since_pos.filter(|_| !req.full_state),
                    upto: membership.event,
                };
                let view = room_view(services, req, room, &room_id, &window, since_pos)?;
                if since_pos.is_some() && changed {
                    for (member, m) in rooms.membership.members(room)? {
                        if m.membership() == MembershipState::Join {
                            maybe_left.insert(rooms.events.user_id_of(member)?.to_string());
                        }
                    }
                }
                let mut left = LeftRoom::new();
                left.timeline = view.timeline;
                left.state = view.state;
                for event in &room_data {
                    left.account_data.events.push(raw(event)?);
                }
                response.rooms.leave.insert(room_id, left);
                has_data = true;
            }
            _ => {}
        }
    }
    if since_pos.is_some() {
        let already: BTreeSet<String> = response
            .device_lists
            .changed
            .iter()
            .map(|u| u.to_string())
            .collect();
        for user in joined_users {
            if !already.contains(&user) {
                if let Ok(id) = ruma::OwnedUserId::try_from(user) {
                    response.device_lists.changed.push(id);
                    has_data = true;
                }
            }
        }
        for user in maybe_left {
            let Ok(id) = ruma::OwnedUserId::try_from(user) else {
                continue;
            };
            let Some(short) = services.users.short_id(&id)? else {
                continue;
            };
            if short != req.user && !shares(short)? {
                response.device_lists.left.push(id);
                has_data = true;
            }
        }
    }
    Ok((response, has_data))
}

/// The timeline and state of a room over a window, as the user may see them.
fn room_view(
    services: &Services,
    req: &Request<'_>,
    room: ShortId,
    room_id: &RoomId,
    window: &Window,
    since_pos: Option<u64>,
) -> Result<RoomView> {
    let rooms = &services.rooms;
    let filter = &req.filter.room.timeline;
    let limit = filter
        .limit
        .map(|l| u64::from(l) as usize)
        .unwrap_or(DEFAULT_TIMELINE_LIMIT)
        .clamp(1, MAX_TIMELINE_LIMIT);
    let mut viewer: Viewer = rooms.timeline.viewer(req.user_id, room)?;

    // Newest first, down to the window's lower bound, until the limit is reached.
    let mut picked: Vec<(ShortId, JsonValue)> = Vec::new();
    let mut limited = false;
    let mut cursor = window.upto;
    'scan: loop {
        let page = rooms
            .timeline
            .timeline(room, cursor, false, limit * 2 + 1)?;
        if page.is_empty() {
            break;
        }
        for pos in page {
            if window.since.is_some_and(|s| pos <= s) {
                break 'scan;
            }
            cursor = pos.saturating_sub(1);
            if !rooms.timeline.can_see(&mut viewer, pos)? {
                continue;
            }
            let Some(mut json) = rooms
                .timeline
                .client_event_json(pos, room_id, req.user_id)?
            else {
                continue;
            };
            if !event_passes(filter, &json) {
                continue;
            }
            if json.get("sender").and_then(JsonValue::as_str) == Some(req.user_id.as_str()) {
                rooms
                    .events
                    .add_transaction_id(pos, req.device_id, &mut json)?;
            }
            if picked.len() == limit {
                limited = true;
                break 'scan;
            }
            picked.push((pos, json));
        }
        if cursor == 0 {
            break;
        }
    }
    picked.reverse();

    let mut senders = BTreeSet::new();
    let mut has_members_change = false;
    let mut member_changes = Vec::new();
    let mut timeline = Timeline::new();
    for (_, json) in &picked {
        if let Some(s) = json.get("sender").and_then(JsonValue::as_str) {
            senders.insert(s.to_owned());
        }
        if json.get("type").and_then(JsonValue::as_str) == Some("m.room.member") {
            has_members_change = true;
            if let (Some(target), Some(m)) = (
                json.get("state_key").and_then(JsonValue::as_str),
                json.pointer("/content/membership")
                    .and_then(JsonValue::as_str),
            ) {
                member_changes.push((target.to_owned(), m.to_owned()));
            }
        }
        timeline.events.push(raw(json)?);
    }
    timeline.limited = limited;
    let first = picked.first().map(|(p, _)| *p);
    let last = picked.last().map(|(p, _)| *p);
    timeline.prev_batch = Some(format!(
        "p{}",
        first.map_or(window.upto, |f| f.saturating_sub(1))
    ));

    // State: from the state at `since` (nothing for a full view) to the state at the start of
    // the timeline (or, with use_state_after, at its end).
    let at = |pos: u64| -> Result<Option<std::sync::Arc<StateMap>>> {
        let Some(event) = rooms
            .timeline
            .timeline(room, pos, false, 1)?
            .first()
            .copied()
        else {
            return Ok(None);
        };
        match rooms.events.event_meta(event)? {
            Some(meta) => Ok(Some(rooms.state.state_at(meta.state_after)?)),
            None => Ok(None),
        }
    };
    let target = if req.use_state_after {
        at(last.unwrap_or(window.upto))?
    } else {
        match first {
            Some(f) => match rooms.events.event_meta(f)? {
                Some(meta) => Some(rooms.state.state_at(meta.state_before)?),
                None => None,
            },
            None => at(window.upto)?,
        }
    };
    let from = match window.since {
        Some(s) => at(s)?,
        None => None,
    };
    let lazy = !req.filter.room.state.lazy_load_options.is_disabled();
    let in_timeline: BTreeSet<ShortId> = picked.iter().map(|(p, _)| *p).collect();
    let mut state_events = Vec::new();
    if let Some(target) = target {
        for (key, event) in target.iter() {
            if from.as_ref().is_some_and(|f| f.get(key) == Some(event)) {
                continue;
            }
            // With state before the timeline, events in the timeline are not repeated.
            if !req.use_state_after && in_timeline.contains(event) {
                continue;
            }
            let (kind, state_key) = rooms.state.state_key_of(*key)?;
            if !state_type_allowed(&req.filter.room.state, &kind) {
                continue;
            }
            if lazy
                && kind == StateEventType::RoomMember
                && state_key != req.user_id.as_str()
                && !senders.contains(&state_key)
            {
                continue;
            }
            if let Some(json) = rooms
                .timeline
                .client_event_json(*event, room_id, req.user_id)?
            {
                state_events.push(raw(&json)?);
            }
        }
    }
    // Lazy loading on an incremental sync: members of this timeline's senders that did not
    // change, and so are not in the delta above, are sent too.
    if lazy && since_pos.is_some() && window.since.is_some() {
        if let Some(target) = at(last.unwrap_or(window.upto))? {
            for sender in &senders {
                let Some(key) = rooms
                    .state
                    .state_key_short(&StateEventType::RoomMember, sender)?
                else {
                    continue;
                };
                let Some(event) = target.get(&key) else {
                    continue;
                };
                if in_timeline.contains(event)
                    || from.as_ref().is_some_and(|f| f.get(&key) != Some(event))
                {
                    continue;
                }
                if let Some(json) =
                    rooms
                        .timeline
                        .client_event_json(*event, room_id, req.user_id)?
                {
                    state_events.push(raw(&json)?);
                }
            }
        }
    }
    let has_data = !picked.is_empty() || !state_events.is_empty();
    let mut events = StateEvents::new();
    events.events = state_events;
    let state = if req.use_state_after {
        State::After(events)
    } else {
        State::Before(events)
    };
    Ok(RoomView {
        timeline,
        state,
        has_data,
        has_members_change,
        member_changes,
    })
}

fn state_type_allowed(
    filter: &ruma::api::client::filter::RoomEventFilter,
    kind: &StateEventType,
) -> bool {
    let kind = kind.to_string();
    if type_matches(&filter.not_types, &kind) {
        return false;
    }
    filter.types.as_ref().is_none_or(|t| type_matches(t, &kind))
}

/// The m.receipt event of a room's receipts in the window, without other users' private ones.
pub(crate) fn receipt_event(
    services: &Services,
    user_id: &UserId,
    room: ShortId,
    since: Option<u64>,
    upto: u64,
) -> Result<Option<JsonValue>> {
    let mut content = serde_json::Map::new();
    for r in services.receipts.changes(room, since, upto)? {
        if r.kind == "m.read.private" && r.user != user_id {
            continue;
        }
        let mut entry = json!({ "ts": r.ts });
        if !r.thread.is_empty() {
            entry["thread_id"] = r.thread.clone().into();
        }
        let by_event = content
            .entry(r.event_id.to_string())
            .or_insert_with(|| json!({}));
        by_event[r.kind.as_str()][r.user.as_str()] = entry;
    }
    Ok((!content.is_empty()).then(|| json!({ "type": "m.receipt", "content": content })))
}

/// Member counts and heroes, for clients that name rooms from their members.
fn summary(services: &Services, room: ShortId, user: ShortId) -> Result<RoomSummary> {
    let mut s = RoomSummary::new();
    let mut joined = 0u32;
    let mut invited = 0u32;
    let mut heroes: Vec<OwnedUserId> = Vec::new();
    for (member, m) in services.rooms.membership.members(room)? {
        match m.membership() {
            MembershipState::Join => joined += 1,
            MembershipState::Invite => invited += 1,
            _ => continue,
        }
        if member != user && heroes.len() < 5 {
            heroes.push(services.rooms.events.user_id_of(member)?);
        }
    }
    s.joined_member_count = Some(UInt::from(joined));
    s.invited_member_count = Some(UInt::from(invited));
    s.heroes = heroes;
    Ok(s)
}

/// Stripped state for an invitee or knocker: a few room details and their own member event.
pub(crate) fn stripped_state<T>(
    services: &Services,
    user: ShortId,
    room: ShortId,
    membership: Membership,
) -> Result<Vec<Raw<T>>> {
    let rooms = &services.rooms;
    let mut out = Vec::new();
    // A room we are not in: what the inviting server told us about it.
    if let Some(remote) = rooms.membership.invite_state(user, room)? {
        for e in remote {
            out.push(raw(&e)?);
        }
    }
    let mut push = |pdu: crate::service::rooms::pdu::Pdu| -> Result<()> {
        out.push(raw(&json!({
            "type": pdu.kind.to_string(),
            "state_key": pdu.state_key.clone().unwrap_or_default(),
            "content": pdu.content_value(),
            "sender": pdu.sender,
        }))?);
        Ok(())
    };
    for kind in STRIPPED_STATE {
        if let Some(pdu) = rooms
            .state
            .current_state_pdu(room, &StateEventType::from(*kind), "")?
        {
            push(pdu)?;
        }
    }
    if let Some(pdu) = rooms.events.pdu(membership.event)? {
        push(pdu)?;
    }
    Ok(out)
}
