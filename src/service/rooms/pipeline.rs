//! The event pipeline for events this server creates: build the PDU (DAG links, auth events,
//! depth, hashes, signature, event ID per room version), authorise it against the room's current
//! state, then persist it with its state delta, indexes and the room's new head in one batch.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    events::{
        room::{member::MembershipState, power_levels::RoomPowerLevels},
        StateEventType, TimelineEventType,
    },
    room_version_rules::{EventsReferenceFormatVersion, RoomVersionRules},
    signatures::reference_hash,
    state_res, CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch,
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId,
};
use serde_json::Value as JsonValue;

use super::{
    commit::{EventCommit, InRoom, Place, Placed},
    pdu::Pdu,
    remote::Relay,
    state::StateMap,
    RoomMeta, Service,
};
use crate::{
    error::{Error, Result},
    service::stream::Reservation,
    storage::{Batch, IdKind, ShortId},
};

/// An event a local user wants to send.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: TimelineEventType,
    pub content: JsonValue,
    pub state_key: Option<String>,
    pub redacts: Option<OwnedEventId>,
}

impl NewEvent {
    pub fn state(kind: StateEventType, state_key: impl Into<String>, content: JsonValue) -> Self {
        Self {
            kind: kind.to_string().into(),
            content,
            state_key: Some(state_key.into()),
            redacts: None,
        }
    }

    pub fn message(kind: TimelineEventType, content: JsonValue) -> Self {
        Self {
            kind,
            content,
            state_key: None,
            redacts: None,
        }
    }
}

/// A persisted event.
#[derive(Clone, Debug)]
pub struct Sent {
    pub event_id: OwnedEventId,
    pub short: ShortId,
}

/// One room's writer lock, and the message events waiting for it. Whoever takes the lock
/// persists every event queued so far in one write (group commit), so a busy room pays for one
/// fsync per group rather than per message.
#[derive(Default)]
pub struct RoomSlot {
    lock: tokio::sync::Mutex<()>,
    queue: parking_lot::Mutex<Vec<Job>>,
}

impl RoomSlot {
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }
}

/// A message event waiting for its room's writer.
struct Job {
    sender: ruma::OwnedUserId,
    ev: NewEvent,
    txn: Option<(ShortId, String, String)>,
    reply: tokio::sync::oneshot::Sender<Result<Sent>>,
}

/// One event built and authorised, not written yet.
struct Prepared {
    sent: Sent,
    /// The room's head after it.
    meta: RoomMeta,
    commit: EventCommit,
}

/// Most events persisted in one write; bounds the batch size and the latency of its first event.
const MAX_GROUP: usize = 256;

/// A transaction ID of a client, for idempotent sends.
pub struct Txn<'a> {
    pub user: ShortId,
    pub device_id: &'a str,
    pub txn_id: &'a str,
}

fn forbidden(reason: impl std::fmt::Display) -> Error {
    Error::forbidden(format!("Event not authorised: {reason}"))
}

fn canonical(value: JsonValue) -> Result<CanonicalJsonValue> {
    CanonicalJsonValue::try_from(value)
        .map_err(|e| Error::bad_json(format!("Content is not canonical JSON: {e}")))
}

impl Service {
    pub(super) fn rules(version: &RoomVersionId) -> Result<RoomVersionRules> {
        hearth_federation::pdu::rules(version).map_err(|e| Error::invalid_param(e.to_string()))
    }

    /// The references to events as this room version writes them in prev_events/auth_events.
    pub(super) fn event_refs(
        &self,
        ids: &[OwnedEventId],
        rules: &RoomVersionRules,
    ) -> Result<CanonicalJsonValue> {
        let refs = ids
            .iter()
            .map(|id| match rules.events_reference_format {
                EventsReferenceFormatVersion::V1 => {
                    let short = self
                        .events
                        .event_short(id)?
                        .ok_or_else(|| Error::internal(format!("missing event {id}")))?;
                    let object = self
                        .events
                        .event_canonical(short)?
                        .ok_or_else(|| Error::internal(format!("missing event {id}")))?;
                    let hash = reference_hash(&object, rules).map_err(Error::internal)?;
                    let mut hashes = CanonicalJsonObject::new();
                    hashes.insert("sha256".into(), hash.into());
                    Ok(CanonicalJsonValue::Array(vec![
                        id.as_str().into(),
                        CanonicalJsonValue::Object(hashes),
                    ]))
                }
                _ => Ok(id.as_str().into()),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CanonicalJsonValue::Array(refs))
    }

    /// Builds, hashes and signs a PDU. `room_id` is `None` only for a v12 create event.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn build(
        &self,
        rules: &RoomVersionRules,
        room_id: Option<&RoomId>,
        sender: &UserId,
        ev: &NewEvent,
        prev_events: &[OwnedEventId],
        auth_events: &[OwnedEventId],
        depth: u64,
    ) -> Result<(OwnedEventId, CanonicalJsonObject)> {
        let mut content = ev.content.clone();
        if !content.is_object() {
            return Err(Error::bad_json("Event content must be a JSON object"));
        }
        let mut o = CanonicalJsonObject::new();
        if let Some(r) = &ev.redacts {
            if rules.redaction.content_field_redacts {
                content["redacts"] = r.as_str().into();
            } else {
                o.insert("redacts".into(), r.as_str().into());
            }
        }
        o.insert("content".into(), canonical(content)?);
        o.insert("type".into(), ev.kind.to_string().into());
        o.insert("sender".into(), sender.as_str().into());
        if let Some(room_id) = room_id {
            o.insert("room_id".into(), room_id.as_str().into());
        }
        if let Some(sk) = &ev.state_key {
            o.insert("state_key".into(), sk.as_str().into());
        }
        if rules.redaction.keep_origin_membership_prev_state {
            o.insert("origin".into(), self.server_name.as_str().into());
        }
        o.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(MilliSecondsSinceUnixEpoch::now().get().into()),
        );
        o.insert(
            "depth".into(),
            CanonicalJsonValue::Integer(
                ruma::Int::try_from(depth).map_err(|_| Error::internal("depth overflow"))?,
            ),
        );
        o.insert("prev_events".into(), self.event_refs(prev_events, rules)?);
        o.insert("auth_events".into(), self.event_refs(auth_events, rules)?);
        let v1_id = rules
            .event_format
            .require_event_id
            .then(|| EventId::new_v1(&self.server_name));
        if let Some(id) = &v1_id {
            o.insert("event_id".into(), id.as_str().into());
        }
        hearth_federation::pdu::hash_and_sign(&self.server_name, &self.signing_key, &mut o, rules)
            .map_err(|e| match e {
                hearth_federation::pdu::PduError::Invalid(m)
                    if m.contains("larger than") || m.contains("too large") =>
                {
                    Error::too_large("Event is larger than 65536 bytes")
                }
                other => Error::bad_json(other.to_string()),
            })?;
        let event_id = match v1_id {
            Some(id) => id,
            None => hearth_federation::pdu::event_id(&o, rules)
                .map_err(|e| Error::too_large(e.to_string()))?
                .ok_or_else(|| Error::internal("no event ID"))?,
        };
        if let Err(reason) = state_res::check_pdu_format(&o, &rules.event_format) {
            return Err(if reason.contains("size") || reason.contains("bytes") {
                Error::too_large(format!("Event is too large: {reason}"))
            } else {
                Error::bad_json(format!("Invalid event: {reason}"))
            });
        }
        Ok((event_id, o))
    }

    pub(super) fn state_pdu(
        &self,
        state: &StateMap,
        kind: &StateEventType,
        sk: &str,
    ) -> Option<Pdu> {
        let short = self.state.state_key_short(kind, sk).ok().flatten()?;
        let event = state.get(&short)?;
        self.events.pdu(*event).ok().flatten()
    }

    /// Authorises a PDU against the given state (the room's current state for local events).
    pub(super) fn authorise(
        &self,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        state: &StateMap,
    ) -> Result<()> {
        state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id: &EventId| {
            self.events.pdu_by_id(id).ok().flatten()
        })
        .map_err(forbidden)?;
        state_res::check_state_dependent_auth_rules(
            &rules.authorization,
            pdu,
            |k: &StateEventType, sk: &str| self.state_pdu(state, k, sk),
        )
        .map_err(forbidden)?;
        Ok(())
    }

    /// The effective power levels in a state (for checks the auth rules leave to the server).
    pub(super) fn power_levels(
        &self,
        rules: &RoomVersionRules,
        state: &StateMap,
    ) -> Result<RoomPowerLevels> {
        use ruma::events::room::power_levels::{
            RoomPowerLevelsEventContent, RoomPowerLevelsSource,
        };
        let create = self
            .state_pdu(state, &StateEventType::RoomCreate, "")
            .ok_or_else(|| Error::internal("room without create event"))?;
        let creators = state_res::events::RoomCreateEvent::new(&create)
            .creators(&rules.authorization)
            .map_err(Error::internal)?;
        let source = match self.state_pdu(state, &StateEventType::RoomPowerLevels, "") {
            Some(pl) => RoomPowerLevelsSource::Original(
                serde_json::from_str::<RoomPowerLevelsEventContent>(pl.content.get())
                    .map_err(|e| Error::internal(format!("stored power levels: {e}")))?,
            ),
            None => RoomPowerLevelsSource::None,
        };
        Ok(RoomPowerLevels::new(source, &rules.authorization, creators))
    }

    /// Whether a user may send a state event of this type in the room's current state.
    pub fn user_can_send_state(
        &self,
        room: ShortId,
        user: &UserId,
        kind: &StateEventType,
    ) -> Result<bool> {
        let meta = self
            .state
            .meta(room)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = Self::rules(&meta.version)?;
        let state = self.state.state_at(meta.state_group)?;
        Ok(self
            .power_levels(&rules, &state)?
            .user_can_send_state(user, kind.clone()))
    }

    /// Wakes the /sync of everyone in the room (typing, receipts).
    pub fn wake_members(&self, room: ShortId) {
        self.wake_room(room, &[]);
    }

    /// Wakes the /sync of everyone in the room, and of the targets of these member events
    /// (invitees, the kicked and the banned see their change too).
    pub(super) fn wake_room(&self, room: ShortId, events: &[ShortId]) {
        let mut users: Vec<ShortId> = match self.membership.members(room) {
            Ok(m) => m
                .into_iter()
                .filter(|(_, m)| {
                    m.membership() != MembershipState::Leave || events.contains(&m.event)
                })
                .map(|(u, _)| u)
                .collect(),
            Err(e) => {
                tracing::warn!("cannot list members to wake: {e}");
                return;
            }
        };
        users.sort_unstable();
        users.dedup();
        self.stream.wake(users);
    }

    /// The room's current power levels.
    pub fn current_power_levels(&self, room: ShortId) -> Result<Option<RoomPowerLevels>> {
        let Some(meta) = self.state.meta(room)? else {
            return Ok(None);
        };
        let rules = Self::rules(&meta.version)?;
        let state = self.state.state_at(meta.state_group)?;
        Ok(Some(self.power_levels(&rules, &state)?))
    }

    /// A joined local member who may invite, to vouch for a restricted join
    /// (`join_authorised_via_users_server`); the most powerful such member is chosen.
    pub fn authorising_user(&self, room: ShortId) -> Result<Option<OwnedUserId>> {
        let meta = self
            .state
            .meta(room)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = Self::rules(&meta.version)?;
        let state = self.state.state_at(meta.state_group)?;
        let pl = self.power_levels(&rules, &state)?;
        let mut best: Option<(
            ruma::events::room::power_levels::UserPowerLevel,
            OwnedUserId,
        )> = None;
        for (user, m) in self.membership.members(room)? {
            if m.membership() != MembershipState::Join {
                continue;
            }
            let user_id = self.events.user_id_of(user)?;
            if user_id.server_name() != self.server_name || !pl.user_can_invite(&user_id) {
                continue;
            }
            let level = pl.for_user(&user_id);
            if best.as_ref().is_none_or(|(l, _)| level > *l) {
                best = Some((level, user_id));
            }
        }
        Ok(best.map(|(_, u)| u))
    }

    /// Creates a room with its create event, then sends `then` in order, all from `sender`.
    pub async fn create_room(
        &self,
        version: &RoomVersionId,
        sender: &UserId,
        mut create_content: JsonValue,
        then: Vec<NewEvent>,
    ) -> Result<OwnedRoomId> {
        let rules = Self::rules(version)?;
        create_content["room_version"] = version.as_str().into();
        if !rules.authorization.use_room_create_sender {
            create_content["creator"] = sender.as_str().into();
        }
        let create = NewEvent::state(StateEventType::RoomCreate, "", create_content);
        // A v12 room ID is the hash of its create event, so two identical creations in the same
        // millisecond would name the same room: room IDs are claimed one at a time, and a taken
        // one is built again a millisecond later.
        let claim = self.create_lock.lock().await;
        let (event_id, object, room_id, room) = loop {
            let v1_room_id = (!rules.authorization.room_create_event_id_as_room_id)
                .then(|| RoomId::new_v1(&self.server_name));
            let (event_id, object) =
                self.build(&rules, v1_room_id.as_deref(), sender, &create, &[], &[], 1)?;
            let room_id = match v1_room_id {
                Some(id) => id,
                None => OwnedRoomId::try_from(format!("!{}", event_id.localpart()))
                    .map_err(|e| Error::internal(format!("v12 room ID: {e}")))?,
            };
            if self.events.room_short(&room_id)?.is_some() {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                continue;
            }
            let pdu = Pdu::from_canonical(event_id.clone(), &object).map_err(Error::internal)?;
            state_res::check_state_independent_auth_rules(
                &rules.authorization,
                &pdu,
                |_: &EventId| None::<Pdu>,
            )
            .map_err(|e| Error::bad_json(format!("Invalid create event: {e}")))?;
            let room = self
                .shortids
                .get_or_create(IdKind::Room, room_id.as_str())?;
            break (event_id, object, room_id, room);
        };
        drop(claim);
        let lock = self.room_lock(room);
        let _guard = lock.lock().await;
        let mut batch = Batch::new();
        let mut reserved = self.stream.reserve();
        let short = reserved.event_in(&mut batch, event_id.as_str());
        let sk = self.state.state_key_for(&StateEventType::RoomCreate, "")?;
        let state = Arc::new(StateMap::from([(sk, short)]));
        let group = self.state.store_in(&mut batch, None, &state)?;
        let pdu = Pdu::from_canonical(event_id.clone(), &object).map_err(Error::internal)?;
        let create = EventCommit {
            short,
            event_id: event_id.clone(),
            object,
            pdu: Some(pdu),
            place: Place::Timeline(Placed {
                depth: 1,
                state_before: group,
                state_after: group,
            }),
            current: Some((Arc::new(StateMap::new()), state)),
            redacts: None,
            txn: None,
            relay: Relay::ToRoom,
        };
        let in_room = InRoom {
            room,
            room_id: &room_id,
        };
        self.commit_in(&mut batch, Some(&in_room), &[create])?;
        let mut meta = RoomMeta {
            room_id: room_id.clone(),
            version: version.clone(),
            state_group: group,
            extremities: vec![event_id.clone()],
            depth: 1,
            create_event: event_id,
        };
        self.tables.rooms.put_in(&mut batch, room, &meta);
        reserved.write(&self.db, batch).await?;
        self.outboxes_written(room);
        tracing::info!(%room_id, %version, "room created");

        for ev in then {
            self.append(room, &mut meta, &rules, sender, ev, None)
                .await?;
        }
        Ok(room_id)
    }

    /// Sends an event into a room this server takes part in.
    pub async fn send(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        ev: NewEvent,
        txn: Option<Txn<'_>>,
    ) -> Result<Sent> {
        let (room, _) = self.state.known_room(room_id)?;
        let slot = self.room_lock(room);
        if ev.state_key.is_none() {
            return self.send_grouped(room, &slot, sender, ev, txn).await;
        }
        let _guard = slot.lock().await;
        if let Some(t) = &txn {
            if let Some(event_id) = self.txn_event(t.user, t.device_id, room, t.txn_id)? {
                let short = self.events.event_short(&event_id)?.unwrap_or_default();
                return Ok(Sent { event_id, short });
            }
        }
        // Re-read under the lock: the head may have moved while we waited.
        let mut meta = self
            .state
            .meta(room)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = Self::rules(&meta.version)?;
        self.append(room, &mut meta, &rules, sender, ev, txn).await
    }

    /// Queues a message event; the first sender to get the room's lock persists the whole queue.
    /// Message events leave state unchanged, so every event of a group is authorised against the
    /// same state, and each one's prev_event is the one before it.
    async fn send_grouped(
        &self,
        room: ShortId,
        slot: &RoomSlot,
        sender: &UserId,
        ev: NewEvent,
        txn: Option<Txn<'_>>,
    ) -> Result<Sent> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        slot.queue.lock().push(Job {
            sender: sender.to_owned(),
            ev,
            txn: txn.map(|t| (t.user, t.device_id.to_owned(), t.txn_id.to_owned())),
            reply,
        });
        {
            let _guard = slot.lock().await;
            loop {
                let jobs: Vec<Job> = {
                    let mut queue = slot.queue.lock();
                    let n = queue.len().min(MAX_GROUP);
                    queue.drain(..n).collect()
                };
                if jobs.is_empty() {
                    break;
                }
                self.persist_group(room, jobs).await;
            }
        }
        answer
            .await
            .map_err(|_| Error::internal("event writer went away"))?
    }

    /// Builds, authorises and persists a group of message events in one write, and answers each.
    async fn persist_group(&self, room: ShortId, jobs: Vec<Job>) {
        let mut meta = match self.state.meta(room) {
            Ok(Some(m)) => m,
            Ok(None) => {
                for job in jobs {
                    let _ = job.reply.send(Err(Error::not_found("Unknown room")));
                }
                return;
            }
            Err(e) => {
                let msg = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(Error::internal(&msg)));
                }
                return;
            }
        };
        let rules = match Self::rules(&meta.version) {
            Ok(r) => r,
            Err(e) => {
                let msg = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(Error::internal(&msg)));
                }
                return;
            }
        };
        let mut batch = Batch::new();
        let mut reserved = self.stream.reserve();
        let mut accepted: Vec<(tokio::sync::oneshot::Sender<Result<Sent>>, Sent)> = Vec::new();
        let mut commits: Vec<EventCommit> = Vec::new();
        let mut group_txns: HashMap<(ShortId, String, String), Sent> = HashMap::new();
        for job in jobs {
            let outcome = (|| -> Result<Option<Sent>> {
                if let Some(key) = &job.txn {
                    if let Some(sent) = group_txns.get(key) {
                        return Ok(Some(sent.clone()));
                    }
                    if let Some(event_id) = self.txn_event(key.0, &key.1, room, &key.2)? {
                        let short = self.events.event_short(&event_id)?.unwrap_or_default();
                        return Ok(Some(Sent { event_id, short }));
                    }
                }
                self.check_duplicate_annotation(&job.sender, &job.ev)?;
                Ok(None)
            })();
            match outcome {
                Ok(Some(earlier)) => {
                    let _ = job.reply.send(Ok(earlier));
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                    continue;
                }
            }
            let txn = job.txn.as_ref().map(|(user, device, id)| Txn {
                user: *user,
                device_id: device,
                txn_id: id,
            });
            let mut one = Batch::new();
            match self.prepare(
                &mut one,
                &mut reserved,
                room,
                &meta,
                &rules,
                &job.sender,
                job.ev,
                txn,
            ) {
                Ok(Prepared {
                    sent,
                    meta: new_meta,
                    commit,
                }) => {
                    batch.ops.extend(one.ops);
                    meta = new_meta;
                    commits.push(commit);
                    if let Some(key) = job.txn {
                        group_txns.insert(key, sent.clone());
                    }
                    accepted.push((job.reply, sent));
                }
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            return;
        }
        let in_room = InRoom {
            room,
            room_id: &meta.room_id,
        };
        let group_servers = match self.commit_in(&mut batch, Some(&in_room), &commits) {
            Ok(servers) => servers,
            Err(e) => {
                let msg = e.to_string();
                for (reply, _) in accepted {
                    let _ = reply.send(Err(Error::internal(&msg)));
                }
                return;
            }
        };
        self.tables.rooms.put_in(&mut batch, room, &meta);
        match reserved.write(&self.db, batch).await {
            Ok(()) => {
                self.wake_room(room, &[]);
                self.outboxes_written(room);
                self.announce_destinations(group_servers);
                tracing::debug!(room_id = %meta.room_id, events = accepted.len(), "event group persisted");
                for (reply, sent) in accepted {
                    let _ = reply.send(Ok(sent));
                }
            }
            Err(e) => {
                // Nothing of the group landed: the stored head is unchanged, and the next group
                // re-reads it.
                let msg = e.to_string();
                for (reply, _) in accepted {
                    let _ = reply.send(Err(Error::internal(&msg)));
                }
            }
        }
    }

    /// Builds, authorises and persists one event on top of the room's current head. The caller
    /// holds the room lock.
    async fn append(
        &self,
        room: ShortId,
        meta: &mut RoomMeta,
        rules: &RoomVersionRules,
        sender: &UserId,
        ev: NewEvent,
        txn: Option<Txn<'_>>,
    ) -> Result<Sent> {
        let mut batch = Batch::new();
        let mut reserved = self.stream.reserve();
        let Prepared {
            sent,
            meta: new_meta,
            commit,
        } = self.prepare(
            &mut batch,
            &mut reserved,
            room,
            meta,
            rules,
            sender,
            ev,
            txn,
        )?;
        let servers = self
            .commit_one(batch, reserved, room, &new_meta, commit)
            .await?;
        *meta = new_meta;
        if self.events.is_member_event(sent.short) {
            self.membership.servers_changed(room);
        }
        self.wake_room(room, &[sent.short]);
        self.outboxes_written(room);
        self.announce_destinations(servers);
        Ok(sent)
    }

    /// Builds and authorises one event on top of `meta`'s head and adds its writes to `batch`;
    /// returns the event and the room's head after it (not yet written).
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        batch: &mut Batch,
        reserved: &mut Reservation,
        room: ShortId,
        meta: &RoomMeta,
        rules: &RoomVersionRules,
        sender: &UserId,
        ev: NewEvent,
        txn: Option<Txn<'_>>,
    ) -> Result<Prepared> {
        let state = self.state.state_at(meta.state_group)?;
        let raw_content = serde_json::value::to_raw_value(&ev.content).map_err(Error::internal)?;
        let auth_types = state_res::auth_types_for_event(
            &ev.kind,
            sender,
            ev.state_key.as_deref(),
            &raw_content,
            &rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("Invalid event content: {e}")))?;
        let mut auth_events = Vec::with_capacity(auth_types.len());
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
        let depth = meta.depth + 1;
        let (event_id, object) = self.build(
            rules,
            Some(&meta.room_id),
            sender,
            &ev,
            &meta.extremities,
            &auth_events,
            depth,
        )?;
        let pdu = Pdu::from_canonical(event_id.clone(), &object).map_err(Error::internal)?;
        self.authorise(rules, &pdu, &state)?;

        // A redaction the auth rules allow may still not be ours to apply (v3+ leaves the check
        // to the server): only the target's sender or a user with the redact level may.
        let mut redaction_target = None;
        if pdu.kind == TimelineEventType::RoomRedaction {
            let target = pdu
                .redacts
                .clone()
                .ok_or_else(|| Error::bad_json("Redaction without a target"))?;
            if let Some(t_short) = self.events.event_short(&target)? {
                let t_meta = self.events.event_meta(t_short)?;
                if t_meta.is_some_and(|m| m.room == room) {
                    let t_pdu = self
                        .events
                        .pdu(t_short)?
                        .ok_or_else(|| Error::internal("missing target"))?;
                    let pl = self.power_levels(rules, &state)?;
                    let own = t_pdu.sender == sender;
                    let allowed = if own {
                        pl.user_can_redact_own_event(sender)
                    } else {
                        pl.user_can_redact_event_of_other(sender)
                    };
                    if !allowed {
                        return Err(Error::forbidden("You may not redact this event"));
                    }
                    redaction_target = Some(t_short);
                }
            }
        }

        // The position is pending from here on; the reservation gives it back if the event goes
        // no further.
        let short = reserved.event_in(batch, event_id.as_str());
        self.place_local(
            batch,
            meta,
            rules,
            &state,
            short,
            event_id,
            object,
            pdu,
            redaction_target,
            txn,
            depth,
        )
    }

    /// What the commit of one built and authorised event writes, and the room's head after it
    /// (see `prepare`). State groups are stored into `batch` here.
    #[allow(clippy::too_many_arguments)]
    fn place_local(
        &self,
        batch: &mut Batch,
        meta: &RoomMeta,
        rules: &RoomVersionRules,
        state: &Arc<StateMap>,
        short: ShortId,
        event_id: OwnedEventId,
        object: CanonicalJsonObject,
        pdu: Pdu,
        redacts: Option<ShortId>,
        txn: Option<Txn<'_>>,
        depth: u64,
    ) -> Result<Prepared> {
        let mut state_after = meta.state_group;
        let mut current = None;
        if let Some(sk) = &pdu.state_key {
            let kind = StateEventType::from(pdu.kind.to_string());
            let sk_short = self.state.state_key_for(&kind, sk)?;
            let mut new_state = (**state).clone();
            new_state.insert(sk_short, short);
            let new_state = Arc::new(new_state);
            state_after =
                self.state
                    .store_in(batch, Some((meta.state_group, state)), &new_state)?;
            current = Some((state.clone(), new_state));
        }
        let mut new_meta = meta.clone();
        new_meta.extremities = vec![event_id.clone()];
        new_meta.depth = depth;
        new_meta.state_group = state_after;
        tracing::debug!(room_id = %meta.room_id, %event_id, kind = %pdu.kind, "event built");
        Ok(Prepared {
            sent: Sent {
                event_id: event_id.clone(),
                short,
            },
            meta: new_meta,
            commit: EventCommit {
                short,
                event_id,
                object,
                pdu: Some(pdu),
                place: Place::Timeline(Placed {
                    depth,
                    state_before: meta.state_group,
                    state_after,
                }),
                current,
                redacts: redacts.map(|target| (target, rules.clone())),
                txn: txn.map(|t| (t.user, t.device_id.to_owned(), t.txn_id.to_owned())),
                relay: Relay::ToRoom,
            },
        })
    }
}
