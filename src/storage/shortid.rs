//! Interning of string IDs (users, rooms, events, state keys) to u64 short IDs, so that hot keys
//! are fixed-width and small.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
};

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
        // The highest allocated ID is the last key of the reverse map: IDs allocated inside other
        // batches (see `allocate_in`) leave no counter behind.
        let last = match db.scan_range(Cf::ShortIdsRev, &[0xff; 9], &[], true).next() {
            Some(row) => decode_u64(Cf::ShortIdsRev, &row?.0)?,
            None => 0,
        };
        let stored = db
            .get(Cf::Global, key::GLOBAL_NEXT_SHORT_ID)?
            .map(|v| decode_u64(Cf::Global, &v))
            .transpose()?
            .unwrap_or(1);
        let next = stored.max(last + 1);
        Ok(Self {
            db,
            next: AtomicU64::new(next),
            create: Mutex::new(()),
        })
    }

    pub fn get(&self, kind: IdKind, id: &str) -> Result<Option<ShortId>> {
        self.get_bytes(kind, id.as_bytes())
    }

    pub fn get_bytes(&self, kind: IdKind, id: &[u8]) -> Result<Option<ShortId>> {
        self.db
            .get(Cf::ShortIds, &key::short_id(kind, id))?
            .map(|v| decode_u64(Cf::ShortIds, &v))
            .transpose()
    }

    /// Returns the short ID of `id`, creating and persisting one if it has none yet.
    pub fn get_or_create(&self, kind: IdKind, id: &str) -> Result<ShortId> {
        self.get_or_create_bytes(kind, id.as_bytes())
    }

    pub fn get_or_create_bytes(&self, kind: IdKind, id: &[u8]) -> Result<ShortId> {
        if let Some(s) = self.get_bytes(kind, id)? {
            return Ok(s);
        }
        let _guard = self.create.lock();
        if let Some(s) = self.get_bytes(kind, id)? {
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

    /// `get_or_create_bytes` for many IDs of one kind, with one write for all the new ones:
    /// adopting a remote room's state interns a state key and a user per member, and a synced
    /// write each made a 1,000-member room thousands of fsyncs. Results follow `ids`' order.
    pub fn get_or_create_many(&self, kind: IdKind, ids: &[&[u8]]) -> Result<Vec<ShortId>> {
        let mut out = ids
            .iter()
            .map(|id| self.get_bytes(kind, id))
            .collect::<Result<Vec<_>>>()?;
        if out.iter().all(Option::is_some) {
            return Ok(out.into_iter().flatten().collect());
        }
        let _guard = self.create.lock();
        let mut b = Batch::new();
        let mut created: HashMap<&[u8], ShortId> = HashMap::new();
        for (slot, id) in out.iter_mut().zip(ids) {
            if slot.is_some() {
                continue;
            }
            // Someone else may have created it since the lookup above, or it is listed twice.
            if let Some(s) = self.get_bytes(kind, id)?.or(created.get(id).copied()) {
                *slot = Some(s);
                continue;
            }
            let short = self.next.fetch_add(1, Ordering::SeqCst);
            let fwd = key::short_id(kind, id);
            b.put(Cf::ShortIds, fwd.clone(), short.to_be_bytes());
            b.put(Cf::ShortIdsRev, key::short_id_rev(short), fwd);
            created.insert(id, short);
            *slot = Some(short);
        }
        if !created.is_empty() {
            let next = self.next.load(Ordering::SeqCst);
            b.put(Cf::Global, key::GLOBAL_NEXT_SHORT_ID, next.to_be_bytes());
            self.db.kv().write(b)?;
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Allocates a short ID for an ID known to be new (an event ID, which is unique by content
    /// hash), adding the mappings to `batch` so they land with the event in one write.
    pub fn allocate_in(&self, batch: &mut Batch, kind: IdKind, id: &str) -> ShortId {
        let short = self.next.fetch_add(1, Ordering::SeqCst);
        let fwd = key::short_id(kind, id.as_bytes());
        batch.put(Cf::ShortIds, fwd.clone(), short.to_be_bytes());
        batch.put(Cf::ShortIdsRev, key::short_id_rev(short), fwd);
        short
    }

    /// Allocates a number from the same sequence for a stream position that has no string ID
    /// (a receipt, an account data change, ...). The reverse map records it, so the counter never
    /// hands it out again after a restart.
    pub fn allocate_position_in(&self, batch: &mut Batch) -> ShortId {
        let short = self.next.fetch_add(1, Ordering::SeqCst);
        batch.put(Cf::ShortIdsRev, key::short_id_rev(short), vec![0u8]);
        short
    }

    /// The next number the sequence will hand out.
    pub fn peek_next(&self) -> ShortId {
        self.next.load(Ordering::SeqCst)
    }

    /// The short ID of a state key: an event type and a state key, interned together.
    pub fn state_key(&self, event_type: &str, state_key: &str) -> Result<Option<ShortId>> {
        self.get_bytes(IdKind::StateKey, &key::state_key_id(event_type, state_key))
    }

    /// The short ID of a state key, created if it has none yet.
    pub fn get_or_create_state_key(&self, event_type: &str, state_key: &str) -> Result<ShortId> {
        self.get_or_create_bytes(IdKind::StateKey, &key::state_key_id(event_type, state_key))
    }

    /// `get_or_create_state_key` for many (event type, state key) pairs in one write; results
    /// follow `keys`' order.
    pub fn get_or_create_state_keys(&self, keys: &[(&str, &str)]) -> Result<Vec<ShortId>> {
        let ids: Vec<Vec<u8>> = keys
            .iter()
            .map(|(t, sk)| key::state_key_id(t, sk))
            .collect();
        let ids: Vec<&[u8]> = ids.iter().map(Vec::as_slice).collect();
        self.get_or_create_many(IdKind::StateKey, &ids)
    }

    /// The (event type, state key) behind a short ID, or `None` if it is not a state key.
    pub fn lookup_state_key(&self, short: ShortId) -> Result<Option<(String, String)>> {
        let Some((IdKind::StateKey, b)) = self.lookup_bytes(short)? else {
            return Ok(None);
        };
        key::split_state_key_id(&b)
            .map(|(t, sk)| Some((t.to_owned(), sk.to_owned())))
            .ok_or_else(|| super::StorageError::Corrupt {
                cf: Cf::ShortIdsRev.name(),
                reason: format!("state key {short}"),
            })
    }

    /// The string ID behind a short ID.
    pub fn lookup(&self, short: ShortId) -> Result<Option<(IdKind, String)>> {
        Ok(self
            .lookup_bytes(short)?
            .map(|(k, b)| (k, String::from_utf8_lossy(&b).into_owned())))
    }

    /// The interned bytes behind a short ID.
    pub fn lookup_bytes(&self, short: ShortId) -> Result<Option<(IdKind, Vec<u8>)>> {
        let Some(v) = self.db.get(Cf::ShortIdsRev, &key::short_id_rev(short))? else {
            return Ok(None);
        };
        Self::decode_rev(v)
    }

    /// The string IDs behind many short IDs, in their order, in one read.
    pub fn lookup_many(&self, shorts: &[ShortId]) -> Result<Vec<Option<(IdKind, String)>>> {
        let keys: Vec<_> = shorts.iter().map(|s| key::short_id_rev(*s)).collect();
        let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        self.db
            .multi_get(Cf::ShortIdsRev, &refs)?
            .into_iter()
            .map(|v| match v {
                None => Ok(None),
                Some(v) => Ok(Self::decode_rev(v)?
                    .map(|(k, b)| (k, String::from_utf8_lossy(&b).into_owned()))),
            })
            .collect()
    }

    fn decode_rev(v: Vec<u8>) -> Result<Option<(IdKind, Vec<u8>)>> {
        let kind = match v.first() {
            // A bare stream position (see `allocate_position_in`): no string behind it.
            Some(0) => return Ok(None),
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
        Ok(Some((kind, v[1..].to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::rocks::RocksDb;

    fn open(dir: &std::path::Path) -> ShortIds {
        let kv = Arc::new(RocksDb::open(dir, 1 << 20).unwrap());
        ShortIds::new(Db::new(kv).unwrap()).unwrap()
    }

    #[test]
    fn many_agrees_with_one_at_a_time_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = {
            let ids = open(dir.path());
            let a = ids.get_or_create(IdKind::User, "@a:x").unwrap();
            let many = ids
                .get_or_create_many(IdKind::User, &[b"@b:x", b"@a:x", b"@c:x", b"@b:x"])
                .unwrap();
            assert_eq!(many[1], a);
            assert_eq!(many[0], many[3], "a repeated ID gets one short ID");
            assert_ne!(many[0], many[2]);
            assert!(many[0] != a && many[2] != a);
            assert_eq!(ids.get(IdKind::User, "@c:x").unwrap(), Some(many[2]));
            (a, many[0], many[2])
        };
        let ids = open(dir.path());
        assert_eq!(
            ids.get_or_create_many(IdKind::User, &[b"@a:x", b"@b:x", b"@c:x"])
                .unwrap(),
            vec![a, b, c]
        );
        let d = ids.get_or_create(IdKind::User, "@d:x").unwrap();
        assert!(d > a.max(b).max(c), "the counter went past the batch");
        assert_eq!(ids.lookup(b).unwrap(), Some((IdKind::User, "@b:x".into())));
    }

    #[test]
    fn state_keys_are_interned_as_the_type_length_type_and_state_key() {
        let dir = tempfile::tempdir().unwrap();
        let ids = open(dir.path());
        let member = ids
            .get_or_create_state_key("m.room.member", "@a:x")
            .unwrap();
        // The layout databases hold: the type's length (u32 BE), the type, the state key.
        let raw = [&13u32.to_be_bytes()[..], b"m.room.member@a:x"].concat();
        assert_eq!(ids.get_bytes(IdKind::StateKey, &raw).unwrap(), Some(member));
        assert_eq!(
            ids.state_key("m.room.member", "@a:x").unwrap(),
            Some(member)
        );
        assert_eq!(ids.state_key("m.room.membe", "r@a:x").unwrap(), None);
        let many = ids
            .get_or_create_state_keys(&[("m.room.name", ""), ("m.room.member", "@a:x")])
            .unwrap();
        assert_eq!(many[1], member);
        assert_eq!(
            ids.lookup_state_key(many[0]).unwrap(),
            Some(("m.room.name".into(), String::new()))
        );
        let user = ids.get_or_create(IdKind::User, "@a:x").unwrap();
        assert_eq!(ids.lookup_state_key(user).unwrap(), None);
    }
}
