//! EDUs in incoming transactions: typing, receipts, presence, device list and cross-signing key
//! updates, to-device messages. Each names users of its origin only; anything else is ignored.

use std::time::Duration;

use ruma::{presence::PresenceState, OwnedEventId, OwnedRoomId, OwnedUserId, ServerName, UserId};
use serde_json::Value as JsonValue;

use crate::{
    error::{Error, Result},
    service::Services,
    storage::{IdKind, ShortId},
};

/// How long a remote typing notice lasts unless renewed (the EDU has no timeout).
const REMOTE_TYPING: Duration = Duration::from_secs(30);

fn own_user(origin: &ServerName, user: Option<&JsonValue>) -> Option<OwnedUserId> {
    let user = UserId::parse(user?.as_str()?).ok()?;
    (user.server_name() == origin).then_some(user)
}

fn user_short(services: &Services, user: &UserId) -> Result<ShortId> {
    Ok(services
        .users
        .shortids()
        .get_or_create(IdKind::User, user.as_str())?)
}

/// A room we share with the user, by ID.
fn joined_room(services: &Services, room_id: &str, user: &UserId) -> Result<Option<ShortId>> {
    let Ok(room_id) = OwnedRoomId::try_from(room_id) else {
        return Ok(None);
    };
    let Some(room) = services.rooms.room_short(&room_id)? else {
        return Ok(None);
    };
    // EDUs about a room from a server its ACL denies are ignored, like its events.
    if services
        .replication
        .denied_by_acl(room, user.server_name())?
    {
        return Ok(None);
    }
    Ok(services.rooms.is_joined(user, room)?.then_some(room))
}

pub async fn receive(services: &Services, origin: &ServerName, edu: &str) -> Result<()> {
    let edu: JsonValue =
        serde_json::from_str(edu).map_err(|e| Error::bad_json(format!("EDU: {e}")))?;
    let content = edu.get("content").cloned().unwrap_or_default();
    match edu.get("edu_type").and_then(JsonValue::as_str) {
        Some("m.typing") => {
            let Some(user) = own_user(origin, content.get("user_id")) else {
                return Ok(());
            };
            let room_id = content
                .get("room_id")
                .and_then(JsonValue::as_str)
                .unwrap_or("");
            if let Some(room) = joined_room(services, room_id, &user)? {
                let typing = content.get("typing").and_then(JsonValue::as_bool) == Some(true);
                services
                    .typing
                    .set(room, user, typing.then_some(REMOTE_TYPING));
            }
        }
        Some("m.receipt") => {
            let Some(rooms) = content.as_object() else {
                return Ok(());
            };
            for (room_id, kinds) in rooms {
                let Some(read) = kinds.get("m.read").and_then(JsonValue::as_object) else {
                    continue;
                };
                for (user, receipt) in read {
                    let Some(user) = own_user(origin, Some(&JsonValue::from(user.as_str()))) else {
                        continue;
                    };
                    let Some(room) = joined_room(services, room_id, &user)? else {
                        continue;
                    };
                    let Some(event_id) = receipt
                        .get("event_ids")
                        .and_then(JsonValue::as_array)
                        .and_then(|a| a.first())
                        .and_then(JsonValue::as_str)
                        .and_then(|e| OwnedEventId::try_from(e).ok())
                    else {
                        continue;
                    };
                    let data = receipt.get("data");
                    let ts = data
                        .and_then(|d| d.get("ts"))
                        .and_then(JsonValue::as_u64)
                        .unwrap_or_else(crate::service::now_ms);
                    let thread = data
                        .and_then(|d| d.get("thread_id"))
                        .and_then(JsonValue::as_str)
                        .unwrap_or("");
                    let short = user_short(services, &user)?;
                    services
                        .receipts
                        .set(room, short, "m.read", thread, &event_id, ts)
                        .await?;
                }
            }
        }
        Some("m.presence") => {
            for p in content
                .get("push")
                .and_then(JsonValue::as_array)
                .into_iter()
                .flatten()
            {
                let Some(user) = own_user(origin, p.get("user_id")) else {
                    continue;
                };
                let presence = match p.get("presence").and_then(JsonValue::as_str) {
                    Some("online") => PresenceState::Online,
                    Some("unavailable") => PresenceState::Unavailable,
                    Some("offline") => PresenceState::Offline,
                    _ => continue,
                };
                let status_msg = p
                    .get("status_msg")
                    .and_then(JsonValue::as_str)
                    .map(str::to_owned);
                let short = user_short(services, &user)?;
                let rooms = services.rooms.clone();
                let peers = move |u: ShortId| -> Vec<ShortId> {
                    rooms
                        .peers(u)
                        .map(|p| p.into_iter().collect())
                        .unwrap_or_default()
                };
                services
                    .presence
                    .set_remote(short, presence, status_msg, &peers)
                    .await?;
            }
        }
        Some("m.device_list_update") | Some("m.signing_key_update") => {
            let Some(user) = own_user(origin, content.get("user_id")) else {
                return Ok(());
            };
            let short = user_short(services, &user)?;
            services.keys.remote_keys_changed(short).await?;
        }
        Some("m.direct_to_device") => {
            let Some(sender) = own_user(origin, content.get("sender")) else {
                return Ok(());
            };
            let kind = content
                .get("type")
                .and_then(JsonValue::as_str)
                .unwrap_or_default()
                .to_owned();
            let mut messages = Vec::new();
            for (user_id, devices) in content
                .get("messages")
                .and_then(JsonValue::as_object)
                .into_iter()
                .flatten()
            {
                let Ok(user_id) = UserId::parse(user_id.as_str()) else {
                    continue;
                };
                if !services.users.is_local(&user_id) {
                    continue;
                }
                let Some(user) = services.users.short_id(&user_id)? else {
                    continue;
                };
                for (device, message) in devices.as_object().into_iter().flatten() {
                    let target = (device != "*").then(|| device.clone());
                    messages.push((user, target, message.clone()));
                }
            }
            let sessions = services.sessions.clone();
            services
                .keys
                .send_to_device(&sender, &kind, messages, |user| {
                    Ok(sessions
                        .devices(user)?
                        .into_iter()
                        .map(|d| d.device_id.to_string())
                        .collect())
                })
                .await?;
        }
        _ => {}
    }
    Ok(())
}
