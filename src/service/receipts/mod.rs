//! Read receipts (m.read, m.read.private; threaded or not): the latest per (room, user, type,
//! thread), indexed by stream position so /sync sends only what changed.

use std::sync::Arc;

use ruma::{OwnedEventId, OwnedUserId};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    service::{rooms, stream::Stream},
    storage::{decode_u64, schema::key, Batch, Cf, Db, ShortId},
};

#[derive(Serialize, Deserialize)]
struct Stored {
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

pub struct Service {
    db: Db,
    stream: Arc<Stream>,
    rooms: Arc<rooms::Service>,
    write: tokio::sync::Mutex<()>,
}

impl Service {
    pub fn new(db: Db, stream: Arc<Stream>, rooms: Arc<rooms::Service>) -> Self {
        Self {
            db,
            stream,
            rooms,
            write: tokio::sync::Mutex::new(()),
        }
    }

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
        let k = key::receipt(room, user, kind, thread);
        let mut batch = Batch::new();
        if let Some(old) = self.db.get(Cf::Receipts, &k)? {
            let old_pos = decode_u64(Cf::Receipts, old.get(..8).unwrap_or_default())?;
            batch.delete(Cf::ReceiptsByPos, key::pair(room, old_pos));
        }
        let mut reserved = self.stream.reserve();
        let pos = reserved.position_in(&mut batch);
        let mut value = pos.to_be_bytes().to_vec();
        value.extend_from_slice(
            &serde_json::to_vec(&Stored {
                event_id: event_id.to_owned(),
                ts,
            })
            .map_err(Error::internal)?,
        );
        batch.put(Cf::ReceiptsByPos, key::pair(room, pos), k.clone());
        batch.put(Cf::Receipts, k, value);
        reserved.write(&self.db, batch).await?;
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
        match self
            .db
            .get(Cf::Receipts, &key::receipt(room, user, kind, thread))?
        {
            Some(v) => Ok(Some(self.decode(&v)?.1.event_id)),
            None => Ok(None),
        }
    }

    fn decode(&self, v: &[u8]) -> Result<(u64, Stored)> {
        let (pos, json) = v
            .split_at_checked(8)
            .ok_or_else(|| Error::internal("corrupt receipt"))?;
        Ok((
            decode_u64(Cf::Receipts, pos)?,
            serde_json::from_slice(json)
                .map_err(|e| Error::internal(format!("corrupt receipt: {e}")))?,
        ))
    }

    fn receipt(&self, k: &[u8], v: &[u8]) -> Result<Option<Receipt>> {
        let Some((_, user, kind, thread)) = key::split_receipt(k) else {
            return Err(Error::internal("corrupt receipt key"));
        };
        let (_, stored) = self.decode(v)?;
        Ok(Some(Receipt {
            user: self.rooms.user_id_of(user)?,
            kind: kind.to_owned(),
            thread: thread.to_owned(),
            event_id: stored.event_id,
            ts: stored.ts,
        }))
    }

    /// Receipts of a room changed in (since, upto], or all of them when `since` is `None`.
    pub fn changes(&self, room: ShortId, since: Option<u64>, upto: u64) -> Result<Vec<Receipt>> {
        let mut out = Vec::new();
        match since {
            None => {
                for row in self.db.scan_prefix(Cf::Receipts, &key::u64_key(room)) {
                    let (k, v) = row?;
                    let pos = decode_u64(Cf::Receipts, v.get(..8).unwrap_or_default())?;
                    if pos <= upto {
                        out.extend(self.receipt(&k, &v)?);
                    }
                }
            }
            Some(since) => {
                let rows = self.db.scan_range(
                    Cf::ReceiptsByPos,
                    &key::pair(room, since.saturating_add(1)),
                    &key::pair(room, upto.saturating_add(1)),
                    false,
                );
                for row in rows {
                    let (_, k) = row?;
                    if let Some(v) = self.db.get(Cf::Receipts, &k)? {
                        out.extend(self.receipt(&k, &v)?);
                    }
                }
            }
        }
        Ok(out)
    }
}
