//! Room state storage as deltas: a state group is the set of (state key → event) pairs at some
//! point of a room's history, stored as the changes against a parent group. A chain of deltas is
//! cut by a full snapshot every `MAX_CHAIN` groups, so reading any state costs at most one
//! snapshot plus `MAX_CHAIN` small deltas, and storing a new state costs only its changed keys.

use std::{collections::BTreeMap, sync::Arc};

use parking_lot::Mutex;

use crate::{
    error::{Error, Result},
    storage::{
        tables::{self, StateGroup},
        Batch, Db, ShortId, Table,
    },
};

/// State as a map from short state key to short event ID.
pub type StateMap = BTreeMap<ShortId, ShortId>;

pub type StateGroupId = u64;

const MAX_CHAIN: u32 = 32;
const CACHE_ENTRIES: usize = 128;

pub struct StateStore {
    groups: Table<tables::StateGroups>,
    next: std::sync::atomic::AtomicU64,
    // Recently read full states; rooms being written keep theirs in memory anyway.
    cache: Mutex<Vec<(StateGroupId, Arc<StateMap>)>>,
}

impl StateStore {
    pub fn new(db: Db) -> Result<Self> {
        let groups = Table::new(&db);
        let last = groups.last_group()?.unwrap_or(0);
        Ok(Self {
            groups,
            next: std::sync::atomic::AtomicU64::new(last + 1),
            cache: Mutex::new(Vec::new()),
        })
    }

    fn read_group(&self, id: StateGroupId) -> Result<StateGroup> {
        self.groups
            .get(id)?
            .ok_or_else(|| Error::internal(format!("missing state group {id}")))
    }

    /// The full state of a group.
    pub fn load(&self, id: StateGroupId) -> Result<Arc<StateMap>> {
        if let Some((_, m)) = self.cache.lock().iter().find(|(g, _)| *g == id) {
            return Ok(m.clone());
        }
        let mut chain = Vec::new();
        let mut next = Some(id);
        while let Some(g) = next {
            let group = self.read_group(g)?;
            next = group.parent;
            chain.push(group);
            if chain.len() > MAX_CHAIN as usize + 1 {
                return Err(Error::internal(format!("state group {id} chain too long")));
            }
        }
        let mut state = StateMap::new();
        for group in chain.iter().rev() {
            for k in &group.removed {
                state.remove(k);
            }
            state.extend(group.added.iter().copied());
        }
        let state = Arc::new(state);
        self.remember(id, state.clone());
        Ok(state)
    }

    fn remember(&self, id: StateGroupId, state: Arc<StateMap>) {
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_ENTRIES {
            cache.remove(0);
        }
        cache.push((id, state));
    }

    /// Stores `new_state` as a group, as a delta against `parent` (whose full state is
    /// `parent_state`) or as a snapshot when the chain is long. The rows go into `batch`.
    pub fn store_in(
        &self,
        batch: &mut Batch,
        parent: Option<(StateGroupId, &StateMap)>,
        new_state: &Arc<StateMap>,
    ) -> Result<StateGroupId> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let group = match parent {
            Some((pid, pstate)) => {
                let parent_chain = self.read_group(pid).map(|g| g.chain).unwrap_or(MAX_CHAIN);
                if parent_chain >= MAX_CHAIN {
                    snapshot(new_state)
                } else {
                    let added = new_state
                        .iter()
                        .filter(|(k, v)| pstate.get(k) != Some(v))
                        .map(|(k, v)| (*k, *v))
                        .collect();
                    let removed = pstate
                        .keys()
                        .filter(|k| !new_state.contains_key(k))
                        .copied()
                        .collect();
                    StateGroup {
                        parent: Some(pid),
                        chain: parent_chain + 1,
                        added,
                        removed,
                    }
                }
            }
            None => snapshot(new_state),
        };
        self.groups.put_in(batch, id, &group);
        self.remember(id, new_state.clone());
        Ok(id)
    }
}

fn snapshot(state: &StateMap) -> StateGroup {
    StateGroup {
        parent: None,
        chain: 0,
        added: state.iter().map(|(k, v)| (*k, *v)).collect(),
        removed: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::RocksDb;

    #[test]
    fn deltas_rebuild_the_same_state_across_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::new(Arc::new(RocksDb::open(dir.path(), 1 << 20).unwrap())).unwrap();
        let store = StateStore::new(db.clone()).unwrap();
        let mut state = StateMap::new();
        let mut group: Option<(StateGroupId, Arc<StateMap>)> = None;
        let mut history = Vec::new();
        for i in 1..=100u64 {
            state.insert(i % 7 + 1, i);
            if i % 5 == 0 {
                state.remove(&(i % 3 + 1));
            }
            let new = Arc::new(state.clone());
            let mut b = Batch::new();
            let id = store
                .store_in(&mut b, group.as_ref().map(|(g, s)| (*g, &**s)), &new)
                .unwrap();
            db.kv().write(b).unwrap();
            history.push((id, new.clone()));
            group = Some((id, new));
        }
        // A fresh store reads from disk, not the cache.
        let fresh = StateStore::new(db).unwrap();
        for (id, expected) in history {
            assert_eq!(*fresh.load(id).unwrap(), *expected, "group {id}");
        }
    }
}
