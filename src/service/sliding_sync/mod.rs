//! Simplified sliding sync (MSC4186, `/_matrix/client/unstable/org.matrix.simplified_msc3575/sync`),
//! what Element X and matrix-sdk-ui speak.
//!
//! A client keeps *connections* (per device, named by `conn_id`). Each response hands out a `pos`
//! naming a snapshot of what that connection has been sent: the stream position it has
//! everything up to, and per room the position its timeline was sent to, with the timeline limit
//! and `required_state` it was sent with. A request with a `pos` is answered relative to that
//! snapshot, so a room already sent is only sent again when something in it changed, and then
//! only what changed; a retried request (the SDK cancels and resends with the same `pos`) is
//! answered from the same snapshot. Snapshots live in memory, bounded per device and in total,
//! and expire when idle; an unknown `pos` gets `M_UNKNOWN_POS` and the client starts over.
//!
//! Rooms are listed by their `bump_stamp` (the position of their latest message-like event,
//! see [`rooms::timeline::BUMP_TYPES`]), newest first.

mod extensions;
mod room;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{
    api::client::sync::sync_events::v5,
    events::{room::member::MembershipState, StateEventType},
    OwnedRoomId, RoomId, UInt, UserId,
};

use super::{rooms::Membership, sync::Since, Services};
use crate::{
    error::{custom_kind, Error, Result},
    storage::ShortId,
};

/// Connections kept per device (the SDK opens two or three); the least recently used goes first.
const MAX_PER_DEVICE: usize = 10;
/// Connections kept in all; the least recently used goes first.
const MAX_CONNECTIONS: usize = 20_000;
/// A connection unused this long is forgotten (its client starts over on `M_UNKNOWN_POS`).
const IDLE_EXPIRY: Duration = Duration::from_secs(6 * 3600);
/// Most timeline events per room a request may ask for.
const MAX_TIMELINE_LIMIT: u64 = 1000;
/// Most lists per request, ranges per list, and longest list name.
const MAX_LISTS: usize = 100;
const MAX_RANGES: usize = 100;
const MAX_LIST_NAME: usize = 64;

/// What a connection has been sent of one room.
#[derive(Clone, Debug)]
struct RoomSent {
    /// The room's timeline was sent up to this position (exclusive lower bound of the next one).
    upto: u64,
    timeline_limit: u64,
    required_state: Arc<RequiredState>,
    /// Members sent because of `$LAZY`, so they are not sent again.
    lazy: Arc<BTreeSet<String>>,
    /// The user's membership when it was sent: a join after an invite is sent afresh.
    membership: MembershipState,
}

/// A snapshot of what a connection has been sent.
#[derive(Clone, Debug, Default)]
struct ConnState {
    /// The stream position and typing serial everything was sent up to; `None` before the first
    /// response.
    since: Option<Since>,
    rooms: HashMap<ShortId, Arc<RoomSent>>,
    /// Each list's count as last sent.
    lists: BTreeMap<String, u64>,
    /// Per room: the position and typing serial its extensions (receipts, typing, room account
    /// data) were sent up to. A room out of the window keeps its own, so what changed while it
    /// was away is sent when it comes back.
    extensions: Arc<HashMap<ShortId, Since>>,
}

struct Connection {
    /// Snapshots by `pos`, oldest first: the one the client last used and the ones made since.
    versions: Vec<(u64, Arc<ConnState>)>,
    last_used: Instant,
}

type ConnKey = (ShortId, String, String);

/// The connections of every device.
pub struct Connections {
    conns: Mutex<HashMap<ConnKey, Connection>>,
    /// Positions are unique across connections and restarts (seeded from the clock), so a `pos`
    /// from before a restart or of another connection never names a snapshot.
    next_pos: AtomicU64,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            conns: Mutex::new(HashMap::new()),
            next_pos: AtomicU64::new(crate::util::now_ms().saturating_mul(1000)),
        }
    }
}

fn unknown_pos() -> Error {
    Error::matrix(
        custom_kind("M_UNKNOWN_POS"),
        "Unknown position: start a new connection without `pos`",
    )
}

impl Connections {
    /// The snapshot a request continues from: a fresh one without `pos` (which also forgets the
    /// connection's earlier snapshots), else the one `pos` names. Using a `pos` drops the
    /// snapshots older than it: the client has moved past them.
    fn resume(&self, key: &ConnKey, pos: Option<&str>) -> Result<(Option<u64>, Arc<ConnState>)> {
        let mut conns = self.conns.lock();
        let now = Instant::now();
        let Some(pos) = pos else {
            conns.remove(key);
            return Ok((None, Arc::new(ConnState::default())));
        };
        let pos: u64 = pos.parse().map_err(|_| unknown_pos())?;
        let conn = conns.get_mut(key).ok_or_else(unknown_pos)?;
        if now.duration_since(conn.last_used) > IDLE_EXPIRY {
            conns.remove(key);
            return Err(unknown_pos());
        }
        let at = conn
            .versions
            .iter()
            .position(|(p, _)| *p == pos)
            .ok_or_else(unknown_pos)?;
        conn.versions.drain(..at);
        conn.last_used = now;
        Ok((Some(pos), conn.versions[0].1.clone()))
    }

    /// Records the snapshot a response leaves the connection in; returns its `pos`.
    fn record(&self, key: &ConnKey, from: Option<u64>, state: ConnState) -> u64 {
        let pos = self.next_pos.fetch_add(1, Ordering::SeqCst) + 1;
        let mut conns = self.conns.lock();
        let now = Instant::now();
        if !conns.contains_key(key) {
            self.make_room(&mut conns, key);
        }
        let conn = conns.entry(key.clone()).or_insert_with(|| Connection {
            versions: Vec::new(),
            last_used: now,
        });
        // A fresh start, or a continuation of a snapshot that a newer request already dropped:
        // keep only what this response leads to, next to the snapshot it came from.
        if from.is_none() {
            conn.versions.clear();
        }
        // The snapshot requested and a few answers made from it (concurrent or retried requests
        // with the same `pos`); older answers are dropped.
        while conn.versions.len() >= 4 {
            conn.versions.remove(1);
        }
        conn.versions.push((pos, Arc::new(state)));
        conn.last_used = now;
        pos
    }

    /// Makes room for one more connection of `key`'s device, and in all.
    fn make_room(&self, conns: &mut HashMap<ConnKey, Connection>, key: &ConnKey) {
        let now = Instant::now();
        conns.retain(|_, c| now.duration_since(c.last_used) <= IDLE_EXPIRY);
        let device: Vec<(ConnKey, Instant)> = conns
            .iter()
            .filter(|((u, d, _), _)| *u == key.0 && *d == key.1)
            .map(|(k, c)| (k.clone(), c.last_used))
            .collect();
        if device.len() >= MAX_PER_DEVICE {
            if let Some((oldest, _)) = device.iter().min_by_key(|(_, t)| *t) {
                conns.remove(oldest);
            }
        }
        if conns.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = conns
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone())
            {
                conns.remove(&oldest);
            }
        }
    }

    /// Open connections (for metrics and tests).
    pub fn len(&self) -> usize {
        self.conns.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request, as the handler parsed it.
pub struct Request<'a> {
    pub user_id: &'a UserId,
    pub user: ShortId,
    pub device_id: &'a str,
    pub body: &'a v5::Request,
    pub timeout: Duration,
}

/// A response, and the rooms whose timelines were expanded (`unstable_expanded_timeline`, which
/// ruma's type has no field for).
pub struct Answer {
    pub response: v5::Response,
    pub expanded: Vec<OwnedRoomId>,
}

/// The normalised `required_state` of a room: what state to send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RequiredState {
    /// `["*", ...]`: everything.
    all: bool,
    /// `[type, "*"]`: every state key of these types.
    types: BTreeSet<String>,
    /// `[type, key]`, with `$ME` replaced by the user's ID.
    pairs: BTreeSet<(String, String)>,
    /// `["m.room.member", "$LAZY"]`: the members of the timeline's senders.
    lazy: bool,
}

impl RequiredState {
    fn from_request(entries: &[(StateEventType, String)], user_id: &UserId) -> Self {
        let mut out = Self::default();
        for (kind, key) in entries {
            let kind = kind.to_string();
            if kind == "*" {
                out.all = true;
            } else if key == "*" {
                out.types.insert(kind);
            } else if kind == "m.room.member" && key == "$LAZY" {
                out.lazy = true;
            } else if key == "$ME" {
                out.pairs.insert((kind, user_id.to_string()));
            } else {
                out.pairs.insert((kind, key.clone()));
            }
        }
        out
    }

    fn merge(&mut self, other: &Self) {
        self.all |= other.all;
        self.types.extend(other.types.iter().cloned());
        self.pairs.extend(other.pairs.iter().cloned());
        self.lazy |= other.lazy;
    }

    fn wants(&self, kind: &str, key: &str) -> bool {
        self.all
            || self.types.contains(kind)
            || self.pairs.contains(&(kind.to_owned(), key.to_owned()))
    }

    /// Whether it asks for whole types (so the room's state must be walked).
    fn walks(&self) -> bool {
        self.all || !self.types.is_empty()
    }

    /// What `self` asks for that `old` did not: the entries to fetch now.
    fn added_since(&self, old: &Self) -> Option<Self> {
        if old.all {
            return None;
        }
        let added = Self {
            all: self.all,
            types: self.types.difference(&old.types).cloned().collect(),
            pairs: self
                .pairs
                .iter()
                .filter(|(k, s)| !old.wants(k, s))
                .cloned()
                .collect(),
            lazy: self.lazy && !old.lazy,
        };
        (added != Self::default()).then_some(added)
    }
}

/// How a room is to be sent: the largest timeline and the union of the state asked for by the
/// lists it is in and its subscription.
#[derive(Clone, Debug)]
struct RoomConfig {
    timeline_limit: u64,
    required_state: RequiredState,
    /// The lists (by name) whose ranges it is in, and whether it is subscribed to.
    lists: BTreeSet<String>,
    subscribed: bool,
}

/// A room the user has a membership in, as the lists see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub room: ShortId,
    pub membership: Membership,
    pub stamp: u64,
}

fn list_count(count: u64) -> v5::response::List {
    let mut list = v5::response::List::default();
    list.count = UInt::new_saturating(count);
    list
}

fn check_request(body: &v5::Request) -> Result<()> {
    if body.lists.len() > MAX_LISTS {
        return Err(Error::invalid_param(format!(
            "At most {MAX_LISTS} lists per request"
        )));
    }
    let limit_ok = |l: UInt| u64::from(l) <= MAX_TIMELINE_LIMIT;
    for (name, list) in &body.lists {
        if name.is_empty() || name.len() > MAX_LIST_NAME {
            return Err(Error::invalid_param(format!(
                "A list name must have 1 to {MAX_LIST_NAME} characters"
            )));
        }
        if list.ranges.len() > MAX_RANGES {
            return Err(Error::invalid_param(format!(
                "List {name}: at most {MAX_RANGES} ranges"
            )));
        }
        for (start, end) in &list.ranges {
            if start > end {
                return Err(Error::invalid_param(format!(
                    "List {name}: range [{start}, {end}] ends before it starts"
                )));
            }
        }
        if !limit_ok(list.room_details.timeline_limit) {
            return Err(Error::invalid_param(format!(
                "List {name}: timeline_limit is above {MAX_TIMELINE_LIMIT}"
            )));
        }
    }
    for (room, sub) in &body.room_subscriptions {
        if !limit_ok(sub.timeline_limit) {
            return Err(Error::invalid_param(format!(
                "Subscription {room}: timeline_limit is above {MAX_TIMELINE_LIMIT}"
            )));
        }
    }
    Ok(())
}

/// Answers a sliding sync request, waiting up to the timeout for something new when it
/// continues a connection.
pub async fn sync(services: &Services, req: Request<'_>) -> Result<Answer> {
    check_request(req.body)?;
    let conn_id = req.body.conn_id.clone().unwrap_or_default();
    let key: ConnKey = (req.user, req.device_id.to_owned(), conn_id);
    let connections = &services.sliding_sync;
    let (from, base) = connections.resume(&key, req.body.pos.as_deref())?;
    let _in_flight =
        super::sync::presence_in_flight(services, req.user, &req.body.set_presence).await?;
    let deadline = tokio::time::Instant::now() + req.timeout;
    // Subscribed before reading, so a change between the read and the wait still wakes us.
    let mut wake = services.stream.subscribe(req.user);
    loop {
        let upto = Since {
            pos: services.stream.current(),
            typing: services.typing.serial(),
        };
        let (mut answer, state, has_data) = build(services, &req, &base, upto).await?;
        let may_wait = from.is_some() && !req.timeout.is_zero();
        if has_data || !may_wait || tokio::time::Instant::now() >= deadline {
            answer.response.pos = connections.record(&key, from, state).to_string();
            return Ok(answer);
        }
        if tokio::time::timeout_at(deadline, wake.changed())
            .await
            .is_err()
        {
            // Nothing came: an answer with what there is (the lists' counts), from now.
            let upto = Since {
                pos: services.stream.current(),
                typing: services.typing.serial(),
            };
            let (mut answer, state, _) = build(services, &req, &base, upto).await?;
            answer.response.pos = connections.record(&key, from, state).to_string();
            return Ok(answer);
        }
    }
}

/// The rooms a user has a membership in that the lists may show: joined, invited, knocked,
/// banned, and left since the connection's snapshot (so the client learns of the leave).
fn candidates(
    services: &Services,
    req: &Request<'_>,
    base: &ConnState,
    upto: u64,
) -> Result<Vec<Candidate>> {
    let rooms = &services.rooms;
    let since = base.since.map(|s| s.pos);
    let mut out = Vec::new();
    for (room, membership) in rooms.membership.memberships(req.user)? {
        // A membership written after the published position shows up in a later response.
        if membership.event > upto {
            continue;
        }
        let stamp = match membership.membership() {
            MembershipState::Join => rooms.timeline.bump_stamp(room)?.unwrap_or(membership.event),
            MembershipState::Invite | MembershipState::Knock | MembershipState::Ban => {
                membership.event
            }
            MembershipState::Leave => {
                let newly = since.is_some_and(|s| membership.event > s);
                if !newly || rooms.membership.is_forgotten(req.user, room)? {
                    continue;
                }
                membership.event
            }
            _ => continue,
        };
        out.push(Candidate {
            room,
            membership,
            stamp,
        });
    }
    // Newest first; the room's short ID breaks ties so the order is stable.
    out.sort_by(|a, b| b.stamp.cmp(&a.stamp).then(b.room.cmp(&a.room)));
    Ok(out)
}

/// Facts about a room that list filters ask, read once per request.
#[derive(Default)]
struct Facts {
    encrypted: HashMap<ShortId, bool>,
    room_type: HashMap<ShortId, Option<String>>,
    dms: Option<BTreeSet<String>>,
}

impl Facts {
    fn encrypted(&mut self, services: &Services, room: ShortId) -> Result<bool> {
        if let Some(e) = self.encrypted.get(&room) {
            return Ok(*e);
        }
        let e = services
            .rooms
            .state
            .current_state_event(room, &StateEventType::RoomEncryption, "")?
            .is_some();
        self.encrypted.insert(room, e);
        Ok(e)
    }

    fn room_type(&mut self, services: &Services, room: ShortId) -> Result<Option<String>> {
        if let Some(t) = self.room_type.get(&room) {
            return Ok(t.clone());
        }
        let t = services
            .rooms
            .state
            .current_state_pdu(room, &StateEventType::RoomCreate, "")?
            .and_then(|p| p.content_field("type"))
            .and_then(|v| v.as_str().map(str::to_owned));
        self.room_type.insert(room, t.clone());
        Ok(t)
    }

    /// The rooms `m.direct` names.
    fn dms(&mut self, services: &Services, user: ShortId) -> Result<&BTreeSet<String>> {
        if self.dms.is_none() {
            let direct =
                services
                    .account_data
                    .get(user, super::account_data::GLOBAL, "m.direct")?;
            let mut set = BTreeSet::new();
            if let Some(serde_json::Value::Object(map)) = direct {
                for rooms in map.values() {
                    for r in rooms.as_array().into_iter().flatten() {
                        if let Some(r) = r.as_str() {
                            set.insert(r.to_owned());
                        }
                    }
                }
            }
            self.dms = Some(set);
        }
        Ok(self.dms.get_or_insert_with(BTreeSet::new))
    }
}

fn type_filter_matches(filter: &ruma::directory::RoomTypeFilter, room_type: Option<&str>) -> bool {
    use ruma::directory::RoomTypeFilter;
    match filter {
        RoomTypeFilter::Default => room_type.is_none(),
        other => other.as_str() == room_type,
    }
}

fn passes(
    services: &Services,
    req: &Request<'_>,
    facts: &mut Facts,
    filters: Option<&v5::request::ListFilters>,
    c: &Candidate,
    room_id: Option<&RoomId>,
) -> Result<bool> {
    let Some(f) = filters else {
        return Ok(true);
    };
    let m = c.membership.membership();
    if let Some(want) = f.is_invite {
        if want != (m == MembershipState::Invite) {
            return Ok(false);
        }
    }
    if let Some(want) = f.is_encrypted {
        if want != facts.encrypted(services, c.room)? {
            return Ok(false);
        }
    }
    if let Some(want) = f.is_dm {
        let is_dm = match room_id {
            Some(id) => facts.dms(services, req.user)?.contains(id.as_str()),
            None => false,
        };
        if want != is_dm {
            return Ok(false);
        }
    }
    if !f.room_types.is_empty() || !f.not_room_types.is_empty() {
        let t = facts.room_type(services, c.room)?;
        if !f.room_types.is_empty()
            && !f
                .room_types
                .iter()
                .any(|rt| type_filter_matches(rt, t.as_deref()))
        {
            return Ok(false);
        }
        if f.not_room_types
            .iter()
            .any(|rt| type_filter_matches(rt, t.as_deref()))
        {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn build(
    services: &Services,
    req: &Request<'_>,
    base: &ConnState,
    upto: Since,
) -> Result<(Answer, ConnState, bool)> {
    let body = req.body;
    let mut response = v5::Response::new(String::new());
    let mut state = ConnState {
        since: Some(upto),
        rooms: base.rooms.clone(),
        lists: BTreeMap::new(),
        extensions: base.extensions.clone(),
    };
    let mut has_data = false;

    // The lists: each filters the candidates (newest first) and shows its ranges.
    let candidates = candidates(services, req, base, upto.pos)?;
    let mut room_ids: HashMap<ShortId, OwnedRoomId> = HashMap::new();
    let mut room_id_of = |room: ShortId| -> Result<OwnedRoomId> {
        if let Some(id) = room_ids.get(&room) {
            return Ok(id.clone());
        }
        let id = services.rooms.events.room_id_of(room)?;
        room_ids.insert(room, id.clone());
        Ok(id)
    };
    let mut facts = Facts::default();
    let mut window: BTreeMap<ShortId, (Candidate, RoomConfig)> = BTreeMap::new();
    for (name, list) in &body.lists {
        let mut matching: Vec<&Candidate> = Vec::new();
        let by_dm = list.filters.as_ref().is_some_and(|f| f.is_dm.is_some());
        for c in &candidates {
            // Only the DM filter needs the room ID (m.direct names rooms by ID).
            let room_id = if by_dm {
                Some(room_id_of(c.room)?)
            } else {
                None
            };
            if passes(
                services,
                req,
                &mut facts,
                list.filters.as_ref(),
                c,
                room_id.as_deref(),
            )? {
                matching.push(c);
            }
        }
        let count = matching.len() as u64;
        if base.lists.get(name) != Some(&count) {
            has_data = true;
        }
        state.lists.insert(name.clone(), count);
        response.lists.insert(name.clone(), list_count(count));
        let rs = RequiredState::from_request(&list.room_details.required_state, req.user_id);
        let limit = u64::from(list.room_details.timeline_limit);
        for (start, end) in &list.ranges {
            let (start, end) = (u64::from(*start), u64::from(*end));
            for c in matching
                .iter()
                .skip(start as usize)
                .take((end - start).saturating_add(1) as usize)
            {
                let entry = window.entry(c.room).or_insert_with(|| {
                    (
                        **c,
                        RoomConfig {
                            timeline_limit: 0,
                            required_state: RequiredState::default(),
                            lists: BTreeSet::new(),
                            subscribed: false,
                        },
                    )
                });
                entry.1.timeline_limit = entry.1.timeline_limit.max(limit);
                entry.1.required_state.merge(&rs);
                entry.1.lists.insert(name.clone());
            }
        }
    }
    // Subscriptions: any room the user has a membership in, in a list's range or not.
    for (room_id, sub) in &body.room_subscriptions {
        let Some(room) = services.rooms.events.room_short(room_id)? else {
            continue;
        };
        let Some(membership) = services.rooms.membership.membership(req.user, room)? else {
            continue;
        };
        if membership.event > upto.pos {
            continue;
        }
        let candidate = candidates
            .iter()
            .find(|c| c.room == room)
            .copied()
            .unwrap_or(Candidate {
                room,
                membership,
                stamp: membership.event,
            });
        room_ids.insert(room, room_id.to_owned());
        let rs = RequiredState::from_request(&sub.required_state, req.user_id);
        let entry = window.entry(room).or_insert_with(|| {
            (
                candidate,
                RoomConfig {
                    timeline_limit: 0,
                    required_state: RequiredState::default(),
                    lists: BTreeSet::new(),
                    subscribed: true,
                },
            )
        });
        entry.1.subscribed = true;
        entry.1.timeline_limit = entry.1.timeline_limit.max(u64::from(sub.timeline_limit));
        entry.1.required_state.merge(&rs);
    }

    // The rooms: sent when new to the connection, or when something in them changed.
    let mut expanded = Vec::new();
    let mut sent_fresh: BTreeSet<ShortId> = BTreeSet::new();
    for (room, (candidate, config)) in &window {
        let room_id = match room_ids.get(room) {
            Some(id) => id.clone(),
            None => services.rooms.events.room_id_of(*room)?,
        };
        let previous = base.rooms.get(room).map(|r| r.as_ref());
        let Some(out) = room::room_data(
            services, req, base, upto, candidate, &room_id, config, previous,
        )?
        else {
            continue;
        };
        if out.fresh {
            sent_fresh.insert(*room);
        }
        if out.expanded {
            expanded.push(room_id.clone());
        }
        state.rooms.insert(*room, Arc::new(out.sent));
        response.rooms.insert(room_id, out.room);
        has_data = true;
    }

    // Extensions, over the rooms in the lists' ranges and the subscriptions.
    let scope = extensions::Scope {
        // Only joined rooms: an invitee, a knocker or someone banned or gone sees none of a
        // room's receipts, typing or account data.
        window: window
            .iter()
            .filter(|(_, (c, _))| c.membership.membership() == MembershipState::Join)
            .map(|(room, (_, config))| {
                let id = room_ids
                    .get(room)
                    .cloned()
                    .map(Ok)
                    .unwrap_or_else(|| services.rooms.events.room_id_of(*room));
                id.map(|id| (*room, id, config.lists.clone(), config.subscribed))
            })
            .collect::<Result<Vec<_>>>()?,
        fresh: sent_fresh,
    };
    if extensions::fill(services, req, base, upto, &scope, &mut response).await? {
        has_data = true;
    }
    if !scope.window.is_empty() {
        let mut seen = (*base.extensions).clone();
        for (room, ..) in &scope.window {
            seen.insert(*room, upto);
        }
        state.extensions = Arc::new(seen);
    }
    Ok((Answer { response, expanded }, state, has_data))
}
