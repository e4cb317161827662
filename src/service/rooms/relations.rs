//! Event relationships (edits, reactions, threads, references): how the commit indexes them
//! (`relations` and `threads` keyspaces), duplicate annotations, and reports. The reads (bundled
//! aggregations, thread lists) are the timeline's.

use ruma::UserId;
use serde_json::Value as JsonValue;

use super::{pdu::Pdu, Service};
use crate::{
    error::{Error, Result},
    storage::{Batch, ShortId},
};

/// The `m.relates_to` of an event: (rel_type, parent event ID).
pub fn relates_to(pdu: &Pdu) -> Option<(String, ruma::OwnedEventId)> {
    let content = pdu.content_value();
    let rel = content.get("m.relates_to")?;
    let rel_type = rel.get("rel_type")?.as_str()?.to_owned();
    let parent = ruma::OwnedEventId::try_from(rel.get("event_id")?.as_str()?).ok()?;
    Some((rel_type, parent))
}

impl Service {
    /// Indexes a new event's relation, if it has one to an event of the same room.
    pub(super) fn index_relation_in(
        &self,
        batch: &mut Batch,
        room: ShortId,
        short: ShortId,
        pdu: &Pdu,
    ) -> Result<()> {
        let Some((rel_type, parent)) = relates_to(pdu) else {
            return Ok(());
        };
        let Some(parent_short) = self.events.event_short(&parent)? else {
            return Ok(());
        };
        if self
            .events
            .event_meta(parent_short)?
            .is_none_or(|m| m.room != room)
        {
            return Ok(());
        }
        if rel_type == "m.thread" {
            self.tables
                .threads
                .put_in(batch, (room, parent_short), &short);
        }
        self.tables
            .relations
            .put_in(batch, (parent_short, short), &rel_type);
        Ok(())
    }

    /// Drops a redacted event's relation, so it no longer counts anywhere.
    pub(super) fn unindex_relation_in(&self, batch: &mut Batch, child: ShortId) -> Result<()> {
        let Some(pdu) = self.events.pdu(child)? else {
            return Ok(());
        };
        if let Some((_, parent)) = relates_to(&pdu) {
            if let Some(parent_short) = self.events.event_short(&parent)? {
                self.tables
                    .relations
                    .delete_in(batch, (parent_short, child));
            }
        }
        Ok(())
    }

    /// Refuses a second annotation with the same type and key on the same event by the same
    /// sender, as the spec asks (redacted ones no longer count: redaction unindexes them).
    pub(super) fn check_duplicate_annotation(
        &self,
        sender: &UserId,
        ev: &super::NewEvent,
    ) -> Result<()> {
        let Some(rel) = ev.content.get("m.relates_to") else {
            return Ok(());
        };
        if rel.get("rel_type").and_then(JsonValue::as_str) != Some("m.annotation") {
            return Ok(());
        }
        let (Some(parent), Some(key)) = (
            rel.get("event_id").and_then(JsonValue::as_str),
            rel.get("key").and_then(JsonValue::as_str),
        ) else {
            return Ok(());
        };
        let Some(parent) = ruma::EventId::parse(parent)
            .ok()
            .and_then(|p| self.events.event_short(&p).transpose())
        else {
            return Ok(());
        };
        for (child, rel_type) in self.timeline.children(parent?)? {
            if rel_type != "m.annotation" {
                continue;
            }
            let Some(pdu) = self.events.pdu(child)? else {
                continue;
            };
            if pdu.sender == sender
                && pdu.kind == ev.kind
                && pdu
                    .content_value()
                    .pointer("/m.relates_to/key")
                    .and_then(JsonValue::as_str)
                    == Some(key)
            {
                return Err(Error::matrix(
                    crate::error::ErrorKind::DuplicateAnnotation,
                    "You already sent this annotation for that event",
                ));
            }
        }
        Ok(())
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Report {
    reporter: ruma::OwnedUserId,
    room_id: ruma::OwnedRoomId,
    /// Absent for a report of the whole room.
    event_id: Option<ruma::OwnedEventId>,
    reason: Option<String>,
    ts: u64,
}

impl Service {
    /// Stores a user's report of an event for the server's admins.
    pub async fn report(
        &self,
        reporter: &UserId,
        room_id: &ruma::RoomId,
        event_id: Option<&ruma::EventId>,
        reason: Option<&str>,
    ) -> Result<()> {
        let ts = crate::util::now_ms();
        // Time-ordered IDs with a random tail, so concurrent reports never collide.
        let id = (ts << 16) | u64::from(rand::random::<u16>());
        let mut b = Batch::new();
        self.tables.reports.put_in(
            &mut b,
            id,
            &Report {
                reporter: reporter.to_owned(),
                room_id: room_id.to_owned(),
                event_id: event_id.map(ToOwned::to_owned),
                reason: reason.map(str::to_owned),
                ts,
            },
        );
        self.db.write(b).await?;
        tracing::info!(%reporter, %room_id, ?event_id, "reported");
        Ok(())
    }
}
