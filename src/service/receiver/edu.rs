//! EDUs in incoming transactions, parsed as ruma's federation EDU types: typing, receipts,
//! presence, device list and cross-signing key updates, to-device messages. Each may only speak
//! for users of its origin; anything else, and EDU types we do not handle, is ignored. An EDU
//! that does not parse is refused on its own, never the transaction around it.

use std::time::Duration;

use ruma::{
    api::federation::transactions::edu::{
        DirectDeviceContent, Edu, PresenceContent, ReceiptContent, TypingContent,
    },
    presence::PresenceState,
    serde::Raw,
    to_device::DeviceIdOrAllDevices,
    RoomId, ServerName, UserId,
};
use serde_json::Value as JsonValue;

use crate::{
    error::{Error, Result},
    service::Services,
    storage::{IdKind, ShortId},
};

/// How long a remote typing notice lasts unless renewed (the EDU has no timeout).
const REMOTE_TYPING: Duration = Duration::from_secs(30);

/// Handles one EDU from `origin`.
pub async fn receive(services: &Services, origin: &ServerName, edu: &Raw<Edu>) -> Result<()> {
    let edu = edu
        .deserialize()
        .map_err(|e| Error::bad_json(format!("EDU: {e}")))?;
    match edu {
        Edu::Typing(c) => typing(services, origin, c),
        Edu::Receipt(c) => receipts(services, origin, c).await,
        Edu::Presence(c) => presence(services, origin, c).await,
        Edu::DeviceListUpdate(c) => keys_changed(services, origin, &c.user_id).await,
        Edu::SigningKeyUpdate(c) => keys_changed(services, origin, &c.user_id).await,
        Edu::DirectToDevice(c) => to_device(services, origin, c).await,
        _ => Ok(()),
    }
}

fn from_origin(origin: &ServerName, user: &UserId) -> bool {
    user.server_name() == origin
}

fn user_short(services: &Services, user: &UserId) -> Result<ShortId> {
    Ok(services
        .users
        .shortids()
        .get_or_create(IdKind::User, user.as_str())?)
}

/// A room we share with the user.
fn joined_room(services: &Services, room_id: &RoomId, user: &UserId) -> Result<Option<ShortId>> {
    let Some(room) = services.rooms.events.room_short(room_id)? else {
        return Ok(None);
    };
    // EDUs about a room from a server its ACL denies are ignored, like its events.
    if services
        .replication
        .denied_by_acl(room, user.server_name())?
    {
        return Ok(None);
    }
    Ok(services
        .rooms
        .membership
        .is_joined(user, room)?
        .then_some(room))
}

fn typing(services: &Services, origin: &ServerName, c: TypingContent) -> Result<()> {
    if !from_origin(origin, &c.user_id) {
        return Ok(());
    }
    if let Some(room) = joined_room(services, &c.room_id, &c.user_id)? {
        services
            .typing
            .set(room, c.user_id, c.typing.then_some(REMOTE_TYPING));
    }
    Ok(())
}

async fn receipts(services: &Services, origin: &ServerName, c: ReceiptContent) -> Result<()> {
    for (room_id, receipts) in c.receipts {
        for (user, receipt) in receipts.read {
            if !from_origin(origin, &user) {
                continue;
            }
            let Some(room) = joined_room(services, &room_id, &user)? else {
                continue;
            };
            let Some(event_id) = receipt.event_ids.first() else {
                continue;
            };
            let ts = receipt
                .data
                .ts
                .map(|t| u64::from(t.get()))
                .unwrap_or_else(crate::util::now_ms);
            let thread = receipt.data.thread.as_str().unwrap_or("");
            let short = user_short(services, &user)?;
            services
                .receipts
                .set(room, short, "m.read", thread, event_id, ts)
                .await?;
        }
    }
    Ok(())
}

async fn presence(services: &Services, origin: &ServerName, c: PresenceContent) -> Result<()> {
    for p in c.push {
        if !from_origin(origin, &p.user_id) {
            continue;
        }
        let presence = match p.presence {
            PresenceState::Online => PresenceState::Online,
            PresenceState::Unavailable => PresenceState::Unavailable,
            PresenceState::Offline => PresenceState::Offline,
            _ => continue,
        };
        let short = user_short(services, &p.user_id)?;
        let peers = crate::service::presence::room_peers(services.rooms.clone());
        services
            .presence
            .set_remote(short, presence, p.status_msg, &peers)
            .await?;
    }
    Ok(())
}

async fn keys_changed(services: &Services, origin: &ServerName, user: &UserId) -> Result<()> {
    if !from_origin(origin, user) {
        return Ok(());
    }
    let short = user_short(services, user)?;
    services.keys.remote_keys_changed(short).await
}

async fn to_device(services: &Services, origin: &ServerName, c: DirectDeviceContent) -> Result<()> {
    if !from_origin(origin, &c.sender) {
        return Ok(());
    }
    let mut messages = Vec::new();
    for (user_id, devices) in &c.messages {
        if !services.users.is_local(user_id) {
            continue;
        }
        let Some(user) = services.users.short_id(user_id)? else {
            continue;
        };
        for (device, message) in devices {
            let Ok(message) = serde_json::from_str::<JsonValue>(message.json().get()) else {
                continue;
            };
            let target = match device {
                DeviceIdOrAllDevices::DeviceId(d) => Some(d.to_string()),
                DeviceIdOrAllDevices::AllDevices => None,
            };
            messages.push((user, target, message));
        }
    }
    let sessions = services.sessions.clone();
    services
        .keys
        .send_to_device(&c.sender, &c.ev_type.to_string(), messages, |user| {
            Ok(sessions
                .devices(user)?
                .into_iter()
                .map(|d| d.device_id.to_string())
                .collect())
        })
        .await
}
