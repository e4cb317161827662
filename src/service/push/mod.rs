//! Push rules and notification counts. Each user's rules live in their `m.push_rules` account data
//! (the spec's server defaults until they change one). Every event is evaluated for each local
//! member by a background worker, off the request path; notifying events are recorded per
//! (user, room) so /sync can count those after the user's read receipt, per thread too, and
//! /notifications can list them.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{
    events::{room::member::MembershipState, StateEventType},
    push::{Action, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    serde::Raw,
    OwnedUserId, UInt, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as JsonValue};
use tokio::sync::mpsc;

use crate::{
    error::{Error, Result},
    service::{account_data, receipts, rooms, stream::Stream},
    storage::{schema::key, Batch, Cf, Db, ShortId},
};

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
    stream: Arc<Stream>,
    rooms: Arc<rooms::Service>,
    account_data: Arc<account_data::Service>,
    receipts: Arc<receipts::Service>,
    rulesets: Mutex<HashMap<ShortId, Arc<Ruleset>>>,
    /// The position at which each (user, room)'s counts last grew, so /sync resends the room.
    counts_changed: Mutex<HashMap<(ShortId, ShortId), u64>>,
}

impl Service {
    pub fn new(
        db: Db,
        stream: Arc<Stream>,
        rooms: Arc<rooms::Service>,
        account_data: Arc<account_data::Service>,
        receipts: Arc<receipts::Service>,
    ) -> Self {
        Self {
            db,
            stream,
            rooms,
            account_data,
            receipts,
            rulesets: Mutex::new(HashMap::new()),
            counts_changed: Mutex::new(HashMap::new()),
        }
    }

    /// A user's push rules: stored, or the server defaults.
    pub fn ruleset(&self, user: ShortId, user_id: &UserId) -> Result<Arc<Ruleset>> {
        if let Some(r) = self.rulesets.lock().get(&user) {
            return Ok(r.clone());
        }
        let ruleset = match self
            .account_data
            .get(user, account_data::GLOBAL, "m.push_rules")?
            .and_then(|c| c.get("global").cloned())
        {
            Some(global) => serde_json::from_value(global)
                .map_err(|e| Error::internal(format!("stored push rules: {e}")))?,
            None => Ruleset::server_default(user_id),
        };
        let ruleset = Arc::new(ruleset);
        let mut cache = self.rulesets.lock();
        if cache.len() >= RULESET_CACHE {
            cache.clear();
        }
        cache.insert(user, ruleset.clone());
        Ok(ruleset)
    }

    /// Stores a user's changed rules (they reach the user's clients as account data).
    pub async fn set_ruleset(&self, user: ShortId, ruleset: Ruleset) -> Result<()> {
        let content = json!({ "global": ruleset });
        self.account_data
            .set(user, account_data::GLOBAL, "m.push_rules", Some(&content))
            .await?;
        self.rulesets.lock().insert(user, Arc::new(ruleset));
        Ok(())
    }

    /// Evaluates new events of a room for its local members and records their notifications.
    async fn evaluate(&self, room: ShortId, events: Vec<ShortId>) -> Result<()> {
        let Some(meta) = self.rooms.meta(room)? else {
            return Ok(());
        };
        let room_id = meta.room_id.clone();
        let server = self.rooms.server_name().clone();
        let members: Vec<(ShortId, OwnedUserId)> = self
            .rooms
            .members(room)?
            .into_iter()
            .filter(|(_, m)| m.membership() == MembershipState::Join)
            .map(|(u, _)| Ok((u, self.rooms.user_id_of(u)?)))
            .collect::<Result<Vec<_>>>()?;
        let joined = members.len();
        let local: Vec<&(ShortId, OwnedUserId)> = members
            .iter()
            .filter(|(_, u)| u.server_name() == server)
            .collect();
        if local.is_empty() {
            return Ok(());
        }
        // Per member, once per batch rather than once per event.
        let mut names: HashMap<ShortId, String> = HashMap::new();
        for (user, user_id) in &local {
            let name = self
                .rooms
                .current_state_pdu(room, &StateEventType::RoomMember, user_id.as_str())?
                .and_then(|p| {
                    p.content_value()
                        .get("displayname")
                        .and_then(JsonValue::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| user_id.localpart().to_owned());
            names.insert(*user, name);
        }
        let power_levels: Option<PushConditionPowerLevelsCtx> =
            self.rooms.current_power_levels(room)?.map(Into::into);
        let mut batch = Batch::new();
        let mut positions = Vec::new();
        let mut notified = Vec::new();
        for event in events {
            let Some(pdu) = self.rooms.pdu(event)? else {
                continue;
            };
            let Some(json) = self.rooms.client_event_json(event, &room_id, &pdu.sender)? else {
                continue;
            };
            let raw: Raw<ruma::events::AnySyncTimelineEvent> =
                Raw::from_json(serde_json::value::to_raw_value(&json).map_err(Error::internal)?);
            let thread = json
                .pointer("/content/m.relates_to")
                .filter(|r| r.get("rel_type").and_then(JsonValue::as_str) == Some("m.thread"))
                .and_then(|r| r.get("event_id"))
                .and_then(JsonValue::as_str)
                .map(str::to_owned);
            for (user, user_id) in &local {
                if *user_id == pdu.sender {
                    continue;
                }
                let display_name = names.get(user).cloned().unwrap_or_default();
                let mut ctx = PushConditionRoomCtx::new(
                    room_id.clone(),
                    UInt::new_saturating(joined as u64),
                    user_id.clone(),
                    display_name,
                );
                ctx.power_levels = power_levels.clone();
                let ruleset = self.ruleset(*user, user_id)?;
                let actions = ruleset.get_actions(&raw, &ctx).await.to_vec();
                if !actions.iter().any(Action::should_notify) {
                    continue;
                }
                let highlight = actions.iter().any(Action::is_highlight);
                let record = StoredNotification {
                    actions,
                    highlight,
                    thread: thread.clone(),
                    ts: pdu.origin_server_ts.get().into(),
                };
                batch.put(
                    Cf::Notifications,
                    key::notification(*user, room, event),
                    serde_json::to_vec(&record).map_err(Error::internal)?,
                );
                notified.push((*user, room));
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        // A position of its own, so waiting syncs see the counts change.
        let pos = self.stream.allocate_position_in(&mut batch);
        positions.push(pos);
        let written = self.db.write(batch).await;
        self.stream.complete(&positions);
        written?;
        notified.sort_unstable();
        notified.dedup();
        {
            let mut changed = self.counts_changed.lock();
            if changed.len() > 100_000 {
                changed.clear();
            }
            for key in &notified {
                changed.insert(*key, pos);
            }
        }
        self.stream.wake(notified.into_iter().map(|(u, _)| u));
        Ok(())
    }

    /// The worker that evaluates events as the pipeline persists them.
    pub async fn run(
        self: Arc<Self>,
        mut events: mpsc::UnboundedReceiver<(ShortId, Vec<ShortId>)>,
    ) {
        while let Some((room, shorts)) = events.recv().await {
            if let Err(e) = self.evaluate(room, shorts).await {
                tracing::warn!("push rule evaluation failed: {e}");
            }
        }
    }

    /// Whether the user's counts in the room grew after `since`.
    pub fn counts_changed_since(&self, user: ShortId, room: ShortId, since: u64) -> bool {
        self.counts_changed
            .lock()
            .get(&(user, room))
            .is_some_and(|p| *p > since)
    }

    /// The position of the user's latest read receipt (unthreaded, or on `thread`), public or
    /// private.
    fn read_up_to(&self, room: ShortId, user: ShortId, thread: &str) -> Result<u64> {
        let mut pos = 0;
        for kind in ["m.read", "m.read.private"] {
            for t in ["", thread] {
                if let Some(event) = self.receipts.get(room, user, kind, t)? {
                    if let Some(short) = self.rooms.event_short(&event)? {
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
        let rows = self.db.scan_range(
            Cf::Notifications,
            &key::notification(user, room, floor.saturating_add(1)),
            &key::notification(user, room.saturating_add(1), 0),
            false,
        );
        for row in rows {
            let (k, v) = row?;
            let Some(pos) = k
                .get(16..24)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            let n: StoredNotification = serde_json::from_slice(&v)
                .map_err(|e| Error::internal(format!("corrupt notification: {e}")))?;
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
        for row in self.db.scan_prefix(Cf::Notifications, &key::u64_key(user)) {
            let (k, v) = row?;
            let (Some(room), Some(pos)) = (
                k.get(8..16)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes),
                k.get(16..24)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes),
            ) else {
                continue;
            };
            if from.is_some_and(|f| pos >= f) {
                continue;
            }
            let n: StoredNotification = serde_json::from_slice(&v)
                .map_err(|e| Error::internal(format!("corrupt notification: {e}")))?;
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
