//! Rooms and their event DAG. Every event, local or (with federation) remote, goes through one
//! pipeline: build (or verify) → authorise → commit in one atomic batch (`commit.rs`) → notify.
//!
//! Split along its seams: [`Service`] is the writer (local events in `pipeline.rs`, received
//! ones in `remote.rs`, both committed by `commit.rs`, the only code that writes event rows and
//! membership indexes); readers use its four read services, [`events::Events`] (stored events,
//! ID look-ups), [`state::State`] (rooms' heads and state), [`membership::Members`] (who is in
//! which room) and [`timeline::Timeline`] (timelines, visibility, client-format events), plus
//! [`alias::Aliases`] for the directory. Stream positions are event short IDs: one monotonic
//! counter orders every timeline.

pub mod alias;
mod client_send;
mod commit;
pub mod create;
pub mod events;
pub mod history;
pub mod membership;
pub mod pdu;
mod pipeline;
pub mod relations;
pub mod remote;
pub mod state;
pub mod timeline;
pub mod upgrade;

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{
    events::room::member::MembershipState, CanonicalJsonObject, OwnedEventId, OwnedRoomId,
    OwnedServerName, RoomId, RoomVersionId,
};
use serde::{Deserialize, Serialize};

pub use self::client_send::ClientEvent;
pub use self::pipeline::{NewEvent, Sent, Txn};
use self::state::StateGroupId;
use crate::{
    error::{Error, Result},
    service::stream::Stream,
    storage::{tables, Batch, Db, ShortId, ShortIds, Table},
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

/// Someone who must hear of every event that joins a room's timeline, local or received, with
/// rows of their own written in the event's batch: push rules (notifications), appservices (their
/// transaction queues). An acknowledged event thus never misses them, and a failed write leaves
/// nothing of theirs behind.
pub trait Outbox: Send + Sync {
    /// Adds this listener's rows for `events` (built or received, not yet written) to `batch`.
    fn queue_in(
        &self,
        batch: &mut Batch,
        room: ShortId,
        room_id: &RoomId,
        events: &[(ShortId, &CanonicalJsonObject)],
    ) -> Result<()>;

    /// Called once a batch with rows for `room` is durable.
    fn written(&self, _room: ShortId) {}

    /// Adds this listener's rows for a membership entering a room's current state (local or
    /// remote, from an event or from a joined room's state) to `batch`.
    fn member_in(
        &self,
        _batch: &mut Batch,
        _user: ShortId,
        _user_id: &str,
        _membership: &MembershipState,
        _content: &serde_json::Value,
    ) {
    }
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
    forgotten: Table<tables::Forgotten>,
    outliers: Table<tables::Outliers>,
    invite_state: Table<tables::InviteState<Vec<serde_json::Value>>>,
    fed_queue: Table<tables::FedQueue>,
    room_bump: Table<tables::RoomBump>,
}

impl Tables {
    fn new(db: &Db) -> Self {
        Self {
            rooms: Table::new(db),
            room_bump: Table::new(db),
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
            forgotten: Table::new(db),
            outliers: Table::new(db),
            invite_state: Table::new(db),
            fed_queue: Table::new(db),
        }
    }
}

/// The room writer: builds, authorises and commits events (local ones in `pipeline.rs`, received
/// ones in `remote.rs`, both through `commit.rs`), and owns the rooms' locks. What reads rooms
/// lives in its four read services, shared with everyone who reads.
pub struct Service {
    db: Db,
    tables: Tables,
    shortids: Arc<ShortIds>,
    /// Stored events and ID look-ups.
    pub events: Arc<events::Events>,
    /// Rooms' heads and state.
    pub state: Arc<state::State>,
    /// Membership indexes.
    pub membership: Arc<membership::Members>,
    /// Timelines, visibility, client-format events.
    pub timeline: Arc<timeline::Timeline>,
    /// Room aliases and the public room directory.
    pub aliases: alias::Aliases,
    server_name: OwnedServerName,
    signing_key: Arc<hearth_federation::ServerSigningKey>,
    stream: Arc<Stream>,
    /// Who hears of events as they are committed (see [`Outbox`]), set once at start. Weak: each
    /// of them holds this service.
    outboxes: std::sync::OnceLock<Vec<std::sync::Weak<dyn Outbox>>>,
    /// One writer at a time per room keeps prev_events, depth and state consistent.
    room_locks: Mutex<HashMap<ShortId, Arc<pipeline::RoomSlot>>>,
    /// Serialises claiming new room IDs (see `create_room`).
    create_lock: tokio::sync::Mutex<()>,
    /// Serialises storing outliers (check, then allocate).
    outlier_lock: tokio::sync::Mutex<()>,
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
        let events = Arc::new(events::Events::new(&db, shortids.clone()));
        let state = Arc::new(state::State::new(&db, shortids.clone(), events.clone())?);
        let membership = Arc::new(membership::Members::new(
            &db,
            shortids.clone(),
            events.clone(),
            server_name.clone(),
        ));
        let timeline = Arc::new(timeline::Timeline::new(
            &db,
            shortids.clone(),
            events.clone(),
            state.clone(),
            membership.clone(),
        ));
        let aliases = alias::Aliases::new(&db, server_name.clone(), events.clone(), state.clone());
        Ok(Self {
            aliases,
            events,
            state,
            membership,
            timeline,
            tables: Tables::new(&db),
            db,
            shortids,
            server_name,
            signing_key,
            stream,
            outboxes: std::sync::OnceLock::new(),
            room_locks: Mutex::new(HashMap::new()),
            create_lock: tokio::sync::Mutex::new(()),
            outlier_lock: tokio::sync::Mutex::new(()),
            outgoing_listener: std::sync::OnceLock::new(),
        })
    }

    /// Sets who hears of committed events (see [`Outbox`]).
    pub fn set_outboxes(&self, outboxes: Vec<std::sync::Weak<dyn Outbox>>) {
        let _ = self.outboxes.set(outboxes);
    }

    /// Adds the outboxes' rows for events about to be committed to their batch: notification
    /// counts become visible with the events, in the same /sync answer and the same wake-up.
    /// A failed evaluation costs notifications or deliveries, never the events.
    fn outboxes_in(
        &self,
        batch: &mut Batch,
        room: ShortId,
        room_id: &RoomId,
        events: &[(ShortId, &CanonicalJsonObject)],
    ) {
        for outbox in self.outboxes.get().into_iter().flatten() {
            let Some(outbox) = outbox.upgrade() else {
                continue;
            };
            if let Err(e) = outbox.queue_in(batch, room, room_id, events) {
                tracing::warn!(%room_id, "an outbox could not queue events: {e}");
            }
        }
    }

    /// Tells the outboxes that a batch of `room` is durable.
    fn outboxes_member_in(
        &self,
        batch: &mut Batch,
        user: ShortId,
        user_id: &str,
        membership: &MembershipState,
        content: &serde_json::Value,
    ) {
        for outbox in self.outboxes.get().into_iter().flatten() {
            if let Some(outbox) = outbox.upgrade() {
                outbox.member_in(batch, user, user_id, membership, content);
            }
        }
    }

    fn outboxes_written(&self, room: ShortId) {
        for outbox in self.outboxes.get().into_iter().flatten() {
            if let Some(outbox) = outbox.upgrade() {
                outbox.written(room);
            }
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
