//! Read receipts (m.read, m.read.private; threaded or not): the latest per (room, user, type,
//! thread), indexed by stream position so /sync sends only what changed.

use std::sync::Arc;

use ruma::{OwnedEventId, OwnedUserId};
use serde::{Deserialize, Serialize};

use super::tables::service;
use crate::{
    error::Result,
    service::{
        rooms,
        stream::{EphemeralScope, Stream},
    },
    storage::{tables, Batch, ShortId},
};

#[derive(Serialize, Deserialize)]
pub struct Stored {
    event_id: OwnedEventId,
    ts: u64,
}

/// A receipt as /sync reports it.
pub struct Receipt {
    pub user: OwnedUserId,
    pub kind: String,
    /// Empty for an unthreaded receipt.
    pub thread: String,
    pub event_id: OwnedEventId,
    pub ts: u64,
}

service! {
    tables {
        receipts: tables::Receipts<Stored>,
        by_pos: tables::ReceiptsByPos,
    }
    deps {
        stream: Arc<Stream>,
        rooms: Arc<rooms::Service>,
    }
    state {
        write: tokio::sync::Mutex<()> = tokio::sync::Mutex::new(()),
    }
}

impl Service {
    /// Records a receipt and wakes the room's members (a private one only wakes its owner).
    pub async fn set(
        &self,
        room: ShortId,
        user: ShortId,
        kind: &str,
        thread: &str,
        event_id: &ruma::EventId,
        ts: u64,
    ) -> Result<()> {
        let _guard = self.write.lock().await;
        let k = (room, user, kind, thread);
        let mut batch = Batch::new();
        if let Some((old_pos, _)) = self.tables.receipts.get(k)? {
            self.tables.by_pos.delete_in(&mut batch, (room, old_pos));
        }
        let mut reserved = self.stream.reserve();
        let pos = reserved.position_in(&mut batch);
        let stored = Stored {
            event_id: event_id.to_owned(),
            ts,
        };
        let row = (room, user, kind.to_owned(), thread.to_owned());
        self.tables.by_pos.put_in(&mut batch, (room, pos), &row);
        self.tables.receipts.put_in(&mut batch, k, &(pos, stored));
        let listener = self.stream.ephemeral_listener();
        let mut heard = false;
        if let Some(l) = &listener {
            let room_id = self.rooms.events.room_id_of(room)?;
            let user_id = self.rooms.events.user_id_of(user)?;
            let mut receipt = serde_json::json!({ "ts": ts });
            if !thread.is_empty() {
                receipt["thread_id"] = thread.into();
            }
            let event = serde_json::json!({
                "type": "m.receipt",
                "room_id": room_id,
                "content": { event_id.as_str(): { kind: { user_id.as_str(): receipt } } },
            });
            let scope = if kind == "m.read.private" {
                EphemeralScope::Private(user)
            } else {
                EphemeralScope::Room(room, &room_id)
            };
            heard = l.ephemeral_in(&mut batch, pos, scope, &event)?;
        }
        reserved.write(&self.db, batch).await?;
        if let (true, Some(l)) = (heard, listener) {
            l.written();
        }
        if kind == "m.read.private" {
            self.stream.wake([user]);
        } else {
            self.rooms.wake_members(room);
        }
        Ok(())
    }

    /// The user's own receipt of a type in a room (unthreaded).
    pub fn get(
        &self,
        room: ShortId,
        user: ShortId,
        kind: &str,
        thread: &str,
    ) -> Result<Option<OwnedEventId>> {
        Ok(self
            .tables
            .receipts
            .get((room, user, kind, thread))?
            .map(|(_, stored)| stored.event_id))
    }

    fn receipt(
        &self,
        (_, user, kind, thread): tables::ReceiptKey,
        stored: Stored,
    ) -> Result<Receipt> {
        Ok(Receipt {
            user: self.rooms.events.user_id_of(user)?,
            kind,
            thread,
            event_id: stored.event_id,
            ts: stored.ts,
        })
    }

    /// Receipts of a room changed in (since, upto], or all of them when `since` is `None`.
    pub fn changes(&self, room: ShortId, since: Option<u64>, upto: u64) -> Result<Vec<Receipt>> {
        let mut out = Vec::new();
        match since {
            None => {
                for row in self.tables.receipts.scan((room,)) {
                    let (k, (pos, stored)) = row?;
                    if pos <= upto {
                        out.push(self.receipt(k, stored)?);
                    }
                }
            }
            Some(since) => {
                let rows = self.tables.by_pos.range(
                    (room, since.saturating_add(1)),
                    (room, upto.saturating_add(1)),
                );
                for row in rows {
                    let (_, k) = row?;
                    let (r, u, kind, thread) = &k;
                    if let Some((_, stored)) = self.tables.receipts.get((*r, *u, kind, thread))? {
                        out.push(self.receipt(k, stored)?);
                    }
                }
            }
        }
        Ok(out)
    }
}
