//! Delivery to push gateways (Push Gateway API). The commit of an event that notifies a user
//! with pushers writes one `push_queue` row per pusher in the event's own batch; a read receipt
//! writes a badge update the same way. One worker per pusher with rows drains them in order, one
//! request in flight, each row deleted only once its gateway answered, with exponential backoff
//! while a gateway is down; workers start when rows are published and end when their queue is
//! empty, so idle pushers cost nothing.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    push::Action,
    serde::JsonObject,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as JsonValue};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};

use super::{
    pushers::{now_ms, Active},
    Service,
};
use crate::{
    error::{Error, Result},
    service::{media::preview::checked_client, stream::EphemeralScope},
    storage::{Batch, ShortId},
};

/// Rows read from a pusher's queue at a time; the badge is counted once for them.
const ROWS_PER_READ: usize = 64;

/// A gateway's client is built again after this long, so a changed DNS answer is seen (and
/// checked against the address policy again).
const CLIENT_LIFETIME: Duration = Duration::from_secs(300);

/// Shortest wait after a failed delivery; it doubles up to `push.max_backoff`.
const MIN_BACKOFF: Duration = Duration::from_millis(250);

/// One queued delivery.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueuedPush {
    pub room: ShortId,
    /// The event; none for a badge update (a read receipt changed the unread count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<ShortId>,
    /// `prio: high`: the event makes a sound, highlights, or is encrypted (its text unknown).
    #[serde(default)]
    pub high: bool,
    /// The push rule's tweaks (`sound`, `highlight`, ...).
    #[serde(default, skip_serializing_if = "JsonObject::is_empty")]
    pub tweaks: JsonObject,
    /// When it was queued (ms): one undeliverable for `push.max_age` is dropped.
    pub ts: u64,
}

impl QueuedPush {
    /// The row for an event whose rules gave `actions`.
    pub fn event(room: ShortId, event: ShortId, actions: &[Action], encrypted: bool) -> Self {
        let mut tweaks = JsonObject::new();
        for action in actions {
            if let Action::SetTweak(tweak) = action {
                // As the rule states it: `{"set_tweak": name, "value": v}`, a bare highlight
                // meaning true.
                let Ok(stated) = serde_json::to_value(tweak) else {
                    continue;
                };
                if let Some(name) = stated.get("set_tweak").and_then(JsonValue::as_str) {
                    let value = stated
                        .get("value")
                        .cloned()
                        .unwrap_or(JsonValue::Bool(true));
                    tweaks.insert(name.to_owned(), value);
                }
            }
        }
        let high = encrypted
            || tweaks.contains_key("sound")
            || tweaks.get("highlight").and_then(JsonValue::as_bool) == Some(true);
        Self {
            room,
            event: Some(event),
            high,
            tweaks,
            ts: now_ms(),
        }
    }
}

/// A user's unread count as last counted: valid while no read receipt of theirs came after it.
#[derive(Default)]
pub(super) struct Badge {
    /// The count, the position it was counted at, the number of joined rooms then.
    counted: Option<(u64, u64, usize)>,
    /// The position of the user's latest read receipt.
    read_at: u64,
}

/// Pusher workers by ID: whether one was woken again while it ran.
type Running = HashMap<u64, bool>;

/// How one delivery ended.
enum Sent {
    Delivered,
    /// The gateway rejected the pushkey: the pusher is gone.
    Rejected,
    /// Undeliverable for longer than `push.max_age`.
    Dropped,
    Stopped,
}

impl Service {
    /// Wakes the workers of pushers with rows at published positions.
    pub(super) fn poke(&self) {
        let published = self.stream.current();
        let mut pending = self.pending_wakes.lock();
        if pending.is_empty() {
            return;
        }
        pending.retain(|(pos, id)| {
            if *pos <= published {
                let _ = self.wakes.send(*id);
                false
            } else {
                true
            }
        });
    }

    /// Adds queue rows for a notification of `user` to `batch`, for each of their pushers.
    pub(super) fn queue_push_in(
        &self,
        batch: &mut Batch,
        user: ShortId,
        pos: u64,
        row: &QueuedPush,
    ) {
        let index = self.index.read();
        let ids = index.of_user(user);
        if ids.is_empty() {
            return;
        }
        let mut pending = self.pending_wakes.lock();
        for id in ids {
            self.queue.put_in(batch, (*id, pos), row);
            pending.push((pos, *id));
        }
        // Rows of a write that failed would sit here for good; their wake-ups are harmless
        // (a worker finds nothing), so the list is only kept from growing without bound.
        if pending.len() > 1_000_000 {
            pending.clear();
        }
    }

    /// Runs the pusher workers until `stop`: those with rows left from before a restart at once,
    /// the others as rows are published for them.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let Some(mut wakes) = self.wakes_rx.lock().take() else {
            return;
        };
        let mut running: Running = HashMap::new();
        let mut workers: JoinSet<u64> = JoinSet::new();
        let mut queued: Vec<u64> = Vec::new();
        for row in self.queue.iter().keys() {
            match row {
                Ok((id, _)) if queued.last() != Some(&id) => queued.push(id),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("cannot read the push queue: {e}");
                    break;
                }
            }
        }
        for id in queued {
            self.start_worker(id, &mut running, &mut workers, &stop);
        }
        let mut published = self.stream.watch();
        let mut stopping = stop.clone();
        loop {
            let waiting = !self.pending_wakes.lock().is_empty();
            tokio::select! {
                Some(id) = wakes.recv() => self.start_worker(id, &mut running, &mut workers, &stop),
                Some(done) = workers.join_next() => {
                    let Ok(id) = done else { continue };
                    if running.remove(&id) == Some(true) {
                        self.start_worker(id, &mut running, &mut workers, &stop);
                    }
                }
                // Rows whose positions were not published when their write landed.
                Ok(()) = published.changed(), if waiting => self.poke(),
                _ = stopping.wait_for(|s| *s) => break,
            }
        }
        workers.shutdown().await;
    }

    fn start_worker(
        self: &Arc<Self>,
        id: u64,
        running: &mut Running,
        workers: &mut JoinSet<u64>,
        stop: &watch::Receiver<bool>,
    ) {
        match running.get_mut(&id) {
            Some(again) => *again = true,
            None => {
                running.insert(id, false);
                let (this, stop) = (self.clone(), stop.clone());
                workers.spawn(async move {
                    if let Err(e) = this.drain(id, stop).await {
                        tracing::error!(pusher = id, "push delivery failed: {e}");
                    }
                    id
                });
            }
        }
    }

    /// Delivers a pusher's published rows in order until none are left.
    async fn drain(&self, id: u64, mut stop: watch::Receiver<bool>) -> Result<()> {
        loop {
            let published = self.stream.current();
            let mut rows = Vec::new();
            for row in self.queue.scan((id,)) {
                let ((_, pos), queued) = row?;
                if pos > published || rows.len() >= ROWS_PER_READ {
                    break;
                }
                rows.push((pos, queued));
            }
            if rows.is_empty() {
                return Ok(());
            }
            let Some(active) = self.index.read().get(id) else {
                // Rows of a pusher deleted while its notifications were being committed.
                let mut batch = Batch::new();
                for (pos, _) in &rows {
                    self.queue.delete_in(&mut batch, (id, *pos));
                }
                self.db.write(batch).await?;
                continue;
            };
            let badge = self.badge(active.user)?;
            let mut done = Batch::new();
            let last = rows.len() - 1;
            for (i, (pos, queued)) in rows.into_iter().enumerate() {
                self.queue.delete_in(&mut done, (id, pos));
                // A badge update followed by anything newer is carried by that.
                if queued.event.is_none() && i < last {
                    continue;
                }
                let body = self.notification(&active, &queued, badge)?;
                match self.send(&active, &body, queued.ts, &mut stop).await {
                    Sent::Delivered | Sent::Dropped => {}
                    Sent::Rejected => {
                        self.reject(&active).await?;
                        return Ok(());
                    }
                    Sent::Stopped => return Ok(()),
                }
                self.db.write(std::mem::take(&mut done)).await?;
            }
            self.db.write(done).await?;
        }
    }

    /// Sends one notification until the gateway takes it, backing off while it fails.
    async fn send(
        &self,
        active: &Active,
        body: &JsonValue,
        queued_at: u64,
        stop: &mut watch::Receiver<bool>,
    ) -> Sent {
        let mut failures: u32 = 0;
        loop {
            let attempt = async {
                let client = self.client(active).await?;
                let resp = client
                    .post(active.url.clone())
                    .timeout(self.config.timeout.0)
                    .json(body)
                    .send()
                    .await
                    .map_err(|e| Error::upstream(format!("push gateway: {e}")))?;
                let status = resp.status();
                if !status.is_success() {
                    return Err(Error::upstream(format!("push gateway answered {status}")));
                }
                // `rejected` may be missing or the body empty: nothing rejected.
                let answer: JsonValue = resp.json().await.unwrap_or(JsonValue::Null);
                Ok(answer
                    .get("rejected")
                    .and_then(JsonValue::as_array)
                    .is_some_and(|r| r.iter().any(|k| k.as_str() == Some(&active.pushkey))))
            };
            let result = tokio::select! {
                r = attempt => r,
                _ = stop.wait_for(|s| *s) => return Sent::Stopped,
            };
            match result {
                Ok(false) => return Sent::Delivered,
                Ok(true) => return Sent::Rejected,
                Err(e) => {
                    failures += 1;
                    self.clients.lock().remove(&active.id);
                    let age = now_ms().saturating_sub(queued_at);
                    if age > self.config.max_age.0.as_millis() as u64 {
                        tracing::warn!(user = %active.user_id, app_id = %active.app_id, "dropping a notification the push gateway has not taken for {} s: {e}", age / 1000);
                        return Sent::Dropped;
                    }
                    let wait = MIN_BACKOFF
                        .saturating_mul(1u32 << failures.min(20).saturating_sub(1))
                        .min(self.config.max_backoff.0);
                    tracing::info!(user = %active.user_id, app_id = %active.app_id, failures, ?wait, "push gateway failed, backing off: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.wait_for(|s| *s) => return Sent::Stopped,
                    }
                }
            }
        }
    }

    /// The pusher's HTTP client, connecting only to addresses the policy allows.
    async fn client(&self, active: &Active) -> Result<reqwest::Client> {
        if let Some((client, made)) = self.clients.lock().get(&active.id) {
            if made.elapsed() < CLIENT_LIFETIME {
                return Ok(client.clone());
            }
        }
        let client = checked_client(&self.policy, &active.url, "push").await?;
        let mut clients = self.clients.lock();
        if clients.len() > 10_000 {
            clients.clear();
        }
        clients.insert(active.id, (client.clone(), Instant::now()));
        Ok(client)
    }

    /// The request body for one queued row (Push Gateway API `/notify`).
    fn notification(&self, active: &Active, queued: &QueuedPush, badge: u64) -> Result<JsonValue> {
        let mut device = json!({
            "app_id": active.app_id,
            "pushkey": active.pushkey,
            "pushkey_ts": active.pushkey_ts,
        });
        if !active.data.is_empty() {
            device["data"] = active.data.clone().into();
        }
        let Some(event) = queued.event else {
            return Ok(json!({ "notification": {
                "prio": "low",
                "counts": { "unread": badge },
                "devices": [device],
            }}));
        };
        if !queued.tweaks.is_empty() {
            device["tweaks"] = queued.tweaks.clone().into();
        }
        let prio = if queued.high { "high" } else { "low" };
        let event_id = self.rooms.events.event_id_of(event)?;
        let room_id = self.rooms.events.room_id_of(queued.room)?;
        let mut n = json!({
            "event_id": event_id,
            "room_id": room_id,
            "prio": prio,
            "counts": { "unread": badge },
            "devices": [device],
        });
        if active.event_id_only {
            return Ok(json!({ "notification": n }));
        }
        let Some(json) = self.rooms.events.event_json(event)? else {
            return Ok(json!({ "notification": n }));
        };
        let str_of = |v: Option<&JsonValue>| v.and_then(JsonValue::as_str).map(str::to_owned);
        let event_type = str_of(json.get("type")).unwrap_or_default();
        let sender = str_of(json.get("sender")).unwrap_or_default();
        n["type"] = event_type.as_str().into();
        n["sender"] = sender.as_str().into();
        let state = &self.rooms.state;
        let field = |kind: StateEventType, key: &str, name: &str| -> Result<Option<String>> {
            Ok(state
                .current_state_pdu(queued.room, &kind, key)?
                .and_then(|p| str_of(p.content_value().get(name))))
        };
        if let Some(name) = field(StateEventType::RoomMember, &sender, "displayname")? {
            n["sender_display_name"] = name.into();
        }
        if let Some(name) = field(StateEventType::RoomName, "", "name")? {
            n["room_name"] = name.into();
        }
        if let Some(alias) = field(StateEventType::RoomCanonicalAlias, "", "alias")? {
            n["room_alias"] = alias.into();
        }
        if event_type == "m.room.member" {
            if let Some(state_key) = str_of(json.get("state_key")) {
                n["user_is_target"] = (state_key == active.user_id.as_str()).into();
            }
            if let Some(m) = json.get("content").and_then(|c| c.get("membership")) {
                n["membership"] = m.clone();
            }
        }
        if self.config.include_content {
            if let Some(content) = json.get("content") {
                n["content"] = content.clone();
            }
        }
        Ok(json!({ "notification": n }))
    }

    /// The user's unread count for `counts.unread`: notifications after their read receipts in
    /// every joined room. Counted again only after a receipt; otherwise what was counted plus
    /// the notifications since.
    fn badge(&self, user: ShortId) -> Result<u64> {
        let now = self.stream.current();
        let rooms = self
            .rooms
            .membership
            .rooms_of(user, &MembershipState::Join)?;
        let counted = self.badges.lock().get(&user).and_then(|b| {
            b.counted
                .filter(|(_, upto, n)| *upto >= b.read_at && *n == rooms.len())
        });
        let count = match counted {
            Some((count, upto, _)) if upto >= now => count,
            Some((count, upto, _)) => {
                let mut more = 0u64;
                for room in &rooms {
                    more += self
                        .notifications
                        .range((user, *room, upto + 1), (user, *room, now + 1))
                        .keys()
                        .count() as u64;
                }
                count + more
            }
            None => {
                let mut all = 0;
                for room in &rooms {
                    all += self.counts(user, *room, false)?.notifications;
                }
                all
            }
        };
        let mut badges = self.badges.lock();
        if badges.len() > 100_000 {
            badges.clear();
        }
        let entry = badges.entry(user).or_default();
        entry.counted = Some((count, now, rooms.len()));
        Ok(count)
    }

    /// Queues a badge update for each local reader with pushers in a read receipt.
    pub(super) fn receipt_in(
        &self,
        batch: &mut Batch,
        pos: u64,
        scope: &EphemeralScope<'_>,
        event: &JsonValue,
    ) -> Result<bool> {
        if event.get("type").and_then(JsonValue::as_str) != Some("m.receipt") {
            return Ok(false);
        }
        let room = match scope {
            EphemeralScope::Room(room, _) => *room,
            // A private receipt's scope names its reader, not the room: it is in the event.
            EphemeralScope::Private(_) => match event
                .get("room_id")
                .and_then(JsonValue::as_str)
                .and_then(|r| ruma::RoomId::parse(r).ok())
            {
                Some(room_id) => match self.rooms.events.room_short(&room_id)? {
                    Some(r) => r,
                    None => return Ok(false),
                },
                None => return Ok(false),
            },
            EphemeralScope::Presence(_) => return Ok(false),
        };
        let mut readers = Vec::new();
        if let Some(content) = event.get("content").and_then(JsonValue::as_object) {
            for kinds in content.values() {
                for kind in ["m.read", "m.read.private"] {
                    if let Some(users) = kinds.get(kind).and_then(JsonValue::as_object) {
                        readers.extend(users.keys().cloned());
                    }
                }
            }
        }
        let mut queued = false;
        for reader in readers {
            let Ok(user_id) = ruma::UserId::parse(&reader) else {
                continue;
            };
            if user_id.server_name() != self.rooms.server_name() {
                continue;
            }
            let Some(user) = self.rooms.events.user_short(&user_id)? else {
                continue;
            };
            if self.index.read().of_user(user).is_empty() {
                continue;
            }
            self.badges.lock().entry(user).or_default().read_at = pos;
            let row = QueuedPush {
                room,
                event: None,
                high: false,
                tweaks: JsonObject::new(),
                ts: now_ms(),
            };
            self.queue_push_in(batch, user, pos, &row);
            queued = true;
        }
        Ok(queued)
    }

    /// A wake-up channel for the workers, made once; `run` takes the receiving end.
    pub(super) fn wake_channel() -> (mpsc::UnboundedSender<u64>, mpsc::UnboundedReceiver<u64>) {
        mpsc::unbounded_channel()
    }
}
