//! The storage side of events that come from other servers. Events whose place in the DAG we do
//! not know (auth chains, the state a join hands us) are *outliers*: stored for their content
//! only. Events placed in the DAG get the state before them, which is a state resolution when
//! their prev_events disagree, and move the room's current state on, resolving again against the
//! other forward extremities when the DAG has forked.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    events::{room::member::MembershipState, StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    state_res, CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch,
    OwnedEventId, OwnedRoomId, OwnedServerName, RoomVersionId, UserId,
};

use state_res::utils::event_id_set::EventIdSet;

use super::{
    commit::{EventCommit, InRoom, Place, Placed},
    pdu::Pdu,
    state::StateMap,
    RoomMeta, Service,
};
use crate::{
    error::{Error, Result},
    storage::{tables::QueuedItem, Batch, IdKind, ShortId},
};

/// Flags of events that are stored but not part of the room's timeline.
pub const OUTLIER: u8 = 1;
pub const REJECTED: u8 = 2;
pub const SOFT_FAILED: u8 = 4;

/// A state map keyed the way ruma's state resolution wants it.
pub type RumaStateMap = state_res::StateMap<OwnedEventId>;

/// Which servers a persisted local (or relayed) event goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// Not ours to send (it came from its origin, which sends it to everyone).
    No,
    /// Send to every other server in the room (our own events, joins we signed as the resident).
    ToRoom,
}

impl Service {
    /// The rules of a room version, as a service-level error when unsupported.
    pub fn version_rules(version: &RoomVersionId) -> Result<RoomVersionRules> {
        Self::rules(version)
    }

    /// Stores events for their content only (auth chains, fetched state). Already stored ones are
    /// left alone.
    pub async fn store_outliers(
        &self,
        events: Vec<(OwnedEventId, CanonicalJsonObject, u8)>,
    ) -> Result<()> {
        let _guard = self.outlier_lock.lock().await;
        let mut batch = Batch::new();
        let mut reserved = self.stream.reserve();
        let mut commits = Vec::new();
        let mut seen = HashSet::new();
        for (id, object, flags) in events {
            if !seen.insert(id.clone()) || self.events.event_short(&id)?.is_some() {
                continue;
            }
            let short = reserved.event_in(&mut batch, id.as_str());
            commits.push(EventCommit {
                short,
                pdu: Pdu::from_canonical(id.clone(), &object).ok(),
                event_id: id,
                object,
                place: Place::Outlier(flags | OUTLIER),
                current: None,
                redacts: None,
                txn: None,
                relay: Relay::No,
            });
        }
        if commits.is_empty() {
            return Ok(());
        }
        // Outside any room's DAG: no room rows, no notifications.
        self.commit_in(&mut batch, None, &commits)?;
        Ok(reserved.write(&self.db, batch).await?)
    }

    /// The conflicted state subgraph (state resolution v2.1): events on an auth-event path from
    /// one conflicted event to another, conflicted events included. `fetch` finds events (the one
    /// being placed is not written yet); events we lack end their path.
    fn conflicted_subgraph(
        &self,
        conflicted: &state_res::StateMap<Vec<OwnedEventId>>,
        fetch: &dyn Fn(&EventId) -> Option<Pdu>,
    ) -> Option<HashSet<OwnedEventId>> {
        let targets: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
        // reaches[x]: x is conflicted, or one of its auth events reaches a conflicted event.
        let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
        fn visit(
            id: &EventId,
            targets: &HashSet<OwnedEventId>,
            reaches: &mut HashMap<OwnedEventId, bool>,
            fetch: &dyn Fn(&EventId) -> Option<Pdu>,
            depth: usize,
        ) -> Option<bool> {
            if let Some(r) = reaches.get(id) {
                return Some(*r);
            }
            if depth > 10_000 {
                return None;
            }
            let is_target = targets.contains(id);
            // Mark first so cycles (which valid DAGs do not have) end.
            reaches.insert(id.to_owned(), is_target);
            let Some(pdu) = fetch(id) else {
                return Some(is_target);
            };
            let mut r = is_target;
            for a in &pdu.auth_events {
                if visit(a, targets, reaches, fetch, depth + 1)? {
                    r = true;
                }
            }
            reaches.insert(id.to_owned(), r);
            Some(r)
        }
        for t in &targets {
            visit(t, &targets, &mut reaches, fetch, 0)?;
        }
        Some(
            reaches
                .into_iter()
                .filter(|(_, r)| *r)
                .map(|(id, _)| id)
                .collect(),
        )
    }

    /// Resolves diverging states of a room (state resolution v2, or v2.1 for v12 rooms).
    pub fn resolve(&self, rules: &RoomVersionRules, states: &[Arc<StateMap>]) -> Result<StateMap> {
        let Some(first) = states.first() else {
            return Ok(StateMap::new());
        };
        if states.iter().all(|s| s == first) {
            return Ok((**first).clone());
        }
        self.resolve_with(rules, states, None)
    }

    /// As `resolve`, where `extra` is an event (with its short ID) not written yet that the
    /// states may hold.
    fn resolve_with(
        &self,
        rules: &RoomVersionRules,
        states: &[Arc<StateMap>],
        extra: Option<(ShortId, &Pdu)>,
    ) -> Result<StateMap> {
        let v2 = rules
            .state_res
            .v2_rules()
            .ok_or_else(|| Error::internal("state resolution v1 is not supported"))?;
        let id_of = |short: ShortId| -> Result<OwnedEventId> {
            match extra {
                Some((s, pdu)) if s == short => Ok(pdu.event_id.clone()),
                _ => self.events.event_id_of(short),
            }
        };
        let maps = states
            .iter()
            .map(|state| {
                let mut out = HashMap::with_capacity(state.len());
                for (sk, ev) in state.iter() {
                    out.insert(self.state.state_key_of(*sk)?, id_of(*ev)?);
                }
                Ok(out)
            })
            .collect::<Result<Vec<RumaStateMap>>>()?;
        let chains = maps
            .iter()
            .map(|m| {
                let mut chain = self.events.auth_chain(m.values().cloned())?;
                chain.extend(m.values().cloned());
                if let Some((_, pdu)) = extra {
                    if m.values().any(|id| *id == pdu.event_id) {
                        chain.extend(self.events.auth_chain(pdu.auth_events.iter().cloned())?);
                        chain.extend(pdu.auth_events.iter().cloned());
                    }
                }
                Ok(chain.into_iter().collect::<EventIdSet<OwnedEventId>>())
            })
            .collect::<Result<Vec<_>>>()?;
        let fetch = |id: &EventId| -> Option<Pdu> {
            match extra {
                Some((_, pdu)) if pdu.event_id == id => Some(pdu.clone()),
                _ => self.events.pdu_by_id(id).ok().flatten(),
            }
        };
        let resolved = state_res::resolve(
            &rules.authorization,
            v2,
            maps.iter(),
            chains,
            &fetch,
            |c: &state_res::StateMap<Vec<OwnedEventId>>| {
                self.conflicted_subgraph(c, &fetch)
                    .map(|s| s.into_iter().collect::<EventIdSet<OwnedEventId>>())
            },
        )
        .map_err(|e| Error::internal(format!("state resolution failed: {e}")))?;
        let mut out = StateMap::new();
        for ((kind, sk), id) in &resolved {
            let ev = match extra {
                Some((s, pdu)) if pdu.event_id == *id => s,
                _ => self.events.event_short(id)?.ok_or_else(|| {
                    Error::internal(format!("resolved state event {id} not stored"))
                })?,
            };
            out.insert(self.state.state_key_for(kind, sk)?, ev);
        }
        Ok(out)
    }

    /// Queues an event for every other server in the room, in the event's own write.
    pub(super) fn queue_outgoing_in(
        &self,
        batch: &mut Batch,
        room: ShortId,
        short: ShortId,
        pdu: &Pdu,
        skip: Option<&ruma::ServerName>,
    ) -> Result<Vec<OwnedServerName>> {
        let mut servers = self.membership.remote_servers(room)?;
        // The target of a membership change hears of it even when it takes them out.
        if pdu.kind == TimelineEventType::RoomMember {
            if let Some(target) = pdu.state_key.as_deref().and_then(|s| UserId::parse(s).ok()) {
                let server = target.server_name();
                if server != self.server_name && !servers.iter().any(|s| s == server) {
                    servers.push(server.to_owned());
                }
            }
        }
        servers.retain(|s| Some(&**s) != skip);
        for server in &servers {
            self.tables
                .fed_queue
                .put_in(batch, (server.as_str(), short), &QueuedItem::Pdu(short));
        }
        Ok(servers)
    }

    /// Hands destinations with new queued rows to the federation sender.
    pub fn announce_destinations(&self, servers: Vec<OwnedServerName>) {
        if servers.is_empty() {
            return;
        }
        if let Some(tx) = self.outgoing_listener.get() {
            let _ = tx.send(servers);
        }
    }

    /// Where queued destinations are announced, set once at start.
    pub fn set_outgoing_listener(
        &self,
        tx: tokio::sync::mpsc::UnboundedSender<Vec<OwnedServerName>>,
    ) {
        let _ = self.outgoing_listener.set(tx);
    }

    /// Takes a room over from the state another server handed us (joining a remote room): the
    /// room's current state becomes `state`, and its heads `extremities`.
    pub async fn adopt_room(
        &self,
        room_id: &OwnedRoomId,
        version: &RoomVersionId,
        create_event: OwnedEventId,
        state: StateMap,
        extremities: Vec<OwnedEventId>,
        depth: u64,
    ) -> Result<ShortId> {
        let room = self
            .shortids
            .get_or_create(IdKind::Room, room_id.as_str())?;
        let slot = self.room_lock(room);
        let _guard = slot.lock().await;
        let old = self.state.meta(room)?;
        let old_state = match &old {
            Some(m) => self.state.state_at(m.state_group)?,
            None => Arc::new(StateMap::new()),
        };
        let state = Arc::new(state);
        let mut batch = Batch::new();
        let group = self.state.store_in(
            &mut batch,
            old.as_ref().map(|m| (m.state_group, &*old_state)),
            &state,
        )?;
        self.write_current_state_diff(&mut batch, room, &old_state, &state, None)?;
        let meta = RoomMeta {
            room_id: room_id.clone(),
            version: version.clone(),
            state_group: group,
            extremities,
            depth,
            create_event,
        };
        self.tables.rooms.put_in(&mut batch, room, &meta);
        self.db.write(batch).await?;
        self.membership.servers_changed(room);
        Ok(room)
    }

    /// Places an event from another server (or one we relay as the resident server of a join) in
    /// the room's DAG. `state_before` is the state its prev_events lead to; `flags` marks it
    /// soft-failed (stored with its state, never in the timeline or a head). Returns its short ID.
    #[allow(clippy::too_many_arguments)]
    pub async fn persist_remote(
        &self,
        room: ShortId,
        rules: &RoomVersionRules,
        event_id: &EventId,
        object: CanonicalJsonObject,
        pdu: &Pdu,
        state_before: Arc<StateMap>,
        flags: u8,
        relay: Relay,
    ) -> Result<ShortId> {
        let slot = self.room_lock(room);
        let _guard = slot.lock().await;
        if let Some(short) = self.events.event_short(event_id)? {
            if self.events.event_meta(short)?.is_some() {
                return Ok(short);
            }
        }
        let meta = self
            .state
            .meta(room)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let current = self.state.state_at(meta.state_group)?;
        let mut batch = Batch::new();
        let mut reserved = self.stream.reserve();
        // An event we held as an outlier keeps its short ID and gains its place in the DAG.
        let short = match self.events.event_short(event_id)? {
            Some(s) => s,
            None => reserved.event_in(&mut batch, event_id.as_str()),
        };
        let (commit, new_meta) = self.place_remote(
            &mut batch,
            room,
            &meta,
            &current,
            rules,
            short,
            event_id,
            object,
            pdu,
            state_before,
            flags,
            relay,
        )?;
        let servers = self
            .commit_one(batch, reserved, room, &new_meta, commit)
            .await?;
        if pdu.kind == TimelineEventType::RoomMember {
            self.membership.servers_changed(room);
        }
        if flags == 0 {
            self.wake_room(room, &[short]);
        }
        self.outboxes_written(room);
        self.announce_destinations(servers);
        Ok(short)
    }

    /// Where a remote event goes: the state groups before and after it (stored into `batch`),
    /// the room's new current state and heads when it joins the timeline, and what its commit
    /// writes.
    #[allow(clippy::too_many_arguments)]
    fn place_remote(
        &self,
        batch: &mut Batch,
        room: ShortId,
        meta: &RoomMeta,
        current: &Arc<StateMap>,
        rules: &RoomVersionRules,
        short: ShortId,
        event_id: &EventId,
        object: CanonicalJsonObject,
        pdu: &Pdu,
        state_before: Arc<StateMap>,
        flags: u8,
        relay: Relay,
    ) -> Result<(EventCommit, RoomMeta)> {
        let before_group =
            self.state
                .store_in(batch, Some((meta.state_group, current)), &state_before)?;
        let after = Arc::new(self.state.state_with(&state_before, pdu, short)?);
        let after_group = if pdu.state_key.is_some() {
            self.state
                .store_in(batch, Some((before_group, &state_before)), &after)?
        } else {
            before_group
        };
        let placed = Placed {
            depth: pdu.depth,
            state_before: before_group,
            state_after: after_group,
        };
        let mut new_meta = meta.clone();
        new_meta.depth = meta.depth.max(pdu.depth);
        let mut commit = EventCommit {
            short,
            event_id: event_id.to_owned(),
            object,
            pdu: Some(pdu.clone()),
            place: Place::Hidden(placed, flags),
            current: None,
            redacts: None,
            txn: None,
            relay,
        };
        if flags == 0 {
            // The new heads: this event replaces the heads it builds on.
            let builds_on_all = meta.extremities.iter().all(|e| pdu.prev_events.contains(e));
            new_meta
                .extremities
                .retain(|e| !pdu.prev_events.contains(e) && e != event_id);
            new_meta.extremities.push(event_id.to_owned());
            let new_current = if builds_on_all {
                after.clone()
            } else {
                Arc::new(self.resolve_with(
                    rules,
                    &[current.clone(), after.clone()],
                    Some((short, pdu)),
                )?)
            };
            new_meta.state_group = if new_current == after {
                after_group
            } else if new_current == *current {
                meta.state_group
            } else {
                self.state
                    .store_in(batch, Some((after_group, &after)), &new_current)?
            };
            if pdu.kind == TimelineEventType::RoomRedaction {
                commit.redacts = self
                    .redaction_target(room, rules, pdu, &after)?
                    .map(|target| (target, rules.clone()));
            }
            commit.place = Place::Timeline(placed);
            commit.current = Some((current.clone(), new_current));
        }
        tracing::debug!(room_id = %meta.room_id, %event_id, kind = %pdu.kind, flags, "remote event placed");
        Ok((commit, new_meta))
    }

    /// The event a remote redaction may redact: in the same room, and sent from the redacting
    /// server or redacted by someone with the power to.
    fn redaction_target(
        &self,
        room: ShortId,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        state: &StateMap,
    ) -> Result<Option<ShortId>> {
        let Some(target) = &pdu.redacts else {
            return Ok(None);
        };
        let Some(t_short) = self.events.event_short(target)? else {
            return Ok(None);
        };
        if self
            .events
            .event_meta(t_short)?
            .is_none_or(|m| m.room != room)
        {
            return Ok(None);
        }
        let Some(t_pdu) = self.events.pdu(t_short)? else {
            return Ok(None);
        };
        let allowed = t_pdu.sender.server_name() == pdu.sender.server_name()
            || self
                .power_levels(rules, state)?
                .user_can_redact_event_of_other(&pdu.sender);
        Ok(allowed.then_some(t_short))
    }

    /// A membership event for `user` as the resident server would have it built, unsigned: the
    /// template of make_join / make_leave / make_knock. It is checked against the current state,
    /// so a join that could not succeed is refused here.
    pub fn membership_template(
        &self,
        room: ShortId,
        user: &UserId,
        content: serde_json::Value,
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        self.member_event_template(room, user, user, content)
    }

    /// A membership event of `sender` about `target` on the room's current head, unsigned and
    /// checked against the current state.
    pub fn member_event_template(
        &self,
        room: ShortId,
        sender: &UserId,
        target: &UserId,
        content: serde_json::Value,
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        let user = target;
        let meta = self
            .state
            .meta(room)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = Self::rules(&meta.version)?;
        let state = self.state.state_at(meta.state_group)?;
        let raw = serde_json::value::to_raw_value(&content).map_err(Error::internal)?;
        let auth_types = state_res::auth_types_for_event(
            &TimelineEventType::RoomMember,
            sender,
            Some(user.as_str()),
            &raw,
            &rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("Invalid membership: {e}")))?;
        let mut auth_events = Vec::new();
        for (kind, sk) in &auth_types {
            if let Some(short) = self.state.state_key_short(kind, sk)? {
                if let Some(event) = state.get(&short) {
                    let id = self.events.event_id_of(*event)?;
                    if !auth_events.contains(&id) {
                        auth_events.push(id);
                    }
                }
            }
        }
        let mut o = CanonicalJsonObject::new();
        o.insert(
            "content".into(),
            CanonicalJsonValue::try_from(content).map_err(Error::internal)?,
        );
        o.insert("type".into(), "m.room.member".into());
        o.insert("sender".into(), sender.as_str().into());
        o.insert("state_key".into(), user.as_str().into());
        o.insert("room_id".into(), meta.room_id.as_str().into());
        if rules.redaction.keep_origin_membership_prev_state {
            o.insert("origin".into(), sender.server_name().as_str().into());
        }
        o.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(MilliSecondsSinceUnixEpoch::now().get().into()),
        );
        o.insert(
            "depth".into(),
            CanonicalJsonValue::Integer(
                ruma::Int::try_from(meta.depth + 1).map_err(|_| Error::internal("depth"))?,
            ),
        );
        o.insert(
            "prev_events".into(),
            self.event_refs(&meta.extremities, &rules)?,
        );
        o.insert("auth_events".into(), self.event_refs(&auth_events, &rules)?);
        // The auth rules decide now whether this membership could be accepted.
        let probe_id = EventId::new_v1(&self.server_name);
        let probe = Pdu::from_canonical(probe_id, &o).map_err(Error::internal)?;
        self.authorise(&rules, &probe, &state)?;
        Ok((meta.version, o))
    }

    /// Records a membership of one of our users in a room we are not in (an invite from another
    /// server, or the leave that rejects it): the event as an outlier, the membership indexes,
    /// and the stripped state an invite came with. Wakes the user's /sync.
    pub async fn record_remote_membership(
        &self,
        room_id: &ruma::RoomId,
        user_id: &UserId,
        event_id: &EventId,
        object: CanonicalJsonObject,
        membership: MembershipState,
        invite_state: Option<Vec<serde_json::Value>>,
    ) -> Result<()> {
        let room = self
            .shortids
            .get_or_create(IdKind::Room, room_id.as_str())?;
        let user = self
            .shortids
            .get_or_create(IdKind::User, user_id.as_str())?;
        let slot = self.room_lock(room);
        let _guard = slot.lock().await;
        let mut batch = Batch::new();
        let mut reserved = self.stream.reserve();
        let short = match self.events.event_short(event_id)? {
            Some(s) => s,
            None => reserved.event_in(&mut batch, event_id.as_str()),
        };
        let pdu = Pdu::from_canonical(event_id.to_owned(), &object).map_err(Error::bad_json)?;
        if pdu.state_key.as_deref() != Some(user_id.as_str())
            || pdu
                .content_field("membership")
                .and_then(|m| m.as_str().map(str::to_owned))
                .as_deref()
                != Some(membership.as_str())
        {
            return Err(Error::bad_json(
                "The event is not that membership of that user",
            ));
        }
        let commit = EventCommit {
            short,
            event_id: event_id.to_owned(),
            object,
            pdu: Some(pdu),
            place: Place::RemoteMembership,
            current: None,
            redacts: None,
            txn: None,
            relay: Relay::No,
        };
        self.commit_in(&mut batch, Some(&InRoom { room, room_id }), &[commit])?;
        match invite_state {
            Some(state) => self
                .tables
                .invite_state
                .put_in(&mut batch, (user, room), &state),
            None => self.tables.invite_state.delete_in(&mut batch, (user, room)),
        }
        reserved.write(&self.db, batch).await?;
        self.stream.wake([user]);
        Ok(())
    }

    /// Puts events from before our join in the timeline, oldest first, ahead of the join
    /// (they get their positions now, before it). We never saw the room's state at them, so
    /// each is recorded with the state we joined with; current state is not touched.
    pub async fn store_history(
        &self,
        room: ShortId,
        events: Vec<(OwnedEventId, CanonicalJsonObject, Pdu)>,
    ) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let slot = self.room_lock(room);
        let _guard = slot.lock().await;
        let meta = self
            .state
            .meta(room)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let mut batch = Batch::new();
        let mut reserved = self.stream.reserve();
        let mut commits = Vec::with_capacity(events.len());
        for (event_id, object, pdu) in events {
            if self.events.event_short(&event_id)?.is_some() {
                continue;
            }
            let short = reserved.event_in(&mut batch, event_id.as_str());
            commits.push(EventCommit {
                short,
                place: Place::History(Placed {
                    depth: pdu.depth,
                    state_before: meta.state_group,
                    state_after: meta.state_group,
                }),
                event_id,
                object,
                pdu: Some(pdu),
                current: None,
                redacts: None,
                txn: None,
                relay: Relay::No,
            });
        }
        let in_room = InRoom {
            room,
            room_id: &meta.room_id,
        };
        self.commit_in(&mut batch, Some(&in_room), &commits)?;
        reserved.write(&self.db, batch).await?;
        Ok(())
    }

    /// Authorises a PDU against the events it names as its auth events (the first of the
    /// spec's checks on a received event).
    pub fn authorise_by_auth_events(&self, rules: &RoomVersionRules, pdu: &Pdu) -> Result<()> {
        self.authorise_by_auth_events_with(rules, pdu, &|_| None)
    }

    /// As `authorise_by_auth_events`, where `pending` finds events checked but not written yet
    /// (a batch of outliers is written once, after all of them are checked).
    pub fn authorise_by_auth_events_with(
        &self,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        pending: &dyn Fn(&EventId) -> Option<Pdu>,
    ) -> Result<()> {
        let find = |id: &EventId| -> Result<Option<Pdu>> {
            match pending(id) {
                Some(p) => Ok(Some(p)),
                None => self.events.pdu_by_id(id),
            }
        };
        let mut by_key: HashMap<(StateEventType, String), Pdu> = HashMap::new();
        for id in &pdu.auth_events {
            let a =
                find(id)?.ok_or_else(|| Error::forbidden(format!("auth event {id} is missing")))?;
            if let Some(sk) = &a.state_key {
                let k = (StateEventType::from(a.kind.to_string()), sk.clone());
                if by_key.insert(k, a.clone()).is_some() {
                    return Err(Error::forbidden("duplicate auth event types"));
                }
            }
        }
        // From v12 the create event is named by the room ID, not listed in auth_events.
        if rules.authorization.room_create_event_id_as_room_id
            && pdu.kind != TimelineEventType::RoomCreate
        {
            if let Some(room_id) = &pdu.room_id {
                let create_id = OwnedEventId::try_from(format!("${}", room_id.strip_sigil()))
                    .map_err(|e| Error::forbidden(format!("room ID: {e}")))?;
                if let Some(create) = find(&create_id)? {
                    by_key.insert((StateEventType::RoomCreate, String::new()), create);
                }
            }
        }
        state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id: &EventId| {
            find(id).ok().flatten()
        })
        .map_err(|e| Error::forbidden(format!("Event not authorised: {e}")))?;
        state_res::check_state_dependent_auth_rules(
            &rules.authorization,
            pdu,
            |k: &StateEventType, sk: &str| by_key.get(&(k.clone(), sk.to_owned())).cloned(),
        )
        .map_err(|e| Error::forbidden(format!("Event not authorised: {e}")))
    }

    /// Authorises a PDU against a state (the state before it, or the current state).
    pub fn authorise_against(
        &self,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        state: &StateMap,
    ) -> Result<()> {
        self.authorise(rules, pdu, state)
    }
}
