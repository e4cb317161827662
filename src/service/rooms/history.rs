//! History visibility: who may read a room, and which of its events, by the spec's rules
//! evaluated against the room's state at each event.

use std::collections::HashMap;

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    OwnedUserId, RoomId, UserId,
};
use serde_json::Value as JsonValue;

use super::{state::StateGroupId, Service};
use crate::{
    error::{Error, Result},
    storage::ShortId,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryVisibility {
    WorldReadable,
    Shared,
    Invited,
    Joined,
}

impl HistoryVisibility {
    fn parse(content: &JsonValue) -> Self {
        // Unknown or missing values count as `shared`, as the spec says.
        match content
            .get("history_visibility")
            .and_then(JsonValue::as_str)
        {
            Some("world_readable") => Self::WorldReadable,
            Some("invited") => Self::Invited,
            Some("joined") => Self::Joined,
            _ => Self::Shared,
        }
    }
}

/// How a user may read a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Joined now.
    Joined,
    /// Was in the room (joined, invited, ...) and is no longer: readable up to this membership
    /// event, by the visibility rules.
    Former(ShortId),
    /// Never a member, but the room is world-readable now.
    Public,
}

/// One user's view of one room's history. Caches what it learns per state group, since long
/// runs of messages share one.
pub struct Viewer {
    user: OwnedUserId,
    room: ShortId,
    member_key: Option<ShortId>,
    visibility_key: Option<ShortId>,
    /// Stream position of the user's latest join, for the `shared` rule.
    latest_join: Option<ShortId>,
    at: HashMap<StateGroupId, (HistoryVisibility, MembershipState)>,
}

impl Service {
    /// Whether and how `user` may read the room: 403 (nothing leaked, whether or not the room
    /// exists) when they never were in it and it is not world-readable.
    pub fn room_access(&self, user: &UserId, room_id: &RoomId) -> Result<(ShortId, Access)> {
        let not_in = || Error::forbidden("You are not in this room");
        let room = self.room_short(room_id)?.ok_or_else(not_in)?;
        if let Some(m) = self.membership_of_full(user, room)? {
            if m.membership() == MembershipState::Join {
                return Ok((room, Access::Joined));
            }
            // Knocking gives no access to history, and a forgotten room is gone for the user.
            let forgotten = match self
                .shortids
                .get(crate::storage::IdKind::User, user.as_str())?
            {
                Some(u) => self.is_forgotten(u, room)?,
                None => false,
            };
            if m.membership() != MembershipState::Knock && !forgotten {
                return Ok((room, Access::Former(m.event)));
            }
        }
        let visibility = self
            .current_state_pdu(room, &StateEventType::RoomHistoryVisibility, "")?
            .map(|p| HistoryVisibility::parse(&p.content_value()))
            .unwrap_or(HistoryVisibility::Shared);
        if visibility == HistoryVisibility::WorldReadable {
            return Ok((room, Access::Public));
        }
        Err(not_in())
    }

    /// A viewer for `user` in `room`, for [`Service::can_see`].
    pub fn viewer(&self, user: &UserId, room: ShortId) -> Result<Viewer> {
        let member_key = self.state_key_short(&StateEventType::RoomMember, user.as_str())?;
        let visibility_key = self.state_key_short(&StateEventType::RoomHistoryVisibility, "")?;
        // The latest join: the current membership if it is a join, else the last join found by
        // walking back through the user's earlier membership events.
        let mut latest_join = None;
        let mut next = self.membership_of_full(user, room)?.map(|m| m.event);
        let mut steps = 0;
        while let (Some(event), Some(mk)) = (next, member_key) {
            steps += 1;
            let Some(pdu) = self.pdu(event)? else { break };
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
            let Some(meta) = self.event_meta(event)? else {
                break;
            };
            next = self.state.load(meta.state_before)?.get(&mk).copied();
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
        let state = self.state.load(group)?;
        let content = |key: Option<ShortId>| -> Result<Option<JsonValue>> {
            match key.and_then(|k| state.get(&k)) {
                Some(e) => Ok(self.pdu(*e)?.map(|p| p.content_value())),
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
        let Some(meta) = self.event_meta(event)? else {
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
        let (kind, key) = match self.pdu(event)? {
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
}
