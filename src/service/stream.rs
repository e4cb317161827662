//! The global stream position and who waits on it.
//!
//! Events, receipts, account data, to-device messages and the other durable streams take their
//! positions from one sequence (the short-ID sequence: an event's position is its short ID). A
//! position is only *published* once every position at or below it is durable, so a /sync that
//! reads up to the published position and hands it out as `next_batch` can never skip a write that
//! was still in flight. Waiting /sync requests are woken per user, never by polling.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::storage::{Batch, Db, IdKind, ShortId, ShortIds, StorageResult};

/// Where an ephemeral event belongs, for whoever besides /sync hears of it.
pub enum EphemeralScope<'a> {
    /// Typing or a public receipt in a room.
    Room(ShortId, &'a ruma::RoomId),
    /// A private receipt: only for its owner's eyes.
    Private(ShortId),
    /// A user's presence (the listener adds the `sender`).
    Presence(ShortId),
}

/// Someone besides /sync who must hear of typing, receipts and presence as they happen:
/// appservices that receive ephemeral events get rows of their own in the same write.
pub trait EphemeralListener: Send + Sync {
    /// Adds this listener's rows for `event` to `batch`, at `pos`; returns whether it did.
    fn ephemeral_in(
        &self,
        batch: &mut Batch,
        pos: u64,
        scope: EphemeralScope<'_>,
        event: &serde_json::Value,
    ) -> crate::error::Result<bool>;

    /// Called once a batch with such rows is durable.
    fn written(&self);
}

/// Every [`EphemeralListener`], heard as one. Weak: each is a service that `Services` owns.
struct Fanout(Vec<std::sync::Weak<dyn EphemeralListener>>);

impl EphemeralListener for Fanout {
    fn ephemeral_in(
        &self,
        batch: &mut Batch,
        pos: u64,
        scope: EphemeralScope<'_>,
        event: &serde_json::Value,
    ) -> crate::error::Result<bool> {
        let mut heard = false;
        for l in self.0.iter().filter_map(std::sync::Weak::upgrade) {
            let scope = match &scope {
                EphemeralScope::Room(room, room_id) => EphemeralScope::Room(*room, room_id),
                EphemeralScope::Private(user) => EphemeralScope::Private(*user),
                EphemeralScope::Presence(user) => EphemeralScope::Presence(*user),
            };
            heard |= l.ephemeral_in(batch, pos, scope, event)?;
        }
        Ok(heard)
    }

    fn written(&self) {
        for l in self.0.iter().filter_map(std::sync::Weak::upgrade) {
            l.written();
        }
    }
}

pub struct Stream {
    shortids: Arc<ShortIds>,
    /// Who else hears of ephemeral events (see [`EphemeralListener`]), set once at start.
    ephemeral: std::sync::OnceLock<Arc<dyn EphemeralListener>>,
    /// Positions handed out but not yet durable (or abandoned), with a count per position.
    pending: Mutex<BTreeMap<ShortId, u32>>,
    published: watch::Sender<u64>,
    /// One wake-up channel per user with a /sync waiting; dropped when nobody listens.
    waiters: Mutex<HashMap<ShortId, watch::Sender<u64>>>,
}

impl Stream {
    pub fn new(shortids: Arc<ShortIds>) -> Self {
        let start = shortids.peek_next().saturating_sub(1);
        Self {
            shortids,
            ephemeral: std::sync::OnceLock::new(),
            pending: Mutex::new(BTreeMap::new()),
            published: watch::Sender::new(start),
            waiters: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a reservation of stream positions for one write (see [`Reservation`]).
    pub fn reserve(self: &Arc<Self>) -> Reservation {
        Reservation {
            stream: self.clone(),
            positions: Vec::new(),
        }
    }

    /// Marks positions durable (or abandoned) and publishes the new position. Only a
    /// [`Reservation`] ends positions, when it is dropped: nothing else can leave one pending.
    fn complete(&self, positions: &[ShortId]) {
        let mut pending = self.pending.lock();
        for p in positions {
            if let Some(n) = pending.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    pending.remove(p);
                }
            }
        }
        let upto = match pending.keys().next() {
            Some(first) => first.saturating_sub(1),
            None => self.shortids.peek_next().saturating_sub(1),
        };
        drop(pending);
        self.published.send_if_modified(|p| {
            if upto > *p {
                *p = upto;
                true
            } else {
                false
            }
        });
    }

    /// Sets who else hears of ephemeral events (see [`EphemeralListener`]).
    pub fn set_ephemeral_listeners(&self, listeners: Vec<std::sync::Weak<dyn EphemeralListener>>) {
        let _ = self.ephemeral.set(Arc::new(Fanout(listeners)));
    }

    /// Everyone who hears of ephemeral events, as one listener.
    pub fn ephemeral_listener(&self) -> Option<Arc<dyn EphemeralListener>> {
        self.ephemeral.get().cloned()
    }

    /// A channel that changes whenever the published position advances.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Everything at or below this position is durable.
    pub fn current(&self) -> u64 {
        *self.published.borrow()
    }

    /// A channel that changes whenever something for `user` happens; subscribe before reading
    /// so nothing between the read and the wait is missed.
    pub fn subscribe(&self, user: ShortId) -> watch::Receiver<u64> {
        let mut waiters = self.waiters.lock();
        if waiters.len() > 1024 && waiters.len().is_power_of_two() {
            waiters.retain(|_, tx| tx.receiver_count() > 0);
        }
        waiters
            .entry(user)
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// Wakes the waiting /sync requests of these users.
    pub fn wake(&self, users: impl IntoIterator<Item = ShortId>) {
        let pos = self.current();
        let waiters = self.waiters.lock();
        if waiters.is_empty() {
            return;
        }
        for user in users {
            if let Some(tx) = waiters.get(&user) {
                tx.send_replace(pos);
            }
        }
    }
}

/// Stream positions taken for one write. They stay pending (holding the published position
/// below them) only while the reservation lives, and end when it is dropped, however that
/// happens: after its batch is written ([`Reservation::write`] keeps it alive until the write is
/// durable or has failed, even if the caller's future is dropped meanwhile), or unwritten, when a
/// request is cancelled or fails before its write, in which case the positions are skipped.
/// So a dropped request can never hold the stream back, and no reader can pass a position whose
/// write may still land.
pub struct Reservation {
    stream: Arc<Stream>,
    positions: Vec<ShortId>,
}

impl Reservation {
    /// Allocates an event's short ID (its position), with its mappings in `batch`.
    pub fn event_in(&mut self, batch: &mut Batch, event_id: &str) -> ShortId {
        let mut pending = self.stream.pending.lock();
        let short = self
            .stream
            .shortids
            .allocate_in(batch, IdKind::Event, event_id);
        *pending.entry(short).or_default() += 1;
        self.positions.push(short);
        short
    }

    /// Allocates a bare position (a receipt, an account data change, ...) into `batch`.
    pub fn position_in(&mut self, batch: &mut Batch) -> ShortId {
        let mut pending = self.stream.pending.lock();
        let short = self.stream.shortids.allocate_position_in(batch);
        *pending.entry(short).or_default() += 1;
        self.positions.push(short);
        short
    }

    /// Writes `batch` durably and then ends the reservation. The write runs on a blocking
    /// thread that owns the reservation, so cancelling this future neither stops the write nor
    /// publishes the positions before the write has landed.
    pub async fn write(self, db: &Db, batch: Batch) -> StorageResult<()> {
        db.write_holding(batch, self).await
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.positions.is_empty() {
            self.stream.complete(&self.positions);
        }
    }
}
