//! Typing notifications: in memory only (they expire within seconds), each change numbered from
//! a serial that starts at the clock, so numbers keep growing across restarts.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::OwnedUserId;

use crate::{
    service::{
        rooms,
        stream::{EphemeralScope, Stream},
    },
    storage::{Batch, Db, ShortId},
};

/// Longest typing timeout honoured, whatever the client asks.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    serial: u64,
    users: HashMap<OwnedUserId, Instant>,
}

pub struct Service {
    db: Db,
    stream: Arc<Stream>,
    rooms: Arc<rooms::Service>,
    serial: AtomicU64,
    typing: Mutex<HashMap<ShortId, RoomTyping>>,
}

impl Service {
    pub fn new(db: Db, stream: Arc<Stream>, rooms: Arc<rooms::Service>) -> Self {
        Self {
            db,
            stream,
            rooms,
            serial: AtomicU64::new(crate::util::now_ms()),
            typing: Mutex::new(HashMap::new()),
        }
    }

    /// The serial of the latest change in any room.
    pub fn serial(&self) -> u64 {
        self.serial.load(Ordering::SeqCst)
    }

    /// Starts or stops `user` typing in `room`; a start expires after `timeout`.
    pub fn set(self: &Arc<Self>, room: ShortId, user: OwnedUserId, timeout: Option<Duration>) {
        let changed = {
            let mut typing = self.typing.lock();
            let entry = typing.entry(room).or_default();
            let changed = match timeout {
                Some(t) => {
                    let t = t.min(MAX_TIMEOUT);
                    let until = Instant::now() + t;
                    let was = entry.users.insert(user.clone(), until).is_some();
                    // One timer per typing notice, no sweeping loop; it holds no strong reference,
                    // so a server shutting down is not kept alive by it.
                    let me = Arc::downgrade(self);
                    let who = user.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(t).await;
                        if let Some(me) = me.upgrade() {
                            me.expire(room, &who);
                        }
                    });
                    !was
                }
                None => entry.users.remove(&user).is_some(),
            };
            if changed {
                entry.serial = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
            }
            if entry.users.is_empty() && !changed {
                typing.remove(&room);
            }
            changed
        };
        if changed {
            self.rooms.wake_members(room);
            self.tell_listener(room);
        }
    }

    /// Hands the room's typing list to the ephemeral listener (appservices), if it wants it.
    /// Off the caller's path: typing is best effort, and a failed write only loses a notice.
    fn tell_listener(&self, room: ShortId) {
        let Some(listener) = self.stream.ephemeral_listener() else {
            return;
        };
        let users: Vec<OwnedUserId> = self
            .typing
            .lock()
            .get(&room)
            .map(|e| e.users.keys().cloned().collect())
            .unwrap_or_default();
        let (db, stream, rooms) = (self.db.clone(), self.stream.clone(), self.rooms.clone());
        tokio::spawn(async move {
            let write = async {
                let room_id = rooms.events.room_id_of(room)?;
                let event = serde_json::json!({
                    "type": "m.typing",
                    "room_id": room_id,
                    "content": { "user_ids": users },
                });
                let mut batch = Batch::new();
                let mut reserved = stream.reserve();
                let pos = reserved.position_in(&mut batch);
                if listener.ephemeral_in(
                    &mut batch,
                    pos,
                    EphemeralScope::Room(room, &room_id),
                    &event,
                )? {
                    reserved.write(&db, batch).await?;
                    listener.written();
                }
                Ok::<(), crate::Error>(())
            };
            if let Err(e) = write.await {
                tracing::warn!("typing notice for appservices not queued: {e}");
            }
        });
    }

    fn expire(&self, room: ShortId, user: &OwnedUserId) {
        let changed = {
            let mut typing = self.typing.lock();
            let Some(entry) = typing.get_mut(&room) else {
                return;
            };
            let expired = entry
                .users
                .get(user)
                .is_some_and(|until| *until <= Instant::now());
            if expired {
                entry.users.remove(user);
                entry.serial = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
            }
            expired
        };
        if changed {
            self.rooms.wake_members(room);
            self.tell_listener(room);
        }
    }

    /// Who is typing in the room, if that changed after `since` (always when `since` is `None`).
    pub fn changed_since(&self, room: ShortId, since: Option<u64>) -> Option<Vec<OwnedUserId>> {
        let typing = self.typing.lock();
        let entry = typing.get(&room);
        let serial = entry.map_or(0, |e| e.serial);
        if since.is_some_and(|s| serial <= s) {
            return None;
        }
        let now = Instant::now();
        let mut users: Vec<OwnedUserId> = entry
            .map(|e| {
                e.users
                    .iter()
                    .filter(|(_, until)| **until > now)
                    .map(|(u, _)| u.clone())
                    .collect()
            })
            .unwrap_or_default();
        users.sort();
        Some(users)
    }
}
