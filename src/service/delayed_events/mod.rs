//! Delayed events (MSC4140): events a client schedules for the server to send later, in its name,
//! unless it restarts the timer (a heartbeat) or cancels them first. Element Call schedules its
//! "left the call" state event this way, so a client that vanishes still leaves the call.
//!
//! Owns the `delayed_events*` keyspaces. A scheduled event is durable before the client hears of
//! it; one worker sleeps until the earliest is due (woken when one is added, restarted or
//! cancelled) and sends it through the rooms service's client path, as its owner, so it is checked,
//! signed, authorised and committed like any event. It is sent under a transaction ID derived from
//! its delay ID and its rows go only once the event is committed: a crash in between sends it again
//! on the next start, which the transaction ID turns into the event already sent. Events never
//! fire twice and are never lost. A state event is cancelled when another user sets the same state
//! first (as Synapse does), in the batch that commits that user's event.
//!
//! It never builds events itself, and never touches the rooms' keyspaces.

use std::{collections::HashSet, sync::Arc, time::Duration};

use ruma::{
    api::error::{LimitExceededErrorData, RetryAfter},
    CanonicalJsonObject, CanonicalJsonValue, OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use tokio::sync::{watch, Notify};

use super::rooms::{self, ClientEvent, Sent, Txn};
use crate::{
    config,
    error::{Error, ErrorKind, Result},
    storage::{tables, Batch, Db, ShortId, Table},
    util::{now_ms, random_string},
};

/// The transaction ID a delayed event is sent under is this followed by its delay ID; the rooms
/// service shows the delay ID to the sender in `unsigned` (see `Events::add_transaction_id`).
pub use super::rooms::events::DELAYED_EVENT_TXN_PREFIX as TXN_PREFIX;

/// Largest content accepted: an event (content and envelope) is at most 65536 bytes.
const MAX_CONTENT_BYTES: usize = 60 * 1024;

/// How long a delayed event waits before another try when sending it failed on our side.
const RETRY_AFTER_INTERNAL_ERROR: Duration = Duration::from_secs(10);

/// A scheduled delayed event, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scheduled {
    pub user_id: OwnedUserId,
    pub user: ShortId,
    /// The device that scheduled it (empty for an appservice acting without one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_id: String,
    pub room_id: OwnedRoomId,
    pub room: ShortId,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_key: Option<String>,
    pub content: JsonValue,
    pub delay_ms: u64,
    /// The transaction ID of the `PUT /send` that scheduled it, so a retry gets the same delay ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn_id: Option<String>,
}

/// A user's scheduled event, for the list endpoint.
pub struct Listed {
    pub delay_id: String,
    /// When it is due (ms since the epoch).
    pub due: u64,
    pub event: Scheduled,
}

/// What a client asks to schedule.
pub struct Request<'a> {
    pub user_id: &'a UserId,
    pub user: ShortId,
    pub device_id: &'a str,
    pub room_id: &'a RoomId,
    pub event: ClientEvent,
    pub delay_ms: u64,
    pub txn_id: Option<&'a str>,
}

/// What a client does to a scheduled event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Cancel,
    Restart,
    Send,
}

impl Action {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cancel" => Some(Self::Cancel),
            "restart" => Some(Self::Restart),
            "send" => Some(Self::Send),
            _ => None,
        }
    }
}

/// What became of a due row.
enum Fired {
    /// Sent, dropped, retried later or found stale: on to the next.
    Done,
    /// Being sent on a client's request right now.
    Busy,
}

/// The keyspaces this service reads and writes.
struct Tables {
    events: Table<tables::DelayedEvents<Scheduled>>,
    due: Table<tables::DelayedEventsDue>,
    by_user: Table<tables::DelayedEventsByUser>,
    by_state: Table<tables::DelayedEventsByState>,
}

pub struct Service {
    db: Db,
    tables: Tables,
    rooms: Arc<rooms::Service>,
    config: config::DelayedEvents,
    /// Serialises every change to scheduled events but the cancellations made in another user's
    /// event batch (see the `Outbox` impl), so that a cancel, a restart and the worker's claim of
    /// the same event cannot interleave between their read and their write.
    changes: tokio::sync::Mutex<()>,
    /// Events being sent right now: no longer cancellable or restartable (as in Synapse).
    sending: parking_lot::Mutex<HashSet<String>>,
    /// Wakes the worker when what is due first may have changed.
    wake: Notify,
}

/// The row deletions of one scheduled event; `due` is its `by_user` value when known.
fn delete_rows_in(tables: &Tables, batch: &mut Batch, id: &str, e: &Scheduled, due: Option<u64>) {
    tables.events.delete_in(batch, id);
    tables.by_user.delete_in(batch, (e.user, id));
    if let Some(due) = due {
        tables.due.delete_in(batch, (due, id));
    }
    if let Some(sk) = &e.state_key {
        tables.by_state.delete_in(batch, (e.room, &e.kind, sk, id));
    }
}

impl Service {
    pub fn new(db: Db, rooms: Arc<rooms::Service>, config: config::DelayedEvents) -> Self {
        Self {
            tables: Tables {
                events: Table::new(&db),
                due: Table::new(&db),
                by_user: Table::new(&db),
                by_state: Table::new(&db),
            },
            db,
            rooms,
            config,
            changes: tokio::sync::Mutex::new(()),
            sending: Default::default(),
            wake: Notify::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled()
    }

    /// The longest delay allowed and the most events one user may have scheduled.
    pub fn limits(&self) -> (u64, u32) {
        (
            self.config.max_delay.0.as_millis() as u64,
            self.config.max_per_user,
        )
    }

    /// Checks and stores a delayed event; its delay ID. Durable when this returns.
    pub async fn schedule(&self, req: Request<'_>) -> Result<String> {
        if !self.enabled() {
            // Synapse's answer when delayed events are off, which clients recognise.
            return Err(
                Error::unknown("Delayed events are not supported on this server")
                    .with_field("org.matrix.msc4140.errcode", "M_MAX_DELAY_UNSUPPORTED"),
            );
        }
        let (max_delay, max_per_user) = self.limits();
        if req.delay_ms > max_delay {
            // Element Call (matrix-js-sdk) reads `org.matrix.msc4140.max_delay` from this answer
            // and schedules again with that delay.
            return Err(Error::unknown(format!(
                "The requested delay exceeds the allowed maximum ({max_delay} ms)"
            ))
            .with_field("org.matrix.msc4140.errcode", "M_MAX_DELAY_EXCEEDED")
            .with_field("org.matrix.msc4140.max_delay", max_delay));
        }
        // Refused now rather than dropped when it fires: what the send endpoints check up front,
        // and content that could never make an event.
        let room = self
            .rooms
            .check_client_event(req.user_id, req.room_id, &req.event)?;
        CanonicalJsonValue::try_from(req.event.content.clone())
            .map_err(|e| Error::bad_json(format!("Content is not canonical JSON: {e}")))?;
        if serde_json::to_vec(&req.event.content)
            .map_err(Error::internal)?
            .len()
            > MAX_CONTENT_BYTES
        {
            return Err(Error::too_large("Event is larger than 65536 bytes"));
        }

        let _changes = self.changes.lock().await;
        let mut count = 0usize;
        let mut first_due = u64::MAX;
        for row in self.tables.by_user.scan((req.user,)) {
            let ((_, id), due) = row?;
            let Some(existing) = self.tables.events.get(&id)? else {
                continue;
            };
            if req.txn_id.is_some()
                && existing.txn_id.as_deref() == req.txn_id
                && existing.device_id == req.device_id
                && existing.room == room
            {
                // A retry of a request already answered: the same delay ID.
                return Ok(id);
            }
            count += 1;
            first_due = first_due.min(due);
        }
        if count >= max_per_user as usize {
            let mut data = LimitExceededErrorData::new();
            let wait = first_due.saturating_sub(now_ms());
            data.retry_after = (wait > 0).then(|| RetryAfter::Delay(Duration::from_millis(wait)));
            return Err(Error::matrix(
                ErrorKind::LimitExceeded(data),
                "The maximum number of delayed events has been reached",
            ));
        }

        // Also the credential of the unauthenticated management endpoints: 190 random bits,
        // kept out of the logs.
        let id = format!("hde_{}", random_string(32));
        let due = now_ms().saturating_add(req.delay_ms);
        let scheduled = Scheduled {
            user_id: req.user_id.to_owned(),
            user: req.user,
            device_id: req.device_id.to_owned(),
            room_id: req.room_id.to_owned(),
            room,
            kind: req.event.kind,
            state_key: req.event.state_key,
            content: req.event.content,
            delay_ms: req.delay_ms,
            txn_id: req.txn_id.map(str::to_owned),
        };
        let mut batch = Batch::new();
        self.tables.events.put_in(&mut batch, &id, &scheduled);
        self.tables
            .due
            .put_in(&mut batch, (due, &id), &scheduled.user);
        self.tables
            .by_user
            .put_in(&mut batch, (scheduled.user, &id), &due);
        if let Some(sk) = &scheduled.state_key {
            self.tables
                .by_state
                .put_in(&mut batch, (room, &scheduled.kind, sk, &id), &());
        }
        self.db.write(batch).await?;
        self.wake.notify_one();
        tracing::debug!(room_id = %scheduled.room_id, delay_ms = req.delay_ms, "delayed event scheduled");
        Ok(id)
    }

    /// A user's scheduled events, the next due first.
    pub fn list(&self, user: ShortId) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        for row in self.tables.by_user.scan((user,)) {
            let ((_, delay_id), due) = row?;
            // Events being sent are no longer scheduled.
            if self.sending.lock().contains(&delay_id) {
                continue;
            }
            if let Some(event) = self.tables.events.get(&delay_id)? {
                out.push(Listed {
                    delay_id,
                    due,
                    event,
                });
            }
        }
        out.sort_by(|a, b| (a.due, &a.delay_id).cmp(&(b.due, &b.delay_id)));
        Ok(out)
    }

    /// Cancels, restarts or sends a scheduled event now. `caller` is the authenticated user, who
    /// must own it; without one (as Synapse allows, for services such as an SFU that a client
    /// hands the delay ID to) the delay ID alone is the credential. Unknown, someone else's, or
    /// already being sent: 404 `M_NOT_FOUND`.
    pub async fn act(&self, delay_id: &str, caller: Option<ShortId>, action: Action) -> Result<()> {
        let changes = self.changes.lock().await;
        let not_found = || Error::not_found("No such delayed event");
        let event = self
            .tables
            .events
            .get(delay_id)?
            .filter(|e| caller.is_none_or(|user| e.user == user))
            .ok_or_else(not_found)?;
        if self.sending.lock().contains(delay_id) {
            return Err(not_found());
        }
        let due = self.tables.by_user.get((event.user, delay_id))?;
        match action {
            Action::Cancel => {
                let mut batch = Batch::new();
                delete_rows_in(&self.tables, &mut batch, delay_id, &event, due);
                self.db.write(batch).await?;
                self.wake.notify_one();
                tracing::debug!(room_id = %event.room_id, "delayed event cancelled");
                Ok(())
            }
            Action::Restart => {
                let new_due = now_ms().saturating_add(event.delay_ms);
                self.reschedule(delay_id, &event, due, new_due).await?;
                self.wake.notify_one();
                Ok(())
            }
            Action::Send => {
                self.sending.lock().insert(delay_id.to_owned());
                drop(changes);
                let sent = self.send(delay_id, &event).await;
                match sent {
                    Ok(sent) => {
                        tracing::debug!(event_id = %sent.event_id, "delayed event sent on request");
                        self.finish(delay_id, &event, due).await
                    }
                    Err(e) => {
                        // The MSC keeps it scheduled: the cause may be gone by its send time.
                        self.sending.lock().remove(delay_id);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Moves a scheduled event's send time (the caller holds `changes`).
    async fn reschedule(
        &self,
        delay_id: &str,
        event: &Scheduled,
        old_due: Option<u64>,
        new_due: u64,
    ) -> Result<()> {
        let mut batch = Batch::new();
        if let Some(old) = old_due {
            self.tables.due.delete_in(&mut batch, (old, delay_id));
        }
        self.tables
            .due
            .put_in(&mut batch, (new_due, delay_id), &event.user);
        self.tables
            .by_user
            .put_in(&mut batch, (event.user, delay_id), &new_due);
        self.db.write(batch).await?;
        Ok(())
    }

    /// Sends the event as its owner, under the transaction ID that makes a second send of the
    /// same delayed event answer with the first.
    async fn send(&self, delay_id: &str, event: &Scheduled) -> Result<Sent> {
        let txn_id = format!("{TXN_PREFIX}{delay_id}");
        self.rooms
            .send_as_client(
                &event.user_id,
                &event.room_id,
                ClientEvent {
                    kind: event.kind.clone(),
                    state_key: event.state_key.clone(),
                    content: event.content.clone(),
                },
                Some(Txn {
                    user: event.user,
                    device_id: "",
                    txn_id: &txn_id,
                }),
            )
            .await
    }

    /// Removes a sent (or dropped) event's rows, then lets go of it.
    async fn finish(&self, delay_id: &str, event: &Scheduled, due: Option<u64>) -> Result<()> {
        let written = {
            let _changes = self.changes.lock().await;
            let mut batch = Batch::new();
            delete_rows_in(&self.tables, &mut batch, delay_id, event, due);
            self.db.write(batch).await
        };
        self.sending.lock().remove(delay_id);
        self.wake.notify_one();
        // If this failed, the rows stay and the event is sent again when due, which its
        // transaction ID turns into the event already sent.
        Ok(written?)
    }

    /// Sends what is due, then sleeps until the next is, or until woken; returns at shutdown.
    /// Events that came due while the server was down are sent first, oldest first.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let next = self.tables.due.iter().next();
            let wait = match next {
                None => None,
                Some(Ok(((due, delay_id), owner))) => {
                    let now = now_ms();
                    if due <= now {
                        // Not raced against `stop`: a send is not cut off halfway.
                        match self.fire(due, &delay_id, owner).await {
                            Ok(Fired::Done) => continue,
                            // A client's `send` action has it; `finish` wakes us.
                            Ok(Fired::Busy) => Some(Duration::from_secs(1)),
                            Err(e) => {
                                tracing::warn!("delayed event: {e}");
                                Some(Duration::from_secs(1))
                            }
                        }
                    } else {
                        Some(Duration::from_millis(due - now))
                    }
                }
                Some(Err(e)) => {
                    tracing::error!("cannot read delayed events: {e}");
                    Some(Duration::from_secs(5))
                }
            };
            let sleep = async {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.wake.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Sends the event of a due row. A row that no longer matches its event (cancelled, or moved
    /// by a restart) is only removed.
    async fn fire(&self, due: u64, delay_id: &str, owner: ShortId) -> Result<Fired> {
        let event = {
            let _changes = self.changes.lock().await;
            if self.sending.lock().contains(delay_id) {
                return Ok(Fired::Busy);
            }
            let event = self.tables.events.get(delay_id)?;
            let current_due = match &event {
                Some(e) => self.tables.by_user.get((e.user, delay_id))?,
                None => None,
            };
            match event {
                Some(e) if current_due == Some(due) => {
                    self.sending.lock().insert(delay_id.to_owned());
                    e
                }
                stale => {
                    let mut batch = Batch::new();
                    self.tables.due.delete_in(&mut batch, (due, delay_id));
                    if stale.is_none() {
                        // Left behind by a restart racing a cancellation.
                        self.tables.by_user.delete_in(&mut batch, (owner, delay_id));
                    }
                    self.db.write(batch).await?;
                    return Ok(Fired::Done);
                }
            }
        };
        match self.send(delay_id, &event).await {
            Ok(sent) => {
                tracing::info!(room_id = %event.room_id, event_id = %sent.event_id, "delayed event sent");
                self.finish(delay_id, &event, Some(due)).await?;
            }
            Err(Error::Internal(e)) => {
                // Our fault (the disk, say), not the event's: try again shortly.
                tracing::warn!(room_id = %event.room_id, "delayed event not sent, retrying: {e}");
                let retried = {
                    let _changes = self.changes.lock().await;
                    let at = now_ms() + RETRY_AFTER_INTERNAL_ERROR.as_millis() as u64;
                    self.reschedule(delay_id, &event, Some(due), at).await
                };
                self.sending.lock().remove(delay_id);
                retried?;
            }
            Err(e) => {
                // The sender may no longer send it (left the room, lost the power level): the
                // MSC drops it, as Synapse does.
                tracing::info!(room_id = %event.room_id, "delayed event dropped: {e}");
                self.finish(delay_id, &event, Some(due)).await?;
            }
        }
        Ok(Fired::Done)
    }
}

/// Another user setting the state a delayed state event would set cancels that event, in the
/// batch that commits the new state (Synapse does this too). The owner's own changes do not.
/// Events being sent are left alone; a cancellation racing a restart of the same event may leave
/// index rows without their event, which are skipped and removed when met.
impl rooms::Outbox for Service {
    fn queue_in(
        &self,
        batch: &mut Batch,
        room: ShortId,
        room_id: &RoomId,
        events: &[(ShortId, &CanonicalJsonObject)],
    ) -> Result<()> {
        for (_, object) in events {
            let field = |name: &str| match object.get(name) {
                Some(CanonicalJsonValue::String(s)) => Some(s.as_str()),
                _ => None,
            };
            let (Some(kind), Some(state_key), Some(sender)) =
                (field("type"), field("state_key"), field("sender"))
            else {
                continue;
            };
            for key in self.tables.by_state.scan((room, kind, state_key)).keys() {
                let (_, _, _, delay_id) = key?;
                if self.sending.lock().contains(&delay_id) {
                    continue;
                }
                let Some(event) = self.tables.events.get(&delay_id)? else {
                    self.tables
                        .by_state
                        .delete_in(batch, (room, kind, state_key, &delay_id));
                    continue;
                };
                if event.user_id.as_str() == sender {
                    continue;
                }
                let due = self.tables.by_user.get((event.user, &delay_id))?;
                delete_rows_in(&self.tables, batch, &delay_id, &event, due);
                tracing::info!(%room_id, %sender, "delayed state event cancelled by another user's change");
            }
        }
        Ok(())
    }
}
