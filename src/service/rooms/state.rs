//! Room state storage as deltas: a state group is the set of (state key → event) pairs at some
//! point of a room's history, stored as the changes against a parent group. A chain of deltas is
//! cut by a full snapshot every `MAX_CHAIN` groups, so reading any state costs at most one
//! snapshot plus `MAX_CHAIN` small deltas, and storing a new state costs only its changed keys.

use std::{collections::BTreeMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{events::StateEventType, OwnedEventId, RoomId};

use super::{events::Events, pdu::Pdu, RoomMeta};
use crate::{
    error::{Error, Result},
    storage::{
        tables::{self, StateGroup},
        Batch, Db, ShortId, ShortIds, Table,
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

/// A room's head (`rooms`: version, extremities, depth, current state group) and its state:
/// current (`room_state`), at any group, or built from events. State keys are interned here.
pub struct State {
    shortids: Arc<ShortIds>,
    events: Arc<Events>,
    groups: StateStore,
    rooms: Table<tables::Rooms<RoomMeta>>,
    room_state: Table<tables::RoomState>,
}

impl State {
    pub(super) fn new(db: &Db, shortids: Arc<ShortIds>, events: Arc<Events>) -> Result<Self> {
        Ok(Self {
            shortids,
            events,
            groups: StateStore::new(db.clone())?,
            rooms: Table::new(db),
            room_state: Table::new(db),
        })
    }

    /// Stores a new state group into `batch` (see [`StateStore::store_in`]).
    pub(super) fn store_in(
        &self,
        batch: &mut Batch,
        parent: Option<(StateGroupId, &StateMap)>,
        state: &Arc<StateMap>,
    ) -> Result<StateGroupId> {
        self.groups.store_in(batch, parent, state)
    }

    pub fn meta(&self, room: ShortId) -> Result<Option<RoomMeta>> {
        Ok(self.rooms.get(room)?)
    }

    /// Every room this server knows.
    pub fn all_rooms(&self) -> Result<Vec<ShortId>> {
        self.rooms
            .iter()
            .keys()
            .map(|k| k.map_err(Into::into))
            .collect()
    }

    /// The room's short ID and metadata, or 404 for a room this server does not know.
    pub fn known_room(&self, room_id: &RoomId) -> Result<(ShortId, RoomMeta)> {
        let room = self
            .events
            .room_short(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let meta = self
            .meta(room)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        Ok((room, meta))
    }

    pub fn state_key_short(
        &self,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<ShortId>> {
        Ok(self.shortids.state_key(&kind.to_string(), state_key)?)
    }

    pub fn state_key_of(&self, short: ShortId) -> Result<(StateEventType, String)> {
        match self.shortids.lookup_state_key(short)? {
            Some((t, sk)) => Ok((StateEventType::from(t), sk)),
            None => Err(Error::internal(format!(
                "short ID {short} is not a state key"
            ))),
        }
    }

    /// The current state event of a room for (type, state_key).
    pub fn current_state_event(
        &self,
        room: ShortId,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<ShortId>> {
        let Some(sk) = self.state_key_short(kind, state_key)? else {
            return Ok(None);
        };
        Ok(self.room_state.get((room, sk))?)
    }

    pub fn current_state_pdu(
        &self,
        room: ShortId,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Pdu>> {
        match self.current_state_event(room, kind, state_key)? {
            Some(e) => self.events.pdu(e),
            None => Ok(None),
        }
    }

    /// The full current state: (state key short, event short) pairs.
    pub fn current_state(&self, room: ShortId) -> Result<Vec<(ShortId, ShortId)>> {
        self.room_state
            .scan((room,))
            .map(|r| Ok(r.map(|((_, sk), ev)| (sk, ev))?))
            .collect()
    }

    /// The current state events of one type: (state key, event short). Reads the whole current
    /// state: for the few places that list a type (space children), not for hot paths.
    pub fn current_state_of_type(
        &self,
        room: ShortId,
        kind: &StateEventType,
    ) -> Result<Vec<(String, ShortId)>> {
        let mut out = Vec::new();
        for (sk, ev) in self.current_state(room)? {
            let (k, state_key) = self.state_key_of(sk)?;
            if &k == kind {
                out.push((state_key, ev));
            }
        }
        Ok(out)
    }

    pub fn state_at(&self, group: StateGroupId) -> Result<Arc<StateMap>> {
        self.groups.load(group)
    }

    pub(super) fn state_key_for(&self, kind: &StateEventType, state_key: &str) -> Result<ShortId> {
        Ok(self
            .shortids
            .get_or_create_state_key(&kind.to_string(), state_key)?)
    }

    /// The state after an event placed in the DAG.
    pub fn state_after(&self, short: ShortId) -> Result<Option<Arc<StateMap>>> {
        match self.events.event_meta(short)? {
            Some(m) => Ok(Some(self.groups.load(m.state_after)?)),
            None => Ok(None),
        }
    }

    /// The state before an event placed in the DAG.
    pub fn state_before(&self, short: ShortId) -> Result<Option<Arc<StateMap>>> {
        match self.events.event_meta(short)? {
            Some(m) => Ok(Some(self.groups.load(m.state_before)?)),
            None => Ok(None),
        }
    }

    /// A state map from stored events (by ID); every event must be stored.
    pub fn state_from_events(&self, ids: &[OwnedEventId]) -> Result<StateMap> {
        let mut keys = Vec::with_capacity(ids.len());
        let mut events = Vec::with_capacity(ids.len());
        for id in ids {
            let short = self
                .events
                .event_short(id)?
                .ok_or_else(|| Error::internal(format!("state event {id} is not stored")))?;
            let pdu = self
                .events
                .pdu(short)?
                .ok_or_else(|| Error::internal(format!("state event {id} is not stored")))?;
            let Some(sk) = &pdu.state_key else {
                continue;
            };
            keys.push((pdu.kind.to_string(), sk.clone()));
            events.push(short);
        }
        // All at once: a joined room's state is mostly keys this server has never seen.
        let keys: Vec<(&str, &str)> = keys.iter().map(|(t, sk)| (&**t, &**sk)).collect();
        let shorts = self.shortids.get_or_create_state_keys(&keys)?;
        Ok(shorts.into_iter().zip(events).collect())
    }

    /// `base` with a state event applied.
    pub fn state_with(&self, base: &StateMap, pdu: &Pdu, short: ShortId) -> Result<StateMap> {
        let mut out = base.clone();
        if let Some(sk) = &pdu.state_key {
            let sk = self.state_key_for(&StateEventType::from(pdu.kind.to_string()), sk)?;
            out.insert(sk, short);
        }
        Ok(out)
    }

    /// Event IDs of a state map.
    pub fn state_event_ids(&self, state: &StateMap) -> Result<Vec<OwnedEventId>> {
        state
            .values()
            .map(|e| self.events.event_id_of(*e))
            .collect()
    }

    /// The room's current state, as a map.
    pub fn current_state_map(&self, room: ShortId) -> Result<Arc<StateMap>> {
        let meta = self
            .meta(room)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        self.groups.load(meta.state_group)
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
