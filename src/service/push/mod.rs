//! Push rules and notification counts. Each user's rules live in their `m.push_rules` account data
//! (the spec's server defaults until they change one). Every event is evaluated for each local
//! member as it is committed (see [`rooms::Outbox`]); notifying events are recorded per
//! (user, room) in the event's own batch so /sync can count those after the user's read receipt,
//! per thread too, and /notifications can list them. Users with pushers (see [`pushers`]) get
//! rows in each pusher's delivery queue in that same batch (see [`delivery`]).

mod delivery;
mod pushers;

pub use delivery::QueuedPush;
pub use pushers::{StoredPusher, NOTIFY_PATH};

use std::{collections::HashMap, sync::Arc, time::Instant};

use parking_lot::{Mutex, RwLock};
use ruma::{
    events::{room::member::MembershipState, StateEventType},
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    serde::Raw,
    CanonicalJsonObject, OwnedUserId, RoomId, UInt, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as JsonValue};

use crate::{
    config,
    error::{Error, Result},
    service::{
        account_data,
        media::preview::AddressPolicy,
        receipts, rooms,
        stream::{EphemeralListener, EphemeralScope, Stream},
    },
    storage::{tables, Batch, Db, ShortId, Table},
};

/// A local member of a room with their push condition context.
struct MemberContext {
    user: ShortId,
    ctx: PushConditionRoomCtx,
    /// What names the member in an event (user ID, display name, localpart), lowercased; `None`
    /// when one of them would be escaped in JSON, so that a plain search could miss it.
    needles: Option<[String; 3]>,
}

/// Local members of a room with their push condition contexts.
type MemberContexts = Vec<MemberContext>;

/// The lowercased strings that name a user, when they can be found verbatim in serialised JSON.
fn needles(user_id: &UserId, display_name: &str) -> Option<[String; 3]> {
    let plain = |s: &str| !s.is_empty() && !s.chars().any(|c| c == '"' || c == '\\' || c < ' ');
    let out = [
        user_id.as_str().to_lowercase(),
        display_name.to_lowercase(),
        user_id.localpart().to_lowercase(),
    ];
    out.iter().all(|s| plain(s)).then_some(out)
}

/// Rooms whose member contexts are kept; beyond this the cache starts over.
const CONTEXT_CACHE: usize = 1_000;

/// Rulesets kept parsed in memory; beyond this the cache starts over.
const RULESET_CACHE: usize = 10_000;

#[derive(Serialize, Deserialize)]
pub struct StoredNotification {
    pub actions: Vec<Action>,
    pub highlight: bool,
    /// The thread root, for an event in a thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    pub ts: u64,
}

/// A listed notification: room, event position, the record, whether it was read.
pub type Listed = (ShortId, ShortId, StoredNotification, bool);

/// Unread counts of one room for one user.
#[derive(Default, Debug)]
pub struct Counts {
    pub notifications: u64,
    pub highlights: u64,
    /// Per thread root, when the client asked for them separately.
    pub threads: HashMap<String, (u64, u64)>,
}

pub struct Service {
    db: Db,
    notifications: Table<tables::Notifications<StoredNotification>>,
    rooms: Arc<rooms::Service>,
    account_data: Arc<account_data::Service>,
    receipts: Arc<receipts::Service>,
    stream: Arc<Stream>,
    config: config::Push,
    /// Which gateway addresses may be contacted (`push.ip_range_*`).
    policy: AddressPolicy,
    pushers: Table<tables::Pushers<StoredPusher>>,
    queue: Table<tables::PushQueue<QueuedPush>>,
    /// Every pusher, as stored (see [`pushers`]).
    index: RwLock<pushers::Index>,
    /// Serialises changes to pushers (rare), so the index follows the table.
    pushers_write: tokio::sync::Mutex<()>,
    /// Queue rows written or being written: (position, pusher), woken once published.
    pending_wakes: Mutex<Vec<(u64, u64)>>,
    wakes: tokio::sync::mpsc::UnboundedSender<u64>,
    wakes_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<u64>>>,
    /// Per user: the unread count last sent (see `delivery::Service::badge`).
    badges: Mutex<HashMap<ShortId, delivery::Badge>>,
    /// Per pusher: its gateway's client and when it was made.
    clients: Mutex<HashMap<u64, (reqwest::Client, Instant)>>,
    /// Parsed rulesets, and whether each is the server's default (the user never changed one).
    rulesets: Mutex<HashMap<ShortId, (Arc<Ruleset>, bool)>>,
    /// Per room: the state group its members' push contexts were read at, and the contexts.
    contexts: Mutex<HashMap<ShortId, (u64, Arc<MemberContexts>)>>,
    /// The position at which each (user, room)'s counts last grew, so /sync resends the room.
    counts_changed: Mutex<HashMap<(ShortId, ShortId), u64>>,
}

/// What the service depends on.
pub struct Deps {
    pub rooms: Arc<rooms::Service>,
    pub account_data: Arc<account_data::Service>,
    pub receipts: Arc<receipts::Service>,
    pub stream: Arc<Stream>,
}

impl Service {
    pub fn new(db: Db, deps: Deps, config: &config::Push) -> Result<Self> {
        let (wakes, wakes_rx) = Self::wake_channel();
        let service = Self {
            notifications: Table::new(&db),
            pushers: Table::new(&db),
            queue: Table::new(&db),
            db,
            rooms: deps.rooms,
            account_data: deps.account_data,
            receipts: deps.receipts,
            stream: deps.stream,
            policy: AddressPolicy::from_lists(&config.ip_range_deny, &config.ip_range_allow),
            config: config.clone(),
            index: RwLock::new(pushers::Index::default()),
            pushers_write: tokio::sync::Mutex::new(()),
            pending_wakes: Mutex::new(Vec::new()),
            wakes,
            wakes_rx: Mutex::new(Some(wakes_rx)),
            badges: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            rulesets: Mutex::new(HashMap::new()),
            contexts: Mutex::new(HashMap::new()),
            counts_changed: Mutex::new(HashMap::new()),
        };
        service.load_pushers()?;
        Ok(service)
    }

    /// A user's push rules: stored, or the server defaults.
    pub fn ruleset(&self, user: ShortId, user_id: &UserId) -> Result<Arc<Ruleset>> {
        Ok(self.ruleset_of(user, user_id)?.0)
    }

    /// A user's push rules, and whether they are the server's defaults.
    fn ruleset_of(&self, user: ShortId, user_id: &UserId) -> Result<(Arc<Ruleset>, bool)> {
        if let Some(r) = self.rulesets.lock().get(&user) {
            return Ok(r.clone());
        }
        let entry = match self
            .account_data
            .get(user, account_data::GLOBAL, "m.push_rules")?
            .and_then(|c| c.get("global").cloned())
        {
            Some(global) => (
                Arc::new(
                    serde_json::from_value(global)
                        .map_err(|e| Error::internal(format!("stored push rules: {e}")))?,
                ),
                false,
            ),
            None => (Arc::new(Ruleset::server_default(user_id)), true),
        };
        let mut cache = self.rulesets.lock();
        if cache.len() >= RULESET_CACHE {
            cache.clear();
        }
        cache.insert(user, entry.clone());
        Ok(entry)
    }

    /// Stores a user's changed rules (they reach the user's clients as account data).
    pub async fn set_ruleset(&self, user: ShortId, ruleset: Ruleset) -> Result<()> {
        let content = json!({ "global": ruleset });
        self.account_data
            .set(user, account_data::GLOBAL, "m.push_rules", Some(&content))
            .await?;
        self.rulesets
            .lock()
            .insert(user, (Arc::new(ruleset), false));
        Ok(())
    }

    /// The push context of each local member of a room (display name, member count, power
    /// levels), cached per room until its state changes: message after message in a busy room
    /// reads none of it again.
    fn member_contexts(&self, room: ShortId, room_id: &RoomId) -> Result<Arc<MemberContexts>> {
        let state_group = self
            .rooms
            .state
            .meta(room)?
            .map(|m| m.state_group)
            .unwrap_or_default();
        if let Some((group, cached)) = self.contexts.lock().get(&room) {
            if *group == state_group {
                return Ok(cached.clone());
            }
        }
        let server = self.rooms.server_name().clone();
        let members: Vec<(ShortId, OwnedUserId)> = self
            .rooms
            .membership
            .members(room)?
            .into_iter()
            .filter(|(_, m)| m.membership() == MembershipState::Join)
            .map(|(u, _)| Ok((u, self.rooms.events.user_id_of(u)?)))
            .collect::<Result<Vec<_>>>()?;
        let joined = members.len();
        let power_levels: Option<PushConditionPowerLevelsCtx> =
            self.rooms.current_power_levels(room)?.map(Into::into);
        let mut contexts = Vec::new();
        for (user, user_id) in members {
            if user_id.server_name() != server {
                continue;
            }
            let name = self
                .rooms
                .state
                .current_state_pdu(room, &StateEventType::RoomMember, user_id.as_str())?
                .and_then(|p| {
                    p.content_value()
                        .get("displayname")
                        .and_then(JsonValue::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| user_id.localpart().to_owned());
            let mut ctx = PushConditionRoomCtx::new(
                room_id.to_owned(),
                UInt::new_saturating(joined as u64),
                user_id,
                name,
            );
            ctx.power_levels = power_levels.clone();
            contexts.push(MemberContext {
                user,
                needles: needles(&ctx.user_id, &ctx.user_display_name),
                ctx,
            });
        }
        let contexts = Arc::new(contexts);
        let mut cache = self.contexts.lock();
        if cache.len() >= CONTEXT_CACHE {
            cache.clear();
        }
        cache.insert(room, (state_group, contexts.clone()));
        Ok(contexts)
    }

    /// Evaluates events about to be committed for the room's local members and adds their
    /// notifications to the events' batch (see [`rooms::Outbox`]).
    fn evaluate_in(
        &self,
        batch: &mut Batch,
        room: ShortId,
        room_id: &RoomId,
        events: &[(ShortId, &CanonicalJsonObject)],
    ) -> Result<()> {
        self.invites_in(batch, room, room_id, events)?;
        let contexts = self.member_contexts(room, room_id)?;
        if contexts.is_empty() {
            return Ok(());
        }
        let mut rulesets = Vec::with_capacity(contexts.len());
        for m in contexts.iter() {
            rulesets.push(self.ruleset_of(m.user, &m.ctx.user_id)?);
        }
        let mut notified = Vec::new();
        for (event, object) in events {
            let json = serde_json::to_value(object).map_err(Error::internal)?;
            let sender = json.get("sender").and_then(JsonValue::as_str).unwrap_or("");
            let encrypted =
                json.get("type").and_then(JsonValue::as_str) == Some("m.room.encrypted");
            let ts = json
                .get("origin_server_ts")
                .and_then(JsonValue::as_u64)
                .unwrap_or_default();
            let thread = json
                .pointer("/content/m.relates_to")
                .filter(|r| r.get("rel_type").and_then(JsonValue::as_str) == Some("m.thread"))
                .and_then(|r| r.get("event_id"))
                .and_then(JsonValue::as_str)
                .map(str::to_owned);
            // Flattened once per event, not once per member: most of the cost of a match.
            let raw: Raw<JsonValue> =
                Raw::from_json(serde_json::value::to_raw_value(&json).map_err(Error::internal)?);
            let flat = FlattenedJson::from_raw(&raw);
            // The server's default rules differ between users only where the event names them
            // (mentions, display name, localpart, an invite's state key). Members on those rules
            // whom the event does not name at all get the same actions: evaluated once.
            let text = raw.json().get().to_lowercase();
            let mut unnamed: Option<Option<Vec<Action>>> = None;
            for (m, (ruleset, default)) in contexts.iter().zip(&rulesets) {
                if m.ctx.user_id.as_str() == sender {
                    continue;
                }
                let shared = *default
                    && m.needles
                        .as_ref()
                        .is_some_and(|n| !n.iter().any(|s| text.contains(s.as_str())));
                let actions = if shared {
                    unnamed
                        .get_or_insert_with(|| first_match(ruleset, &flat, &m.ctx))
                        .clone()
                } else {
                    first_match(ruleset, &flat, &m.ctx)
                };
                let Some(actions) = actions else {
                    continue;
                };
                if !actions.iter().any(Action::should_notify) {
                    continue;
                }
                self.queue_push_in(
                    batch,
                    m.user,
                    *event,
                    &QueuedPush::event(room, *event, &actions, encrypted),
                );
                let record = StoredNotification {
                    highlight: actions.iter().any(Action::is_highlight),
                    actions,
                    thread: thread.clone(),
                    ts,
                };
                self.notifications
                    .put_in(batch, (m.user, room, *event), &record);
                notified.push((m.user, *event));
            }
        }
        // Marked now, before the write: a marker counts only once the stream has passed its
        // position (see `counts_changed_between`), so one whose write failed does no harm.
        let mut changed = self.counts_changed.lock();
        if changed.len() > 100_000 {
            changed.clear();
        }
        for (user, event) in notified {
            let mark = changed.entry((user, room)).or_default();
            *mark = (*mark).max(event);
        }
        Ok(())
    }

    /// An invite of a local user is evaluated for them (they are not a member yet, so the
    /// members' evaluation misses them): a phone rings for `.m.rule.invite_for_me`. It is queued
    /// for their pushers only, not counted as unread in a room they have not joined.
    fn invites_in(
        &self,
        batch: &mut Batch,
        room: ShortId,
        room_id: &RoomId,
        events: &[(ShortId, &CanonicalJsonObject)],
    ) -> Result<()> {
        for (event, object) in events {
            let str_field = |name: &str| object.get(name).and_then(|v| v.as_str());
            let membership = object
                .get("content")
                .and_then(|c| c.as_object())
                .and_then(|c| c.get("membership"))
                .and_then(|m| m.as_str());
            if str_field("type") != Some("m.room.member") || membership != Some("invite") {
                continue;
            }
            let Some(invitee) = str_field("state_key").and_then(|k| UserId::parse(k).ok()) else {
                continue;
            };
            if invitee.server_name() != self.rooms.server_name() {
                continue;
            }
            let Some(user) = self.rooms.events.user_short(&invitee)? else {
                continue;
            };
            if self.index.read().of_user(user).is_empty() {
                continue;
            }
            let (ruleset, _) = self.ruleset_of(user, &invitee)?;
            let joined = self
                .rooms
                .membership
                .members(room)?
                .iter()
                .filter(|(_, m)| m.membership() == MembershipState::Join)
                .count();
            let name = invitee.localpart().to_owned();
            let ctx = PushConditionRoomCtx::new(
                room_id.to_owned(),
                UInt::new_saturating(joined as u64),
                invitee,
                name,
            );
            let json = serde_json::to_value(object).map_err(Error::internal)?;
            let raw: Raw<JsonValue> =
                Raw::from_json(serde_json::value::to_raw_value(&json).map_err(Error::internal)?);
            let flat = FlattenedJson::from_raw(&raw);
            if let Some(actions) = first_match(&ruleset, &flat, &ctx) {
                if actions.iter().any(Action::should_notify) {
                    let row = QueuedPush::event(room, *event, &actions, false);
                    self.queue_push_in(batch, user, *event, &row);
                }
            }
        }
        Ok(())
    }

    /// Whether the user's counts in the room grew at a position in (since, upto].
    pub fn counts_changed_between(
        &self,
        user: ShortId,
        room: ShortId,
        since: u64,
        upto: u64,
    ) -> bool {
        self.counts_changed
            .lock()
            .get(&(user, room))
            .is_some_and(|p| *p > since && *p <= upto)
    }

    /// The position of the user's latest read receipt (unthreaded, or on `thread`), public or
    /// private.
    fn read_up_to(&self, room: ShortId, user: ShortId, thread: &str) -> Result<u64> {
        let mut pos = 0;
        for kind in ["m.read", "m.read.private"] {
            for t in ["", thread] {
                if let Some(event) = self.receipts.get(room, user, kind, t)? {
                    if let Some(short) = self.rooms.events.event_short(&event)? {
                        pos = pos.max(short);
                    }
                }
            }
        }
        Ok(pos)
    }

    /// Unread notification and highlight counts after the user's read receipts; with
    /// `by_thread`, threads are counted apart (against their own receipts) from the main timeline.
    pub fn counts(&self, user: ShortId, room: ShortId, by_thread: bool) -> Result<Counts> {
        // Nothing at or below the unthreaded receipt is unread, in any thread.
        let floor = self.read_up_to(room, user, "")?;
        let main_read = self.read_up_to(room, user, "main")?;
        let mut counts = Counts::default();
        let mut thread_read: HashMap<String, u64> = HashMap::new();
        let rows = self.notifications.range(
            (user, room, floor.saturating_add(1)),
            (user, room.saturating_add(1), 0),
        );
        for row in rows {
            let ((_, _, pos), n) = row?;
            match (&n.thread, by_thread) {
                (Some(root), true) => {
                    let read = match thread_read.get(root) {
                        Some(r) => *r,
                        None => {
                            let r = self.read_up_to(room, user, root)?;
                            thread_read.insert(root.clone(), r);
                            r
                        }
                    };
                    if pos > read {
                        let e = counts.threads.entry(root.clone()).or_default();
                        e.0 += 1;
                        e.1 += u64::from(n.highlight);
                    }
                }
                _ => {
                    if pos > main_read {
                        counts.notifications += 1;
                        counts.highlights += u64::from(n.highlight);
                    }
                }
            }
        }
        Ok(counts)
    }

    /// A user's notifications, newest first, from before `from` (a position), at most `limit`;
    /// with the room and whether it was read. The next `from` is returned when there are more.
    pub fn list(
        &self,
        user: ShortId,
        from: Option<u64>,
        limit: usize,
        only_highlight: bool,
    ) -> Result<(Vec<Listed>, Option<u64>)> {
        let mut all = Vec::new();
        for row in self.notifications.scan((user,)) {
            let ((_, room, pos), n) = row?;
            if from.is_some_and(|f| pos >= f) {
                continue;
            }
            if only_highlight && !n.highlight {
                continue;
            }
            all.push((room, pos, n));
        }
        all.sort_by_key(|n| std::cmp::Reverse(n.1));
        let more = all.len() > limit;
        all.truncate(limit);
        let next = if more {
            all.last().map(|(_, p, _)| *p)
        } else {
            None
        };
        let mut out = Vec::with_capacity(all.len());
        for (room, pos, n) in all {
            let read = pos <= self.read_up_to(room, user, n.thread.as_deref().unwrap_or("main"))?;
            out.push((room, pos, n, read));
        }
        Ok((out, next))
    }
}

impl rooms::Outbox for Service {
    fn queue_in(
        &self,
        batch: &mut Batch,
        room: ShortId,
        room_id: &RoomId,
        events: &[(ShortId, &CanonicalJsonObject)],
    ) -> Result<()> {
        self.evaluate_in(batch, room, room_id, events)
    }

    fn written(&self, _room: ShortId) {
        self.poke();
    }
}

impl EphemeralListener for Service {
    /// Read receipts: a badge update for the reader's pushers.
    fn ephemeral_in(
        &self,
        batch: &mut Batch,
        pos: u64,
        scope: EphemeralScope<'_>,
        event: &JsonValue,
    ) -> Result<bool> {
        self.receipt_in(batch, pos, &scope, event)
    }

    fn written(&self) {
        self.poke();
    }
}

/// The actions of the first rule of `ruleset` that applies, as `Ruleset::get_actions` finds them
/// but on an event flattened once for all members. Rule matching is async in ruma only for the
/// thread-subscription callback, which this context does not set, so it completes at once.
fn first_match(
    ruleset: &Ruleset,
    event: &FlattenedJson,
    ctx: &PushConditionRoomCtx,
) -> Option<Vec<Action>> {
    use futures_util::FutureExt;
    for rule in ruleset {
        match rule.applies(event, ctx).now_or_never() {
            Some(true) => return Some(rule.actions().to_vec()),
            Some(false) => {}
            None => {
                tracing::warn!(rule_id = rule.rule_id(), "push rule needs async evaluation");
            }
        }
    }
    None
}
