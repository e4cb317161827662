//! Rooms and their event DAG. Every event, local or (with federation) remote, goes through one
//! pipeline: build (or verify) → authorise → persist in one atomic batch → notify.
//!
//! Owns the `rooms`, `pdus`, `event_meta`, `timeline`, `state_groups`, `room_state`,
//! `memberships`, `room_members` and `txn_ids` keyspaces. Stream positions are event short IDs:
//! one monotonic counter orders every timeline.

pub mod alias;
mod commit;
pub mod create;
pub mod history;
pub mod pdu;
mod pipeline;
pub mod relations;
pub mod remote;
pub mod state;
pub mod upgrade;

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{
    events::{room::member::MembershipState, StateEventType},
    CanonicalJsonObject, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId,
    RoomVersionId, UserId,
};
use serde::{Deserialize, Serialize};

pub use self::pipeline::{NewEvent, Sent, Txn};
use self::{
    pdu::Pdu,
    state::{StateGroupId, StateMap, StateStore},
};
use crate::{
    error::{Error, Result},
    service::stream::Stream,
    storage::{tables, Batch, Db, IdKind, ShortId, ShortIds, Table},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomMeta {
    pub room_id: OwnedRoomId,
    pub version: RoomVersionId,
    pub state_group: StateGroupId,
    pub extremities: Vec<OwnedEventId>,
    pub depth: u64,
    pub create_event: OwnedEventId,
}

/// Where an event sits: its room, depth and the state before and after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventMeta {
    pub room: ShortId,
    pub depth: u64,
    pub state_before: StateGroupId,
    pub state_after: StateGroupId,
    pub redacted: bool,
}

/// An `event_meta` row: room, depth, state before, state after, redacted.
type EventMetaRow = (ShortId, u64, StateGroupId, StateGroupId, u8);

impl From<EventMetaRow> for EventMeta {
    fn from((room, depth, state_before, state_after, redacted): EventMetaRow) -> Self {
        Self {
            room,
            depth,
            state_before,
            state_after,
            redacted: redacted != 0,
        }
    }
}

impl From<EventMeta> for EventMetaRow {
    fn from(m: EventMeta) -> Self {
        (
            m.room,
            m.depth,
            m.state_before,
            m.state_after,
            u8::from(m.redacted),
        )
    }
}

pub fn membership_code(m: &MembershipState) -> u8 {
    match m {
        MembershipState::Join => 1,
        MembershipState::Invite => 2,
        MembershipState::Leave => 3,
        MembershipState::Ban => 4,
        MembershipState::Knock => 5,
        _ => 0,
    }
}

pub fn membership_from_code(c: u8) -> MembershipState {
    match c {
        1 => MembershipState::Join,
        2 => MembershipState::Invite,
        4 => MembershipState::Ban,
        5 => MembershipState::Knock,
        _ => MembershipState::Leave,
    }
}

/// A membership index entry.
#[derive(Clone, Copy, Debug)]
pub struct Membership {
    pub state: u8,
    pub event: ShortId,
}

impl From<(u8, ShortId)> for Membership {
    fn from((state, event): (u8, ShortId)) -> Self {
        Self { state, event }
    }
}

impl From<Membership> for (u8, ShortId) {
    fn from(m: Membership) -> Self {
        (m.state, m.event)
    }
}

impl Membership {
    pub fn membership(&self) -> MembershipState {
        membership_from_code(self.state)
    }
}

/// Push rule evaluation as the commit of events needs it (implemented by the push service).
pub trait Notifier: Send + Sync {
    /// Evaluates `events` (built or received, not yet written) for the room's local members and
    /// adds the notifications to `batch`.
    fn notifications_in(
        &self,
        batch: &mut Batch,
        room: ShortId,
        room_id: &RoomId,
        events: &[(ShortId, &CanonicalJsonObject)],
    ) -> Result<()>;
}

/// The keyspaces the rooms service reads and writes.
struct Tables {
    rooms: Table<tables::Rooms<RoomMeta>>,
    pdus: Table<tables::Pdus>,
    event_meta: Table<tables::EventMeta>,
    timeline: Table<tables::Timeline>,
    room_state: Table<tables::RoomState>,
    memberships: Table<tables::Memberships>,
    room_members: Table<tables::RoomMembers>,
    txn_ids: Table<tables::TxnIds>,
    event_txn: Table<tables::EventTxn>,
    relations: Table<tables::Relations>,
    threads: Table<tables::Threads>,
    reports: Table<tables::Reports<relations::Report>>,
    aliases: Table<tables::Aliases<alias::AliasRecord>>,
    room_aliases: Table<tables::RoomAliases>,
    public_rooms: Table<tables::PublicRooms>,
    forgotten: Table<tables::Forgotten>,
    outliers: Table<tables::Outliers>,
    invite_state: Table<tables::InviteState<Vec<serde_json::Value>>>,
    fed_queue: Table<tables::FedQueue>,
}

impl Tables {
    fn new(db: &Db) -> Self {
        Self {
            rooms: Table::new(db),
            pdus: Table::new(db),
            event_meta: Table::new(db),
            timeline: Table::new(db),
            room_state: Table::new(db),
            memberships: Table::new(db),
            room_members: Table::new(db),
            txn_ids: Table::new(db),
            event_txn: Table::new(db),
            relations: Table::new(db),
            threads: Table::new(db),
            reports: Table::new(db),
            aliases: Table::new(db),
            room_aliases: Table::new(db),
            public_rooms: Table::new(db),
            forgotten: Table::new(db),
            outliers: Table::new(db),
            invite_state: Table::new(db),
            fed_queue: Table::new(db),
        }
    }
}

pub struct Service {
    db: Db,
    tables: Tables,
    shortids: Arc<ShortIds>,
    state: StateStore,
    server_name: OwnedServerName,
    signing_key: Arc<hearth_federation::ServerSigningKey>,
    stream: Arc<Stream>,
    /// Who evaluates push rules for events as they are committed, set once at start. Weak: the
    /// push service holds this one.
    notifier: std::sync::OnceLock<std::sync::Weak<dyn Notifier>>,
    /// One writer at a time per room keeps prev_events, depth and state consistent.
    room_locks: Mutex<HashMap<ShortId, Arc<pipeline::RoomSlot>>>,
    /// Serialises alias creation and deletion (check, then write).
    alias_lock: tokio::sync::Mutex<()>,
    /// Serialises claiming new room IDs (see `create_room`).
    create_lock: tokio::sync::Mutex<()>,
    /// Serialises storing outliers (check, then allocate).
    outlier_lock: tokio::sync::Mutex<()>,
    /// Servers with joined members per room, dropped when a member event lands.
    servers_cache: Mutex<HashMap<ShortId, Arc<Vec<OwnedServerName>>>>,
    /// Where destinations with newly queued events are announced (the federation sender).
    outgoing_listener:
        std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Vec<OwnedServerName>>>,
}

impl Service {
    pub fn new(
        db: Db,
        shortids: Arc<ShortIds>,
        server_name: OwnedServerName,
        signing_key: Arc<hearth_federation::ServerSigningKey>,
        stream: Arc<Stream>,
    ) -> Result<Self> {
        Ok(Self {
            state: StateStore::new(db.clone())?,
            tables: Tables::new(&db),
            db,
            shortids,
            server_name,
            signing_key,
            stream,
            notifier: std::sync::OnceLock::new(),
            room_locks: Mutex::new(HashMap::new()),
            alias_lock: tokio::sync::Mutex::new(()),
            create_lock: tokio::sync::Mutex::new(()),
            outlier_lock: tokio::sync::Mutex::new(()),
            servers_cache: Mutex::new(HashMap::new()),
            outgoing_listener: std::sync::OnceLock::new(),
        })
    }

    /// Sets who evaluates push rules for committed events (see [`Notifier`]).
    pub fn set_notifier(&self, notifier: std::sync::Weak<dyn Notifier>) {
        let _ = self.notifier.set(notifier);
    }

    /// Adds the notifications of events about to be committed to their batch, so the counts
    /// become visible with the events, in the same /sync answer and the same wake-up. A failed
    /// evaluation costs notifications, never the events.
    fn notifications_in(
        &self,
        batch: &mut Batch,
        room: ShortId,
        room_id: &RoomId,
        events: &[(ShortId, &CanonicalJsonObject)],
    ) {
        let Some(notifier) = self.notifier.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        if let Err(e) = notifier.notifications_in(batch, room, room_id, events) {
            tracing::warn!(%room_id, "push rule evaluation failed: {e}");
        }
    }

    pub fn server_name(&self) -> &OwnedServerName {
        &self.server_name
    }

    fn room_lock(&self, room: ShortId) -> Arc<pipeline::RoomSlot> {
        let mut locks = self.room_locks.lock();
        if locks.len() > 10_000 {
            // Locks nobody holds or waits for can go; they are recreated on demand.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(room).or_default().clone()
    }

    /// Whether a stored event is a membership event (cheap enough for after-write bookkeeping).
    fn is_member_event(&self, short: ShortId) -> bool {
        self.pdu(short)
            .ok()
            .flatten()
            .is_some_and(|p| p.kind == ruma::events::TimelineEventType::RoomMember)
    }

    pub fn room_short(&self, room_id: &RoomId) -> Result<Option<ShortId>> {
        Ok(self.shortids.get(IdKind::Room, room_id.as_str())?)
    }

    pub fn meta(&self, room: ShortId) -> Result<Option<RoomMeta>> {
        Ok(self.tables.rooms.get(room)?)
    }

    /// The room's short ID and metadata, or 404 for a room this server does not know.
    pub fn known_room(&self, room_id: &RoomId) -> Result<(ShortId, RoomMeta)> {
        let room = self
            .room_short(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let meta = self
            .meta(room)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        Ok((room, meta))
    }

    pub fn event_short(&self, event_id: &EventId) -> Result<Option<ShortId>> {
        Ok(self.shortids.get(IdKind::Event, event_id.as_str())?)
    }

    pub fn event_id_of(&self, short: ShortId) -> Result<OwnedEventId> {
        match self.shortids.lookup(short)? {
            Some((IdKind::Event, s)) => OwnedEventId::try_from(s)
                .map_err(|e| Error::internal(format!("stored event ID: {e}"))),
            _ => Err(Error::internal(format!("short ID {short} is not an event"))),
        }
    }

    pub fn event_meta(&self, short: ShortId) -> Result<Option<EventMeta>> {
        Ok(self.tables.event_meta.get(short)?.map(EventMeta::from))
    }

    /// The stored JSON of an event (redacted form once redacted).
    pub fn event_json(
        &self,
        short: ShortId,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
        match self.tables.pdus.get(short)? {
            Some(b) => {
                Ok(Some(serde_json::from_slice(&b).map_err(|e| {
                    Error::internal(format!("stored PDU: {e}"))
                })?))
            }
            None => Ok(None),
        }
    }

    pub fn event_canonical(&self, short: ShortId) -> Result<Option<CanonicalJsonObject>> {
        match self.tables.pdus.get(short)? {
            Some(b) => {
                Ok(Some(serde_json::from_slice(&b).map_err(|e| {
                    Error::internal(format!("stored PDU: {e}"))
                })?))
            }
            None => Ok(None),
        }
    }

    pub fn pdu(&self, short: ShortId) -> Result<Option<Pdu>> {
        let Some(b) = self.tables.pdus.get(short)? else {
            return Ok(None);
        };
        let id = self.event_id_of(short)?;
        Pdu::from_json(id, &b).map(Some).map_err(Error::internal)
    }

    pub fn pdu_by_id(&self, event_id: &EventId) -> Result<Option<Pdu>> {
        match self.event_short(event_id)? {
            Some(s) => self.pdu(s),
            None => Ok(None),
        }
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
        Ok(self.tables.room_state.get((room, sk))?)
    }

    pub fn current_state_pdu(
        &self,
        room: ShortId,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Pdu>> {
        match self.current_state_event(room, kind, state_key)? {
            Some(e) => self.pdu(e),
            None => Ok(None),
        }
    }

    /// The full current state: (state key short, event short) pairs.
    pub fn current_state(&self, room: ShortId) -> Result<Vec<(ShortId, ShortId)>> {
        self.tables
            .room_state
            .scan((room,))
            .map(|r| Ok(r.map(|((_, sk), ev)| (sk, ev))?))
            .collect()
    }

    pub fn state_at(&self, group: StateGroupId) -> Result<Arc<StateMap>> {
        self.state.load(group)
    }

    pub fn membership(&self, user: ShortId, room: ShortId) -> Result<Option<Membership>> {
        Ok(self
            .tables
            .memberships
            .get((user, room))?
            .map(Membership::from))
    }

    /// The membership of a user (by ID) in a room; `None` when the user never appeared in it.
    pub fn membership_of(
        &self,
        user_id: &UserId,
        room: ShortId,
    ) -> Result<Option<MembershipState>> {
        let Some(user) = self.shortids.get(IdKind::User, user_id.as_str())? else {
            return Ok(None);
        };
        Ok(self.membership(user, room)?.map(|m| m.membership()))
    }

    /// Forgets a room the user left: its history and state are no longer theirs to read.
    pub async fn forget(&self, user: ShortId, room: ShortId) -> Result<()> {
        let mut b = crate::storage::Batch::new();
        self.tables.forgotten.put_in(&mut b, (user, room), &());
        self.db.write(b).await?;
        Ok(())
    }

    pub fn is_forgotten(&self, user: ShortId, room: ShortId) -> Result<bool> {
        Ok(self.tables.forgotten.contains((user, room))?)
    }

    /// The membership index entry of a user (by ID) in a room.
    pub fn membership_of_full(
        &self,
        user_id: &UserId,
        room: ShortId,
    ) -> Result<Option<Membership>> {
        let Some(user) = self.shortids.get(IdKind::User, user_id.as_str())? else {
            return Ok(None);
        };
        self.membership(user, room)
    }

    pub fn is_joined(&self, user_id: &UserId, room: ShortId) -> Result<bool> {
        Ok(self.membership_of(user_id, room)? == Some(MembershipState::Join))
    }

    /// Rooms a user has the given membership in.
    pub fn rooms_of(&self, user: ShortId, want: &MembershipState) -> Result<Vec<ShortId>> {
        let code = membership_code(want);
        let mut out = Vec::new();
        for r in self.tables.memberships.scan((user,)) {
            let ((_, room), (state, _)) = r?;
            if state == code {
                out.push(room);
            }
        }
        Ok(out)
    }

    /// Every room a user has a membership in, with it.
    pub fn memberships(&self, user: ShortId) -> Result<Vec<(ShortId, Membership)>> {
        let mut out = Vec::new();
        for r in self.tables.memberships.scan((user,)) {
            let ((_, room), m) = r?;
            out.push((room, m.into()));
        }
        Ok(out)
    }

    /// The user and everyone sharing a joined room with them: who sees their presence and keys.
    pub fn peers(&self, user: ShortId) -> Result<std::collections::BTreeSet<ShortId>> {
        let mut out = std::collections::BTreeSet::from([user]);
        for (room, m) in self.memberships(user)? {
            if m.membership() != MembershipState::Join {
                continue;
            }
            for (member, mm) in self.members(room)? {
                if mm.membership() == MembershipState::Join {
                    out.insert(member);
                }
            }
        }
        Ok(out)
    }

    /// Members of a room: (user short, membership).
    pub fn members(&self, room: ShortId) -> Result<Vec<(ShortId, Membership)>> {
        let mut out = Vec::new();
        for r in self.tables.room_members.scan((room,)) {
            let ((_, user), m) = r?;
            out.push((user, m.into()));
        }
        Ok(out)
    }

    pub fn user_id_of(&self, short: ShortId) -> Result<OwnedUserId> {
        match self.shortids.lookup(short)? {
            Some((IdKind::User, s)) => OwnedUserId::try_from(s)
                .map_err(|e| Error::internal(format!("stored user ID: {e}"))),
            _ => Err(Error::internal(format!("short ID {short} is not a user"))),
        }
    }

    pub fn room_id_of(&self, short: ShortId) -> Result<OwnedRoomId> {
        match self.shortids.lookup(short)? {
            Some((IdKind::Room, s)) => OwnedRoomId::try_from(s)
                .map_err(|e| Error::internal(format!("stored room ID: {e}"))),
            _ => Err(Error::internal(format!("short ID {short} is not a room"))),
        }
    }

    /// Timeline events of a room, as stream positions, after `from` going forward or at and before
    /// `from` going backward.
    pub fn timeline(
        &self,
        room: ShortId,
        from: u64,
        forward: bool,
        limit: usize,
    ) -> Result<Vec<ShortId>> {
        let rows = if forward {
            self.tables
                .timeline
                .range((room, from.saturating_add(1)), (room.saturating_add(1), 0))
        } else {
            self.tables.timeline.range_rev((room, from), (room, 0))
        };
        rows.keys().take(limit).map(|k| Ok(k?.1)).collect()
    }

    /// The stored transaction's event, if this device already sent it.
    /// The sending device and transaction ID of an event sent by a local client.
    pub fn event_txn(&self, short: ShortId) -> Result<Option<(String, String)>> {
        Ok(self.tables.event_txn.get(short)?)
    }

    /// Adds `unsigned.transaction_id` to an event the given device sent.
    pub fn add_transaction_id(
        &self,
        short: ShortId,
        device_id: &str,
        json: &mut serde_json::Value,
    ) -> Result<()> {
        if let Some((device, txn)) = self.event_txn(short)? {
            if device == device_id {
                json["unsigned"]["transaction_id"] = txn.into();
            }
        }
        Ok(())
    }

    /// Whether a device already used a transaction ID (for sends without an event, such as
    /// to-device messages; `room` 0).
    pub fn txn_seen(
        &self,
        user: ShortId,
        device_id: &str,
        room: ShortId,
        txn_id: &str,
    ) -> Result<bool> {
        Ok(self
            .tables
            .txn_ids
            .contains((user, device_id, room, txn_id))?)
    }

    /// Records a transaction ID as used (see `txn_seen`).
    pub async fn record_txn(
        &self,
        user: ShortId,
        device_id: &str,
        room: ShortId,
        txn_id: &str,
    ) -> Result<()> {
        let mut b = crate::storage::Batch::new();
        // No event: the empty event ID.
        self.tables
            .txn_ids
            .put_in(&mut b, (user, device_id, room, txn_id), &String::new());
        self.db.write(b).await?;
        Ok(())
    }

    pub fn txn_event(
        &self,
        user: ShortId,
        device_id: &str,
        room: ShortId,
        txn_id: &str,
    ) -> Result<Option<OwnedEventId>> {
        match self.tables.txn_ids.get((user, device_id, room, txn_id))? {
            Some(s) => Ok(Some(
                OwnedEventId::try_from(s).map_err(|_| Error::internal("corrupt txn id"))?,
            )),
            None => Ok(None),
        }
    }
}
