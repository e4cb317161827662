//! Account data, global and per room (tags live here as `m.tag`): stored per (user, room, type)
//! with the stream position of its last change, and indexed by position for incremental /sync.

use std::sync::Arc;

use serde_json::Value as JsonValue;

use super::tables::service;
use crate::{
    error::Result,
    service::stream::Stream,
    storage::{tables, Batch, ShortId},
};

/// The room part of the key for global account data.
pub const GLOBAL: ShortId = 0;

service! {
    tables {
        entries: tables::AccountData,
        by_pos: tables::AccountDataByPos,
    }
    deps {
        stream: Arc<Stream>,
    }
    state {
        /// Serialises writes, so replacing an entry and its position index is never interleaved.
        write: tokio::sync::Mutex<()> = tokio::sync::Mutex::new(()),
    }
}

/// One account data entry.
pub struct Entry {
    pub room: ShortId,
    pub kind: String,
    pub content: JsonValue,
    /// The stream position of its last change.
    pub pos: u64,
}

impl Service {
    pub fn get(&self, user: ShortId, room: ShortId, kind: &str) -> Result<Option<JsonValue>> {
        Ok(self
            .tables
            .entries
            .get((user, room, kind))?
            .map(|(_, content)| content))
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
        let mut batch = Batch::new();
        if let Some((old_pos, _)) = self.tables.entries.get((user, room, kind))? {
            self.tables.by_pos.delete_in(&mut batch, (user, old_pos));
        }
        let mut reserved = self.stream.reserve();
        let pos = reserved.position_in(&mut batch);
        // A removal is a change too: it is stored as an empty object, which is what clients are
        // sent for deleted account data.
        let content = content.cloned().unwrap_or_else(|| serde_json::json!({}));
        self.tables
            .entries
            .put_in(&mut batch, (user, room, kind), &(pos, content));
        self.tables
            .by_pos
            .put_in(&mut batch, (user, pos), &(room, kind.to_owned()));
        reserved.write(&self.db, batch).await?;
        self.stream.wake([user]);
        Ok(())
    }

    /// Entries changed in (since, upto], or every entry when `since` is `None`.
    pub fn changes(&self, user: ShortId, since: Option<u64>, upto: u64) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        match since {
            None => {
                for row in self.tables.entries.scan((user,)) {
                    let ((_, room, kind), (pos, content)) = row?;
                    if pos <= upto {
                        out.push(Entry {
                            room,
                            kind,
                            content,
                            pos,
                        });
                    }
                }
            }
            Some(since) => {
                let rows = self.tables.by_pos.range(
                    (user, since.saturating_add(1)),
                    (user, upto.saturating_add(1)),
                );
                for row in rows {
                    let ((_, pos), (room, kind)) = row?;
                    if let Some(content) = self.get(user, room, &kind)? {
                        out.push(Entry {
                            room,
                            kind,
                            content,
                            pos,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}
