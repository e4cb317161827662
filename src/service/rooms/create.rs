//! What `createRoom` sends, in the spec's order: create, the creator's join, power levels,
//! canonical alias, the preset's join rules / history visibility / guest access, initial state,
//! name, topic, then invites.

use std::collections::BTreeSet;

use ruma::{
    api::client::room::{create_room, Visibility},
    events::StateEventType,
    room_version_rules::RoomVersionRules,
    OwnedUserId, RoomAliasId, UserId,
};
use serde_json::{json, Map, Value as JsonValue};

use super::pipeline::NewEvent;
use crate::error::{Error, Result};

pub struct Plan {
    pub create_content: JsonValue,
    pub events: Vec<NewEvent>,
}

/// Turns a createRoom request into the create content and the events that follow it.
pub fn plan(
    req: &create_room::v3::Request,
    rules: &RoomVersionRules,
    creator: &UserId,
    creator_profile: (Option<String>, Option<String>),
    alias: Option<&RoomAliasId>,
) -> Result<Plan> {
    use create_room::v3::RoomPreset;
    let preset = req.preset.clone().unwrap_or(match req.visibility {
        Visibility::Public => RoomPreset::PublicChat,
        _ => RoomPreset::PrivateChat,
    });
    let trusted = preset == RoomPreset::TrustedPrivateChat;
    let v12 = rules.authorization.explicitly_privilege_room_creators;

    let mut create_content = match &req.creation_content {
        Some(raw) => serde_json::from_str::<JsonValue>(raw.json().get())
            .map_err(|e| Error::bad_json(format!("creation_content: {e}")))?,
        None => json!({}),
    };
    if !create_content.is_object() {
        return Err(Error::bad_json("creation_content must be an object"));
    }
    // In v12 the room's creators hold unlimited power; a trusted private chat makes its invitees
    // creators too, where older versions give them power level 100.
    let mut additional: BTreeSet<OwnedUserId> = create_content
        .get("additional_creators")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    if v12 && trusted {
        additional.extend(req.invite.iter().cloned());
    }
    additional.remove(creator);
    if v12 && !additional.is_empty() {
        create_content["additional_creators"] = json!(additional);
    }

    let mut events = Vec::new();
    let mut join = json!({ "membership": "join" });
    if let Some(name) = creator_profile.0 {
        join["displayname"] = name.into();
    }
    if let Some(avatar) = creator_profile.1 {
        join["avatar_url"] = avatar.into();
    }
    events.push(NewEvent::state(
        StateEventType::RoomMember,
        creator.as_str(),
        join,
    ));

    // Power levels: the spec's defaults for this version, then the request's override on top.
    let mut users = Map::new();
    if !v12 {
        users.insert(creator.to_string(), 100.into());
        if trusted {
            for u in &req.invite {
                users.insert(u.to_string(), 100.into());
            }
        }
    }
    let tombstone = if v12 { 150 } else { 100 };
    let mut pl = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": tombstone,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
    });
    if let Some(over) = &req.power_level_content_override {
        let over: Map<String, JsonValue> = serde_json::from_str(over.json().get())
            .map_err(|e| Error::bad_json(format!("power_level_content_override: {e}")))?;
        for (k, v) in over {
            pl[k] = v;
        }
    }
    if v12 {
        if let Some(users) = pl.get_mut("users").and_then(JsonValue::as_object_mut) {
            users.remove(creator.as_str());
            for c in &additional {
                users.remove(c.as_str());
            }
        }
    }
    events.push(NewEvent::state(StateEventType::RoomPowerLevels, "", pl));

    if let Some(alias) = alias {
        events.push(NewEvent::state(
            StateEventType::RoomCanonicalAlias,
            "",
            json!({ "alias": alias }),
        ));
    }

    let (join_rule, guest) = match preset {
        RoomPreset::PublicChat => ("public", "forbidden"),
        _ => ("invite", "can_join"),
    };
    events.push(NewEvent::state(
        StateEventType::RoomJoinRules,
        "",
        json!({ "join_rule": join_rule }),
    ));
    events.push(NewEvent::state(
        StateEventType::RoomHistoryVisibility,
        "",
        json!({ "history_visibility": "shared" }),
    ));
    events.push(NewEvent::state(
        StateEventType::RoomGuestAccess,
        "",
        json!({ "guest_access": guest }),
    ));

    for raw in &req.initial_state {
        let ev: JsonValue = serde_json::from_str(raw.json().get())
            .map_err(|e| Error::bad_json(format!("initial_state: {e}")))?;
        let kind = ev
            .get("type")
            .and_then(JsonValue::as_str)
            .ok_or_else(|| Error::bad_json("initial_state event without type"))?;
        let state_key = ev
            .get("state_key")
            .and_then(JsonValue::as_str)
            .unwrap_or("");
        let content = ev.get("content").cloned().unwrap_or_else(|| json!({}));
        if kind == "m.room.create" || kind == "m.room.member" || kind == "m.room.power_levels" {
            return Err(Error::bad_json(format!("initial_state may not set {kind}")));
        }
        events.push(NewEvent::state(
            StateEventType::from(kind),
            state_key,
            content,
        ));
    }
    if let Some(name) = &req.name {
        events.push(NewEvent::state(
            StateEventType::RoomName,
            "",
            json!({ "name": name }),
        ));
    }
    if let Some(topic) = &req.topic {
        events.push(NewEvent::state(
            StateEventType::RoomTopic,
            "",
            json!({ "topic": topic, "m.topic": [{ "mimetype": "text/plain", "body": topic }] }),
        ));
    }
    // Users of other servers are invited once the room exists, through their server (the
    // caller does that): their invite needs its server's countersignature.
    for invitee in req
        .invite
        .iter()
        .filter(|u| u.server_name() == creator.server_name())
    {
        let mut content = json!({ "membership": "invite" });
        if req.is_direct {
            content["is_direct"] = true.into();
        }
        events.push(NewEvent::state(
            StateEventType::RoomMember,
            invitee.as_str(),
            content,
        ));
    }
    Ok(Plan {
        create_content,
        events,
    })
}
