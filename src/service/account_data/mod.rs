//! Account data, global and per room (tags live here as `m.tag`): stored per (user, room, type)
//! with the stream position of its last change, and indexed by position for incremental /sync.

use std::sync::Arc;

use serde_json::Value as JsonValue;

use crate::{
    error::{Error, Result},
    service::stream::Stream,
    storage::{decode_u64, schema::key, Batch, Cf, Db, ShortId},
};

/// The room part of the key for global account data.
pub const GLOBAL: ShortId = 0;

pub struct Service {
    db: Db,
    stream: Arc<Stream>,
    /// Serialises writes, so replacing an entry and its position index is never interleaved.
    write: tokio::sync::Mutex<()>,
}

/// One account data entry.
pub struct Entry {
    pub room: ShortId,
    pub kind: String,
    pub content: JsonValue,
}

fn decode(cf: Cf, v: &[u8]) -> Result<(u64, JsonValue)> {
    let (pos, json) = v
        .split_at_checked(8)
        .ok_or_else(|| Error::internal(format!("corrupt {} value", cf.name())))?;
    let pos = decode_u64(cf, pos)?;
    let content = serde_json::from_slice(json)
        .map_err(|e| Error::internal(format!("corrupt {} value: {e}", cf.name())))?;
    Ok((pos, content))
}

impl Service {
    pub fn new(db: Db, stream: Arc<Stream>) -> Self {
        Self {
            db,
            stream,
            write: tokio::sync::Mutex::new(()),
        }
    }

    pub fn get(&self, user: ShortId, room: ShortId, kind: &str) -> Result<Option<JsonValue>> {
        match self
            .db
            .get(Cf::AccountData, &key::account_data(user, room, kind))?
        {
            Some(v) => Ok(Some(decode(Cf::AccountData, &v)?.1)),
            None => Ok(None),
        }
    }

    /// Sets (or, with `None`, removes) an entry and wakes the user's /sync.
    pub async fn set(
        &self,
        user: ShortId,
        room: ShortId,
        kind: &str,
        content: Option<&JsonValue>,
    ) -> Result<()> {
        let _guard = self.write.lock().await;
        let k = key::account_data(user, room, kind);
        let mut batch = Batch::new();
        if let Some(old) = self.db.get(Cf::AccountData, &k)? {
            let (old_pos, _) = decode(Cf::AccountData, &old)?;
            batch.delete(Cf::AccountDataByPos, key::pair(user, old_pos));
        }
        let mut reserved = self.stream.reserve();
        let pos = reserved.position_in(&mut batch);
        // A removal is a change too: it is stored as an empty object, which is what clients are
        // sent for deleted account data.
        let content = content.cloned().unwrap_or_else(|| serde_json::json!({}));
        let mut value = pos.to_be_bytes().to_vec();
        value.extend_from_slice(&serde_json::to_vec(&content).map_err(Error::internal)?);
        batch.put(Cf::AccountData, k, value);
        let mut index = room.to_be_bytes().to_vec();
        index.extend_from_slice(kind.as_bytes());
        batch.put(Cf::AccountDataByPos, key::pair(user, pos), index);
        reserved.write(&self.db, batch).await?;
        self.stream.wake([user]);
        Ok(())
    }

    /// Entries changed in (since, upto], or every entry when `since` is `None`.
    pub fn changes(&self, user: ShortId, since: Option<u64>, upto: u64) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        match since {
            None => {
                for row in self.db.scan_prefix(Cf::AccountData, &key::u64_key(user)) {
                    let (k, v) = row?;
                    let (room, kind) = split_entry_key(&k)?;
                    let (pos, content) = decode(Cf::AccountData, &v)?;
                    if pos <= upto {
                        out.push(Entry {
                            room,
                            kind,
                            content,
                        });
                    }
                }
            }
            Some(since) => {
                let rows = self.db.scan_range(
                    Cf::AccountDataByPos,
                    &key::pair(user, since.saturating_add(1)),
                    &key::pair(user, upto.saturating_add(1)),
                    false,
                );
                for row in rows {
                    let (_, v) = row?;
                    let (room, kind) = split_index(&v)?;
                    if let Some(content) = self.get(user, room, &kind)? {
                        out.push(Entry {
                            room,
                            kind,
                            content,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

fn split_entry_key(k: &[u8]) -> Result<(ShortId, String)> {
    let room = k
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::internal("corrupt account_data key"))?;
    let kind = String::from_utf8_lossy(k.get(16..).unwrap_or_default()).into_owned();
    Ok((room, kind))
}

fn split_index(v: &[u8]) -> Result<(ShortId, String)> {
    let room = v
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::internal("corrupt account_data_by_pos value"))?;
    Ok((room, String::from_utf8_lossy(&v[8..]).into_owned()))
}
