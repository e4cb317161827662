//! Presence: online, unavailable (idle) and offline, with a status message and the time of last
//! activity, shared with users who share a room. Activity and syncs are tracked in memory; a
//! change of state is written with a stream position so /sync sends only what changed. One timer
//! task sleeps until the next idle or offline deadline.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;
use ruma::{presence::PresenceState, OwnedUserId};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::tables::service;
use crate::{
    config,
    error::Result,
    service::{
        rooms,
        stream::{EphemeralScope, Stream},
    },
    storage::{tables, Batch, ShortId},
    util::now_ms,
};

/// Who to wake about a user's presence change, computed only when something is written.
pub type Peers<'a> = dyn Fn(ShortId) -> Vec<ShortId> + Send + Sync + 'a;

/// Who shares a room with a user (and the user), from the room memberships; none when they
/// cannot be read.
pub fn room_peers(rooms: Arc<rooms::Service>) -> impl Fn(ShortId) -> Vec<ShortId> + Send + Sync {
    move |u| {
        rooms
            .membership
            .peers(u)
            .map(|p| p.into_iter().collect())
            .unwrap_or_default()
    }
}

/// A user's presence as stored and sent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stored {
    pub presence: PresenceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_msg: Option<String>,
    pub last_active_ts: u64,
}

impl Stored {
    pub fn new(presence: PresenceState, status_msg: Option<String>, last_active_ts: u64) -> Self {
        Self {
            presence,
            status_msg,
            last_active_ts,
        }
    }
}

#[derive(Default)]
struct Live {
    last_active: u64,
    last_sync: u64,
    syncing: u32,
}

service! {
    tables {
        presence: tables::Presence<Stored>,
        by_pos: tables::PresenceByPos,
    }
    deps {
        stream: Arc<Stream>,
        config: config::Presence,
    }
    state {
        live: Mutex<HashMap<ShortId, Live>> = Mutex::new(HashMap::new()),
        timer: Notify = Notify::new(),
        write: tokio::sync::Mutex<()> = tokio::sync::Mutex::new(()),
    }
}

impl Service {
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    pub fn get(&self, user: ShortId) -> Result<Option<Stored>> {
        Ok(self.tables.presence.get(user)?.map(|(_, stored)| stored))
    }

    /// Writes a new presence if it differs from the stored one; wakes the user's peers.
    async fn store(&self, user: ShortId, new: Stored, peers: &Peers<'_>) -> Result<()> {
        let _guard = self.write.lock().await;
        let mut batch = Batch::new();
        if let Some((old_pos, old)) = self.tables.presence.get(user)? {
            // Only the state and message count as changes; activity alone is not written.
            if old.presence == new.presence && old.status_msg == new.status_msg {
                return Ok(());
            }
            self.tables.by_pos.delete_in(&mut batch, old_pos);
        }
        let mut reserved = self.stream.reserve();
        let pos = reserved.position_in(&mut batch);
        let listener = self.stream.ephemeral_listener();
        let mut heard = false;
        if let Some(l) = &listener {
            let mut event = serde_json::json!({ "type": "m.presence", "content": {
                "presence": new.presence.as_str(),
                "last_active_ago": now_ms().saturating_sub(new.last_active_ts),
                "currently_active": new.presence == PresenceState::Online,
            }});
            if let Some(m) = &new.status_msg {
                event["content"]["status_msg"] = m.as_str().into();
            }
            heard = l.ephemeral_in(&mut batch, pos, EphemeralScope::Presence(user), &event)?;
        }
        self.tables.presence.put_in(&mut batch, user, &(pos, new));
        self.tables.by_pos.put_in(&mut batch, pos, &user);
        reserved.write(&self.db, batch).await?;
        if let (true, Some(l)) = (heard, listener) {
            l.written();
        }
        self.stream.wake(peers(user));
        Ok(())
    }

    /// Sets presence explicitly (PUT /presence); activity is now.
    pub async fn set(
        &self,
        user: ShortId,
        presence: PresenceState,
        status_msg: Option<String>,
        peers: &Peers<'_>,
    ) -> Result<()> {
        let now = now_ms();
        if presence == PresenceState::Online {
            self.live.lock().entry(user).or_default().last_active = now;
            self.timer.notify_one();
        }
        let new = Stored::new(presence, status_msg, now);
        self.store(user, new, peers).await
    }

    /// Presence of a user of another server, as its server told us (its timers run there).
    pub async fn set_remote(
        &self,
        user: ShortId,
        presence: PresenceState,
        status_msg: Option<String>,
        peers: &Peers<'_>,
    ) -> Result<()> {
        let new = Stored::new(presence, status_msg, now_ms());
        self.store(user, new, peers).await
    }

    /// A /sync starts: with `set_presence` online (the default) the user is online and active.
    /// Counts the sync at once (pair it with [`Service::sync_ended`] however the sync ends) and
    /// returns the presence to store, if any, with [`Service::store_started`].
    pub fn sync_started(&self, user: ShortId, set: &PresenceState) -> Option<PresenceState> {
        let now = now_ms();
        {
            let mut live = self.live.lock();
            let l = live.entry(user).or_default();
            l.syncing += 1;
            l.last_sync = now;
            if *set == PresenceState::Online {
                l.last_active = now;
            }
        }
        self.timer.notify_one();
        (*set != PresenceState::Offline).then(|| set.clone())
    }

    /// Stores the presence a starting /sync sets (see [`Service::sync_started`]).
    pub async fn store_started(
        &self,
        user: ShortId,
        presence: PresenceState,
        peers: &Peers<'_>,
    ) -> Result<()> {
        let status_msg = self.get(user)?.and_then(|s| s.status_msg);
        let new = Stored::new(presence, status_msg, now_ms());
        self.store(user, new, peers).await
    }

    /// A /sync ended; the offline countdown starts when no other is in flight.
    pub fn sync_ended(&self, user: ShortId) {
        let mut live = self.live.lock();
        if let Some(l) = live.get_mut(&user) {
            l.syncing = l.syncing.saturating_sub(1);
            l.last_sync = now_ms();
        }
        drop(live);
        self.timer.notify_one();
    }

    /// Milliseconds since the user was last active, as this process saw it (or as stored).
    pub fn last_active_ago(&self, user: ShortId, stored: &Stored) -> u64 {
        let seen = self
            .live
            .lock()
            .get(&user)
            .map_or(stored.last_active_ts, |l| {
                l.last_active.max(stored.last_active_ts)
            });
        now_ms().saturating_sub(seen)
    }

    /// Users whose presence changed in (since, upto] (every user with a presence when `since` is
    /// `None`).
    pub fn changes(&self, since: Option<u64>, upto: u64) -> Result<Vec<ShortId>> {
        let rows = self.tables.by_pos.range(
            since.map_or(0, |s| s.saturating_add(1)),
            upto.saturating_add(1),
        );
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for row in rows {
            let (_, user) = row?;
            if seen.insert(user) {
                out.push(user);
            }
        }
        Ok(out)
    }

    /// Applies due idle and offline transitions; returns how long until the next one.
    async fn tick(&self, peers: &Peers<'_>) -> Option<Duration> {
        let now = now_ms();
        let idle = self.config.idle_timeout.0.as_millis() as u64;
        let offline = self.config.offline_timeout.0.as_millis() as u64;
        let mut due = Vec::new();
        let mut next: Option<u64> = None;
        {
            let live = self.live.lock();
            for (user, l) in live.iter() {
                let idle_at = l.last_active + idle;
                let offline_at = (l.syncing == 0).then_some(l.last_sync + offline);
                if offline_at.is_some_and(|t| t <= now) {
                    due.push((*user, PresenceState::Offline));
                    continue;
                }
                if idle_at <= now {
                    due.push((*user, PresenceState::Unavailable));
                } else {
                    next = Some(next.map_or(idle_at, |n| n.min(idle_at)));
                }
                if let Some(t) = offline_at {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
        }
        for (user, state) in due {
            let Ok(Some(current)) = self.get(user) else {
                continue;
            };
            let downgrade = match state {
                PresenceState::Offline => current.presence != PresenceState::Offline,
                _ => current.presence == PresenceState::Online,
            };
            if state == PresenceState::Offline {
                self.live.lock().remove(&user);
            }
            if downgrade {
                let new = Stored::new(state, current.status_msg.clone(), current.last_active_ts);
                if let Err(e) = self.store(user, new, peers).await {
                    tracing::warn!("presence timeout not stored: {e}");
                }
            }
        }
        next.map(|t| Duration::from_millis(t.saturating_sub(now_ms()).max(1)))
    }

    /// The timer task: sleeps until the next deadline, or until activity moves one.
    pub async fn run_timer(
        self: Arc<Self>,
        peers: Arc<dyn Fn(ShortId) -> Vec<ShortId> + Send + Sync>,
    ) {
        loop {
            let wait = self.tick(&*peers).await;
            match wait {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = self.timer.notified() => {}
                    }
                }
                None => self.timer.notified().await,
            }
        }
    }
}

/// The m.presence event of a user, as /sync and GET /presence show it.
pub fn event(user_id: &OwnedUserId, stored: &Stored, last_active_ago: u64) -> serde_json::Value {
    let mut content = serde_json::json!({
        "presence": stored.presence.as_str(),
        "last_active_ago": last_active_ago,
        "currently_active": stored.presence == PresenceState::Online,
    });
    if let Some(m) = &stored.status_msg {
        content["status_msg"] = m.as_str().into();
    }
    serde_json::json!({ "type": "m.presence", "sender": user_id, "content": content })
}
