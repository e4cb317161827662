//! Reading a room: its timeline in stream order, who may see which event (history
//! visibility), and events in the client format with their bundled relations.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    room_version_rules::EventIdFormatVersion,
    OwnedEventId, RoomId, UserId,
};
use serde_json::{json, Value as JsonValue};

use super::{
    events::Events,
    history::{Access, HistoryVisibility, Viewer},
    membership::Members,
    pdu::{client_event, stored_redacted_because},
    state::{State, StateGroupId},
};
use crate::{
    error::{Error, Result},
    storage::{tables, Db, ShortId, ShortIds, Table},
};

/// Event types that move a room up a client's room list (sliding sync's `bump_stamp`): what
/// people post, not reactions, edits of state or receipts.
pub const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "org.matrix.msc3381.poll.start",
    "m.beacon_info",
    "org.matrix.msc3672.beacon_info",
];

/// Whether an event of this type moves its room up (see [`BUMP_TYPES`]); on the send path, so
/// the common types are matched without formatting them.
pub fn bumps(kind: &ruma::events::TimelineEventType) -> bool {
    use ruma::events::TimelineEventType as T;
    match kind {
        T::RoomCreate | T::RoomMessage | T::RoomEncrypted | T::Sticker | T::CallInvite => true,
        T::Reaction | T::RoomMember | T::RoomRedaction => false,
        // Polls and live locations are not typed in ruma's stable set.
        other => matches!(
            other.to_string().as_str(),
            "m.poll.start"
                | "org.matrix.msc3381.poll.start"
                | "m.beacon_info"
                | "org.matrix.msc3672.beacon_info"
        ),
    }
}

pub struct Timeline {
    shortids: Arc<ShortIds>,
    events: Arc<Events>,
    state: Arc<State>,
    membership: Arc<Members>,
    timeline: Table<tables::Timeline>,
    relations: Table<tables::Relations>,
    threads: Table<tables::Threads>,
    room_bump: Table<tables::RoomBump>,
}

impl Timeline {
    /// The stream position of the room's latest event that moves it up a client's list
    /// (see [`BUMP_TYPES`]), or of its latest event when none was recorded.
    pub fn bump_stamp(&self, room: ShortId) -> Result<Option<u64>> {
        if let Some(pos) = self.room_bump.get(room)? {
            return Ok(Some(pos));
        }
        Ok(self.timeline(room, u64::MAX, false, 1)?.first().copied())
    }

    pub(super) fn new(
        db: &Db,
        shortids: Arc<ShortIds>,
        events: Arc<Events>,
        state: Arc<State>,
        membership: Arc<Members>,
    ) -> Self {
        Self {
            shortids,
            events,
            state,
            membership,
            timeline: Table::new(db),
            relations: Table::new(db),
            threads: Table::new(db),
            room_bump: Table::new(db),
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
            self.timeline
                .range((room, from.saturating_add(1)), (room.saturating_add(1), 0))
        } else {
            self.timeline.range_rev((room, from), (room, 0))
        };
        rows.keys().take(limit).map(|k| Ok(k?.1)).collect()
    }

    /// Whether and how `user` may read the room: 403 (nothing leaked, whether or not the room
    /// exists) when they never were in it and it is not world-readable.
    pub fn room_access(&self, user: &UserId, room_id: &RoomId) -> Result<(ShortId, Access)> {
        let not_in = || Error::forbidden("You are not in this room");
        let room = self.events.room_short(room_id)?.ok_or_else(not_in)?;
        if let Some(m) = self.membership.membership_of_full(user, room)? {
            if m.membership() == MembershipState::Join {
                return Ok((room, Access::Joined));
            }
            // Knocking gives no access to history, and a forgotten room is gone for the user.
            let forgotten = match self
                .shortids
                .get(crate::storage::IdKind::User, user.as_str())?
            {
                Some(u) => self.membership.is_forgotten(u, room)?,
                None => false,
            };
            if m.membership() != MembershipState::Knock && !forgotten {
                return Ok((room, Access::Former(m.event)));
            }
        }
        let visibility = self
            .state
            .current_state_pdu(room, &StateEventType::RoomHistoryVisibility, "")?
            .map(|p| HistoryVisibility::parse(&p.content_value()))
            .unwrap_or(HistoryVisibility::Shared);
        if visibility == HistoryVisibility::WorldReadable {
            return Ok((room, Access::Public));
        }
        Err(not_in())
    }

    /// A viewer for `user` in `room`, for [`Timeline::can_see`].
    pub fn viewer(&self, user: &UserId, room: ShortId) -> Result<Viewer> {
        let member_key = self
            .state
            .state_key_short(&StateEventType::RoomMember, user.as_str())?;
        let visibility_key = self
            .state
            .state_key_short(&StateEventType::RoomHistoryVisibility, "")?;
        // The latest join: the current membership if it is a join, else the last join found by
        // walking back through the user's earlier membership events.
        let mut latest_join = None;
        let mut next = self
            .membership
            .membership_of_full(user, room)?
            .map(|m| m.event);
        let mut steps = 0;
        while let (Some(event), Some(mk)) = (next, member_key) {
            steps += 1;
            let Some(pdu) = self.events.pdu(event)? else {
                break;
            };
            if pdu
                .content_value()
                .get("membership")
                .and_then(JsonValue::as_str)
                == Some("join")
            {
                latest_join = Some(event);
                break;
            }
            // Membership changes are few per user; the bound only guards corrupt data.
            if steps > 1000 {
                break;
            }
            let Some(meta) = self.events.event_meta(event)? else {
                break;
            };
            next = self.state.state_at(meta.state_before)?.get(&mk).copied();
        }
        Ok(Viewer {
            user: user.to_owned(),
            room,
            member_key,
            visibility_key,
            latest_join,
            at: HashMap::new(),
        })
    }

    fn visibility_at(
        &self,
        viewer: &mut Viewer,
        group: StateGroupId,
    ) -> Result<(HistoryVisibility, MembershipState)> {
        if let Some(v) = viewer.at.get(&group) {
            return Ok(v.clone());
        }
        let state = self.state.state_at(group)?;
        let content = |key: Option<ShortId>| -> Result<Option<JsonValue>> {
            match key.and_then(|k| state.get(&k)) {
                Some(e) => Ok(self.events.pdu(*e)?.map(|p| p.content_value())),
                None => Ok(None),
            }
        };
        let visibility = content(viewer.visibility_key)?
            .map(|c| HistoryVisibility::parse(&c))
            .unwrap_or(HistoryVisibility::Shared);
        let membership = content(viewer.member_key)?
            .and_then(|c| {
                c.get("membership")
                    .and_then(JsonValue::as_str)
                    .map(MembershipState::from)
            })
            .unwrap_or(MembershipState::Leave);
        // Bounded: a viewer lives for one request, but a request may cross many state groups.
        if viewer.at.len() < 4096 {
            viewer.at.insert(group, (visibility, membership.clone()));
        }
        Ok((visibility, membership))
    }

    fn allowed(
        viewer: &Viewer,
        event: ShortId,
        (visibility, membership): &(HistoryVisibility, MembershipState),
    ) -> bool {
        match (*visibility, membership) {
            (HistoryVisibility::WorldReadable, _) | (_, MembershipState::Join) => true,
            (HistoryVisibility::Shared, _) => viewer.latest_join.is_some_and(|j| j > event),
            (HistoryVisibility::Invited, MembershipState::Invite) => true,
            _ => false,
        }
    }

    /// Whether the viewer may see this event of their room.
    pub fn can_see(&self, viewer: &mut Viewer, event: ShortId) -> Result<bool> {
        let Some(meta) = self.events.event_meta(event)? else {
            return Ok(false);
        };
        if meta.room != viewer.room {
            return Ok(false);
        }
        let before = self.visibility_at(viewer, meta.state_before)?;
        if Self::allowed(viewer, event, &before) {
            return Ok(true);
        }
        if meta.state_after == meta.state_before {
            return Ok(false);
        }
        // Visibility changes and the user's own membership changes count if either side of
        // them would allow it.
        let (kind, key) = match self.events.pdu(event)? {
            Some(p) => (p.kind.to_string(), p.state_key.clone()),
            None => return Ok(false),
        };
        let own_membership =
            kind == "m.room.member" && key.as_deref() == Some(viewer.user.as_str());
        if kind == "m.room.history_visibility" || own_membership {
            let after = self.visibility_at(viewer, meta.state_after)?;
            return Ok(Self::allowed(viewer, event, &after));
        }
        Ok(false)
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
        let Some(stored) = self.events.event_json(short)? else {
            return Ok(None);
        };
        let event_id = self.events.event_id_of(short)?;
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
        let Some(stored) = self.events.event_json(short)? else {
            return Ok(None);
        };
        let event_id = self.events.event_id_of(short)?;
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
            .events
            .room_short(room_id)?
            .map(|room| self.state.meta(room))
            .transpose()?
            .flatten()
        else {
            return Ok(None);
        };
        let rules = super::Service::version_rules(&meta.version)?;
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

    /// Children of an event with their rel_type, in stream order.
    pub fn children(&self, parent: ShortId) -> Result<Vec<(ShortId, String)>> {
        self.relations
            .scan((parent,))
            .map(|r| Ok(r.map(|((_, child), rel_type)| (child, rel_type))?))
            .collect()
    }

    /// Thread roots of a room with the position of their latest reply.
    pub fn threads(&self, room: ShortId) -> Result<Vec<(ShortId, u64)>> {
        self.threads
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
        let original = self.events.pdu(event)?;
        let mut out = serde_json::Map::new();
        let mut latest_edit = None;
        let mut thread: Vec<ShortId> = Vec::new();
        let mut references = Vec::new();
        for (child, rel_type) in children {
            let Some(pdu) = self.events.pdu(child)? else {
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
                    participated = self.events.pdu(*c)?.is_some_and(|p| p.sender == viewer);
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
