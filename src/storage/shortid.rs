//! Interning of string IDs (users, rooms, events, state keys) to u64 short IDs, so that hot keys
//! are fixed-width and small.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::schema::key;
use super::{decode_u64, Batch, Cf, Db, IdKind, Result, ShortId};

pub struct ShortIds {
    db: Db,
    next: AtomicU64,
    // Serialises creation so one string never gets two short IDs; lookups take no lock.
    create: Mutex<()>,
}

impl ShortIds {
    pub fn new(db: Db) -> Result<Self> {
        let next = db
            .get(Cf::Global, key::GLOBAL_NEXT_SHORT_ID)?
            .map(|v| decode_u64(Cf::Global, &v))
            .transpose()?
            .unwrap_or(1);
        Ok(Self {
            db,
            next: AtomicU64::new(next),
            create: Mutex::new(()),
        })
    }

    pub fn get(&self, kind: IdKind, id: &str) -> Result<Option<ShortId>> {
        self.db
            .get(Cf::ShortIds, &key::short_id(kind, id))?
            .map(|v| decode_u64(Cf::ShortIds, &v))
            .transpose()
    }

    /// Returns the short ID of `id`, creating and persisting one if it has none yet.
    pub fn get_or_create(&self, kind: IdKind, id: &str) -> Result<ShortId> {
        if let Some(s) = self.get(kind, id)? {
            return Ok(s);
        }
        let _guard = self.create.lock();
        if let Some(s) = self.get(kind, id)? {
            return Ok(s);
        }
        let short = self.next.fetch_add(1, Ordering::SeqCst);
        let mut b = Batch::new();
        let fwd = key::short_id(kind, id);
        b.put(Cf::ShortIds, fwd.clone(), short.to_be_bytes());
        b.put(Cf::ShortIdsRev, key::short_id_rev(short), fwd);
        b.put(
            Cf::Global,
            key::GLOBAL_NEXT_SHORT_ID,
            (short + 1).to_be_bytes(),
        );
        self.db.kv().write(b)?;
        Ok(short)
    }

    /// The string ID behind a short ID.
    pub fn lookup(&self, short: ShortId) -> Result<Option<(IdKind, String)>> {
        let Some(v) = self.db.get(Cf::ShortIdsRev, &key::short_id_rev(short))? else {
            return Ok(None);
        };
        let kind = match v.first() {
            Some(1) => IdKind::User,
            Some(2) => IdKind::Room,
            Some(3) => IdKind::Event,
            Some(4) => IdKind::StateKey,
            _ => {
                return Err(super::StorageError::Corrupt {
                    cf: Cf::ShortIdsRev.name(),
                    reason: "unknown id kind".into(),
                })
            }
        };
        let s = String::from_utf8(v[1..].to_vec()).map_err(|e| super::StorageError::Corrupt {
            cf: Cf::ShortIdsRev.name(),
            reason: e.to_string(),
        })?;
        Ok(Some((kind, s)))
    }
}
