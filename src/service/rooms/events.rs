//! Stored events: the ID lookups, each event's JSON and its place (`pdus`, `event_meta`,
//! `event_txn`, `outliers`), and walks of the DAG over them. Read-only: events are written by the
//! commit (`commit.rs`) alone.

use std::{collections::HashSet, sync::Arc};

use ruma::{CanonicalJsonObject, EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId};

use super::{pdu::Pdu, EventMeta};
use crate::{
    error::{Error, Result},
    storage::{tables, Db, IdKind, ShortId, ShortIds, Table},
};

/// A delayed event (MSC4140) is sent without a device, under this prefix and its delay ID as
/// transaction ID: sending it again answers with the event already sent.
pub const DELAYED_EVENT_TXN_PREFIX: &str = "org.matrix.msc4140.delay:";

pub struct Events {
    shortids: Arc<ShortIds>,
    pdus: Table<tables::Pdus>,
    event_meta: Table<tables::EventMeta>,
    event_txn: Table<tables::EventTxn>,
    outliers: Table<tables::Outliers>,
}

impl Events {
    pub(super) fn new(db: &Db, shortids: Arc<ShortIds>) -> Self {
        Self {
            shortids,
            pdus: Table::new(db),
            event_meta: Table::new(db),
            event_txn: Table::new(db),
            outliers: Table::new(db),
        }
    }

    pub fn room_short(&self, room_id: &RoomId) -> Result<Option<ShortId>> {
        Ok(self.shortids.get(IdKind::Room, room_id.as_str())?)
    }

    pub fn user_short(&self, user_id: &ruma::UserId) -> Result<Option<ShortId>> {
        Ok(self.shortids.get(IdKind::User, user_id.as_str())?)
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
        Ok(self.event_meta.get(short)?.map(EventMeta::from))
    }

    /// The stored JSON of an event (redacted form once redacted).
    pub fn event_json(
        &self,
        short: ShortId,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
        self.stored(short)
    }

    pub fn event_canonical(&self, short: ShortId) -> Result<Option<CanonicalJsonObject>> {
        self.stored(short)
    }

    /// A stored event decoded as `T`.
    fn stored<T: serde::de::DeserializeOwned>(&self, short: ShortId) -> Result<Option<T>> {
        match self.pdus.get(short)? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::internal(format!("stored PDU: {e}"))),
            None => Ok(None),
        }
    }

    pub fn pdu(&self, short: ShortId) -> Result<Option<Pdu>> {
        let Some(b) = self.pdus.get(short)? else {
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

    pub fn user_id_of(&self, short: ShortId) -> Result<OwnedUserId> {
        match self.shortids.lookup(short)? {
            Some((IdKind::User, s)) => OwnedUserId::try_from(s)
                .map_err(|e| Error::internal(format!("stored user ID: {e}"))),
            _ => Err(Error::internal(format!("short ID {short} is not a user"))),
        }
    }

    /// The user IDs of many short IDs in one read; `None` for one that is not a user.
    pub fn user_ids_of(&self, shorts: &[ShortId]) -> Result<Vec<Option<OwnedUserId>>> {
        Ok(self
            .shortids
            .lookup_many(shorts)?
            .into_iter()
            .map(|found| match found {
                Some((IdKind::User, s)) => OwnedUserId::try_from(s).ok(),
                _ => None,
            })
            .collect())
    }

    pub fn room_id_of(&self, short: ShortId) -> Result<OwnedRoomId> {
        match self.shortids.lookup(short)? {
            Some((IdKind::Room, s)) => OwnedRoomId::try_from(s)
                .map_err(|e| Error::internal(format!("stored room ID: {e}"))),
            _ => Err(Error::internal(format!("short ID {short} is not a room"))),
        }
    }

    /// The stored transaction's event, if this device already sent it.
    /// The sending device and transaction ID of an event sent by a local client.
    pub fn event_txn(&self, short: ShortId) -> Result<Option<(String, String)>> {
        Ok(self.event_txn.get(short)?)
    }

    /// Adds `unsigned.transaction_id` to an event the given device sent; for a delayed event
    /// (sent without a device, see [`DELAYED_EVENT_TXN_PREFIX`]), MSC4140's
    /// `unsigned.org.matrix.msc4140.delay_id`, for every device of its sender. Callers show it to
    /// the event's sender only.
    pub fn add_transaction_id(
        &self,
        short: ShortId,
        device_id: &str,
        json: &mut serde_json::Value,
    ) -> Result<()> {
        if let Some((device, txn)) = self.event_txn(short)? {
            if let Some(delay_id) = txn
                .strip_prefix(DELAYED_EVENT_TXN_PREFIX)
                .filter(|_| device.is_empty())
            {
                json["unsigned"]["org.matrix.msc4140.delay_id"] = delay_id.into();
            } else if device == device_id {
                json["unsigned"]["transaction_id"] = txn.into();
            }
        }
        Ok(())
    }

    /// Whether a stored event is a membership event (cheap enough for after-write bookkeeping).
    pub(super) fn is_member_event(&self, short: ShortId) -> bool {
        self.pdu(short)
            .ok()
            .flatten()
            .is_some_and(|p| p.kind == ruma::events::TimelineEventType::RoomMember)
    }

    /// The flags of a stored event outside the timeline (0 for timeline events).
    pub fn event_flags(&self, short: ShortId) -> Result<u8> {
        Ok(self.outliers.get(short)?.unwrap_or(0))
    }

    /// Whether the event is stored with its place in the DAG (not only as an outlier).
    pub fn has_in_dag(&self, event_id: &EventId) -> Result<bool> {
        Ok(match self.event_short(event_id)? {
            Some(s) => self.event_meta(s)?.is_some(),
            None => false,
        })
    }

    /// Every event reachable from `ids` through auth_events (the starting events excluded unless
    /// reached). Events we do not have are skipped.
    pub fn auth_chain(
        &self,
        ids: impl IntoIterator<Item = OwnedEventId>,
    ) -> Result<HashSet<OwnedEventId>> {
        let mut out = HashSet::new();
        let mut todo: Vec<OwnedEventId> = Vec::new();
        for id in ids {
            if let Some(pdu) = self.pdu_by_id(&id)? {
                todo.extend(pdu.auth_events);
            }
        }
        while let Some(id) = todo.pop() {
            if out.contains(&id) {
                continue;
            }
            if let Some(pdu) = self.pdu_by_id(&id)? {
                todo.extend(pdu.auth_events.iter().cloned());
                out.insert(id);
            }
        }
        Ok(out)
    }

    /// Events before `from` in the DAG, newest first, for /backfill: breadth-first over
    /// prev_events, at most `limit`.
    pub fn backfill_from(
        &self,
        room: ShortId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<ShortId>> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut queue: std::collections::VecDeque<OwnedEventId> = from.iter().cloned().collect();
        while let Some(id) = queue.pop_front() {
            if out.len() >= limit {
                break;
            }
            if !seen.insert(id.clone()) {
                continue;
            }
            let Some(short) = self.event_short(&id)? else {
                continue;
            };
            if self.event_meta(short)?.is_none_or(|m| m.room != room) {
                continue;
            }
            let Some(pdu) = self.pdu(short)? else {
                continue;
            };
            out.push(short);
            queue.extend(pdu.prev_events);
        }
        Ok(out)
    }
}
