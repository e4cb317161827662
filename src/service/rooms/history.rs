//! History visibility's terms: the rule values, how a user may read a room, and one user's view
//! of one room; the timeline (`timeline.rs`) evaluates them against the state at each event.

use std::collections::HashMap;

use ruma::{events::room::member::MembershipState, OwnedUserId};
use serde_json::Value as JsonValue;

use super::{state::StateGroupId, Service};
use crate::storage::ShortId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryVisibility {
    WorldReadable,
    Shared,
    Invited,
    Joined,
}

impl HistoryVisibility {
    pub(super) fn parse(content: &JsonValue) -> Self {
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
    pub(super) user: OwnedUserId,
    pub(super) room: ShortId,
    pub(super) member_key: Option<ShortId>,
    pub(super) visibility_key: Option<ShortId>,
    /// Stream position of the user's latest join, for the `shared` rule.
    pub(super) latest_join: Option<ShortId>,
    pub(super) at: HashMap<StateGroupId, (HistoryVisibility, MembershipState)>,
}

impl Service {}
