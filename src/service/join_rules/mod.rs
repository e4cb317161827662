//! Join rules as the server applies them before the auth rules do: who may vouch for a join to a
//! restricted room. Shared by local joins and by a remote server's make_join; built on public
//! `rooms` reads only.

use ruma::{events::StateEventType, UserId};
use serde_json::Value as JsonValue;

use super::Services;
use crate::{
    error::{Error, Result},
    storage::ShortId,
};

/// For a room whose join rule is `restricted` or `knock_restricted`: a local member who vouches
/// for the join, when the user is in one of the rooms the rule allows. `None` when the rule is
/// something else (the auth rules decide). A user who meets no condition gets 403 here, with a
/// clearer reason than the auth rules would give.
pub fn restricted_join_authoriser(
    services: &Services,
    user_id: &UserId,
    room: ShortId,
) -> Result<Option<ruma::OwnedUserId>> {
    let Some(rules) =
        services
            .rooms
            .state
            .current_state_pdu(room, &StateEventType::RoomJoinRules, "")?
    else {
        return Ok(None);
    };
    let content = rules.content_value();
    let rule = content
        .get("join_rule")
        .and_then(JsonValue::as_str)
        .unwrap_or_default();
    if rule != "restricted" && rule != "knock_restricted" {
        return Ok(None);
    }
    let allowed = content
        .get("allow")
        .and_then(JsonValue::as_array)
        .into_iter()
        .flatten()
        .filter(|a| a.get("type").and_then(JsonValue::as_str) == Some("m.room_membership"))
        .filter_map(|a| a.get("room_id").and_then(JsonValue::as_str))
        .filter_map(|r| ruma::RoomId::parse(r).ok())
        .any(|r| {
            services
                .rooms
                .events
                .room_short(&r)
                .ok()
                .flatten()
                .is_some_and(|short| {
                    services
                        .rooms
                        .membership
                        .is_joined(user_id, short)
                        .unwrap_or(false)
                })
        });
    if !allowed {
        return Err(Error::forbidden(
            "This room is restricted to members of other rooms, and you are in none of them",
        ));
    }
    services
        .rooms
        .authorising_user(room)?
        .map(Some)
        .ok_or_else(|| Error::forbidden("No member of this room on this server can let you in"))
}
