//! Room upgrades: a replacement room whose create event names its predecessor, the transferable
//! state copied over, local aliases and the directory listing moved, a tombstone in the old room
//! and its power levels raised so it falls quiet.

use ruma::{events::StateEventType, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId};
use serde_json::{json, Value as JsonValue};

use super::{pipeline::NewEvent, Service};
use crate::error::{Error, Result};

/// State the spec recommends carrying into the replacement room, in the order it is sent.
const TRANSFERRED: &[&str] = &[
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
];

pub struct Upgrade<'a> {
    pub old: &'a RoomId,
    pub sender: &'a UserId,
    pub version: RoomVersionId,
    /// v12+: further creators of the new room; never carried over implicitly.
    pub additional_creators: Vec<OwnedUserId>,
    /// The sender's display name and avatar for their join.
    pub profile: (Option<String>, Option<String>),
}

/// The highest level any action needs under these power levels.
fn highest_level(pl: &JsonValue) -> i64 {
    let mut max = 100;
    for key in [
        "users_default",
        "events_default",
        "state_default",
        "ban",
        "kick",
        "redact",
        "invite",
    ] {
        max = max.max(pl.get(key).and_then(JsonValue::as_i64).unwrap_or(0));
    }
    for field in ["events", "users"] {
        if let Some(map) = pl.get(field).and_then(JsonValue::as_object) {
            for v in map.values() {
                max = max.max(v.as_i64().unwrap_or(0));
            }
        }
    }
    max
}

impl Service {
    /// Upgrades a room; returns the replacement room's ID.
    pub async fn upgrade(&self, up: Upgrade<'_>) -> Result<OwnedRoomId> {
        let (room, meta) = self.state.known_room(up.old)?;
        if !self.membership.is_joined(up.sender, room)? {
            return Err(Error::forbidden("You are not in this room"));
        }
        if !self.user_can_send_state(room, up.sender, &StateEventType::RoomTombstone)? {
            return Err(Error::forbidden(
                "Your power level is too low to upgrade this room",
            ));
        }
        if self
            .state
            .current_state_event(room, &StateEventType::RoomTombstone, "")?
            .is_some()
        {
            return Err(Error::bad_json("This room has already been replaced"));
        }
        let rules = Self::rules(&up.version)?;
        let v12 = rules.authorization.explicitly_privilege_room_creators;
        let content_of = |kind: &str| -> Result<Option<JsonValue>> {
            Ok(self
                .state
                .current_state_pdu(room, &StateEventType::from(kind), "")?
                .map(|p| p.content_value()))
        };

        // The create event: predecessor, the old room's type and federation flag.
        let old_create = content_of("m.room.create")?.unwrap_or_default();
        let mut create = json!({
            "predecessor": { "room_id": up.old, "event_id": meta.extremities.last() },
        });
        for carried in ["type", "m.federate"] {
            if let Some(v) = old_create.get(carried) {
                create[carried] = v.clone();
            }
        }
        let mut creators: Vec<OwnedUserId> = vec![up.sender.to_owned()];
        if v12 {
            let extra: Vec<_> = up
                .additional_creators
                .iter()
                .filter(|u| *u != up.sender)
                .cloned()
                .collect();
            if !extra.is_empty() {
                create["additional_creators"] = json!(extra);
            }
            creators.extend(extra);
        } else if !up.additional_creators.is_empty() {
            return Err(Error::bad_json(format!(
                "Room version {} has no additional creators",
                up.version
            )));
        }

        // Power levels: copied, without creators in v12 (they hold unlimited power there). In
        // older versions the sender sends the copied state with the highest level first and the
        // copied levels last, as their own level may be below what some of that state needs.
        let mut pl = content_of("m.room.power_levels")?.unwrap_or_else(|| json!({}));
        if !pl.get("users").is_some_and(JsonValue::is_object) {
            pl["users"] = json!({});
        }
        let users = pl["users"]
            .as_object_mut()
            .ok_or_else(|| Error::internal("users"))?;
        if v12 {
            for c in &creators {
                users.remove(c.as_str());
            }
        } else {
            // From a v12 room, where creators are not listed, the sender needs a level here.
            let own = users.get(up.sender.as_str()).and_then(JsonValue::as_i64);
            if own.is_none() {
                users.insert(up.sender.to_string(), 100.into());
            }
        }
        let mut events = Vec::new();
        let mut join = json!({ "membership": "join" });
        if let Some(name) = &up.profile.0 {
            join["displayname"] = name.as_str().into();
        }
        if let Some(avatar) = &up.profile.1 {
            join["avatar_url"] = avatar.as_str().into();
        }
        events.push(NewEvent::state(
            StateEventType::RoomMember,
            up.sender.as_str(),
            join,
        ));
        let own = pl["users"][up.sender.as_str()].as_i64();
        let top = highest_level(&pl);
        let needs_boost = !v12 && own.is_some_and(|l| l < top);
        if needs_boost {
            let mut boosted = pl.clone();
            boosted["users"][up.sender.as_str()] = top.into();
            events.push(NewEvent::state(
                StateEventType::RoomPowerLevels,
                "",
                boosted,
            ));
        } else {
            events.push(NewEvent::state(
                StateEventType::RoomPowerLevels,
                "",
                pl.clone(),
            ));
        }
        for kind in TRANSFERRED {
            if let Some(content) = content_of(kind)? {
                events.push(NewEvent::state(StateEventType::from(*kind), "", content));
            }
        }
        if needs_boost {
            events.push(NewEvent::state(StateEventType::RoomPowerLevels, "", pl));
        }
        let new_room = self
            .create_room(&up.version, up.sender, create, events)
            .await?;

        // Local aliases and the directory entry follow the room; so does the canonical alias.
        for alias in self.aliases.room_aliases(room)? {
            self.aliases.move_alias(&alias, &new_room).await?;
        }
        if let Some(canonical) = content_of("m.room.canonical_alias")? {
            let has_alias = canonical.get("alias").is_some()
                || canonical
                    .get("alt_aliases")
                    .and_then(JsonValue::as_array)
                    .is_some_and(|a| !a.is_empty());
            if has_alias {
                self.send(
                    &new_room,
                    up.sender,
                    NewEvent::state(StateEventType::RoomCanonicalAlias, "", canonical),
                    None,
                )
                .await?;
                // Best effort: the sender may lack the level to clear it in the old room.
                if let Err(e) = self
                    .send(
                        up.old,
                        up.sender,
                        NewEvent::state(StateEventType::RoomCanonicalAlias, "", json!({})),
                        None,
                    )
                    .await
                {
                    tracing::debug!(room = %up.old, "canonical alias left in place: {e}");
                }
            }
        }
        if self.aliases.is_public(room)? {
            if let Some(new_short) = self.events.room_short(&new_room)? {
                self.aliases.set_public(new_short, true).await?;
            }
            self.aliases.set_public(room, false).await?;
        }

        self.send(
            up.old,
            up.sender,
            NewEvent::state(
                StateEventType::RoomTombstone,
                "",
                json!({
                    "body": "This room has been replaced",
                    "replacement_room": new_room,
                }),
            ),
            None,
        )
        .await?;

        // Quiet the old room: nobody below moderator level may talk or invite any more.
        if let Some(mut old_pl) = content_of("m.room.power_levels")? {
            let users_default = old_pl
                .get("users_default")
                .and_then(JsonValue::as_i64)
                .unwrap_or(0);
            let restricted = (users_default + 1).max(50);
            let mut changed = false;
            for key in ["events_default", "invite"] {
                if old_pl.get(key).and_then(JsonValue::as_i64).unwrap_or(0) < restricted {
                    old_pl[key] = restricted.into();
                    changed = true;
                }
            }
            if changed {
                if let Err(e) = self
                    .send(
                        up.old,
                        up.sender,
                        NewEvent::state(StateEventType::RoomPowerLevels, "", old_pl),
                        None,
                    )
                    .await
                {
                    tracing::debug!(room = %up.old, "old room's power levels unchanged: {e}");
                }
            }
        }
        tracing::info!(old = %up.old, new = %new_room, version = %up.version, "room upgraded");
        Ok(new_room)
    }
}
