//! Event relationships (edits, reactions, threads, references): the relations index, thread
//! list, and the aggregations bundled into `unsigned.m.relations`. Owns the `relations` and
//! `threads` keyspaces.

use ruma::{room_version_rules::EventIdFormatVersion, OwnedEventId, UserId};
use serde_json::{json, Value as JsonValue};

use super::{
    pdu::{client_event, stored_redacted_because, Pdu},
    Service,
};
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
        let Some(parent_short) = self.event_short(&parent)? else {
            return Ok(());
        };
        if self
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
        let Some(pdu) = self.pdu(child)? else {
            return Ok(());
        };
        if let Some((_, parent)) = relates_to(&pdu) {
            if let Some(parent_short) = self.event_short(&parent)? {
                self.tables
                    .relations
                    .delete_in(batch, (parent_short, child));
            }
        }
        Ok(())
    }

    /// An event in the client format as `viewer` sees it, with bundled aggregations (and, for a
    /// redacted event, the redaction under `unsigned.redacted_because`).
    pub fn client_event_json(
        &self,
        short: ShortId,
        room_id: &ruma::RoomId,
        viewer: &UserId,
    ) -> Result<Option<JsonValue>> {
        let now = crate::util::now_ms();
        let Some(stored) = self.event_json(short)? else {
            return Ok(None);
        };
        let event_id = self.event_id_of(short)?;
        let mut json = self.client_form(&event_id, room_id, &stored, now)?;
        if stored_redacted_because(&stored).is_none() {
            let plain = |s: ShortId| self.client_event(s, room_id);
            if let Some(agg) = self.bundled_aggregations(short, viewer, &plain)? {
                json["unsigned"]["m.relations"] = agg;
            }
        }
        Ok(Some(json))
    }

    /// An event in the client format, without bundled aggregations; a redacted one carries its
    /// redaction, in the client format too, under `unsigned.redacted_because`.
    pub fn client_event(
        &self,
        short: ShortId,
        room_id: &ruma::RoomId,
    ) -> Result<Option<JsonValue>> {
        let Some(stored) = self.event_json(short)? else {
            return Ok(None);
        };
        let event_id = self.event_id_of(short)?;
        self.client_form(&event_id, room_id, &stored, crate::util::now_ms())
            .map(Some)
    }

    /// The client form of a stored event. A redacted event stores its redaction as a PDU (no event
    /// ID from v3 on, hashes, signatures, DAG links); clients get it as a client event, with the
    /// event ID derived from it by the room version's rules. Federation serves the stored PDU
    /// as it is.
    fn client_form(
        &self,
        event_id: &ruma::EventId,
        room_id: &ruma::RoomId,
        stored: &serde_json::Map<String, JsonValue>,
        now: u64,
    ) -> Result<JsonValue> {
        let mut json = client_event(event_id, room_id, stored, now);
        if let Some(because) = stored_redacted_because(stored) {
            if let Some(redaction) = self.client_redaction(room_id, because, now)? {
                json["unsigned"]["redacted_because"] = redaction;
            }
        }
        Ok(json)
    }

    /// The client form of the redaction PDU a redacted event of `room_id` stores.
    fn client_redaction(
        &self,
        room_id: &ruma::RoomId,
        because: &serde_json::Map<String, JsonValue>,
        now: u64,
    ) -> Result<Option<JsonValue>> {
        let Some(meta) = self
            .room_short(room_id)?
            .map(|room| self.meta(room))
            .transpose()?
            .flatten()
        else {
            return Ok(None);
        };
        let rules = Self::version_rules(&meta.version)?;
        let event_id = match rules.event_id_format {
            EventIdFormatVersion::V1 => because
                .get("event_id")
                .and_then(JsonValue::as_str)
                .and_then(|id| OwnedEventId::try_from(id).ok()),
            _ => ruma::canonical_json::try_from_json_map(because.clone())
                .ok()
                .and_then(|object| hearth_federation::pdu::event_id(&object, &rules).ok())
                .flatten(),
        };
        let Some(event_id) = event_id else {
            tracing::warn!(%room_id, "a redacted event's redaction has no readable event ID");
            return Ok(None);
        };
        Ok(Some(client_event(&event_id, room_id, because, now)))
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
            .and_then(|p| self.event_short(&p).transpose())
        else {
            return Ok(());
        };
        for (child, rel_type) in self.children(parent?)? {
            if rel_type != "m.annotation" {
                continue;
            }
            let Some(pdu) = self.pdu(child)? else {
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

    /// Children of an event with their rel_type, in stream order.
    pub fn children(&self, parent: ShortId) -> Result<Vec<(ShortId, String)>> {
        self.tables
            .relations
            .scan((parent,))
            .map(|r| Ok(r.map(|((_, child), rel_type)| (child, rel_type))?))
            .collect()
    }

    /// Thread roots of a room with the position of their latest reply.
    pub fn threads(&self, room: ShortId) -> Result<Vec<(ShortId, u64)>> {
        self.tables
            .threads
            .scan((room,))
            .map(|r| Ok(r.map(|((_, root), latest)| (root, latest))?))
            .collect()
    }

    /// The aggregations bundled into an event's `unsigned.m.relations`, as seen by `viewer`.
    /// `client_event` turns stored events into what clients see.
    pub fn bundled_aggregations(
        &self,
        event: ShortId,
        viewer: &UserId,
        client_event: &dyn Fn(ShortId) -> Result<Option<JsonValue>>,
    ) -> Result<Option<JsonValue>> {
        let children = self.children(event)?;
        if children.is_empty() {
            return Ok(None);
        }
        let original = self.pdu(event)?;
        let mut out = serde_json::Map::new();
        let mut latest_edit = None;
        let mut thread: Vec<ShortId> = Vec::new();
        let mut references = Vec::new();
        for (child, rel_type) in children {
            let Some(pdu) = self.pdu(child)? else {
                continue;
            };
            match rel_type.as_str() {
                // Only the original sender's edits replace the content.
                "m.replace" if original.as_ref().is_some_and(|o| o.sender == pdu.sender) => {
                    latest_edit = Some(child);
                }
                "m.thread" => thread.push(child),
                "m.reference" => references.push(json!({ "event_id": pdu.event_id })),
                // The spec has servers leave annotations out of `m.relations`; clients count
                // them from /relations.
                _ => {}
            }
        }
        if let Some(edit) = latest_edit {
            if let Some(ev) = client_event(edit)? {
                out.insert("m.replace".into(), ev);
            }
        }
        if let Some(last) = thread.last() {
            let mut participated = original.as_ref().is_some_and(|o| o.sender == viewer);
            for c in &thread {
                if !participated {
                    participated = self.pdu(*c)?.is_some_and(|p| p.sender == viewer);
                }
            }
            if let Some(latest) = client_event(*last)? {
                out.insert(
                    "m.thread".into(),
                    json!({
                        "latest_event": latest,
                        "count": thread.len(),
                        "current_user_participated": participated,
                    }),
                );
            }
        }
        if !references.is_empty() {
            out.insert("m.reference".into(), json!({ "chunk": references }));
        }
        Ok((!out.is_empty()).then_some(JsonValue::Object(out)))
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
