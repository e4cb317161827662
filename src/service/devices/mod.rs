//! Devices across services: the keys of local devices as clients and peers are served them,
//! telling peers when a device's keys change or the device goes, and forgetting the keys of
//! devices that are gone. Device records themselves are `sessions`; keys are `keys`.

use std::collections::BTreeMap;

use ruma::{
    encryption::{CrossSigningKey, DeviceKeys},
    serde::Raw,
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId, OwnedUserId,
};
use serde_json::Value as JsonValue;

use super::{sessions::Session, Services};
use crate::{
    error::{Error, Result},
    storage::ShortId,
};

/// Tells the servers sharing a room with a local user that one of their devices has new keys or
/// signatures, or (`keys` None) is gone. `prev_id` stays empty, so receivers fetch the whole list
/// again (/user/devices) rather than trusting a delta: always right, if not the cheapest.
pub async fn announce_device(
    services: &Services,
    user: ShortId,
    user_id: &ruma::UserId,
    device_id: &str,
    keys: Option<&JsonValue>,
) -> Result<()> {
    let mut content = serde_json::json!({
        "user_id": user_id,
        "device_id": device_id,
        "stream_id": crate::util::now_ms(),
        "prev_id": [],
        "deleted": keys.is_none(),
    });
    if let Some(keys) = keys {
        content["keys"] = keys.clone();
    }
    let edu = serde_json::json!({ "edu_type": "m.device_list_update", "content": content });
    services.sender.edu_to_peers_of(user, edu).await
}

/// Deletes the keys of devices that are gone, and tells local and remote peers.
pub async fn forget_devices(
    services: &Services,
    user: ShortId,
    user_id: &ruma::UserId,
    devices: &[OwnedDeviceId],
) -> Result<()> {
    // Pushers set through the devices' tokens go with them.
    let ids: Vec<&str> = devices.iter().map(|d| d.as_str()).collect();
    services.push.delete_pushers_of_devices(user, &ids).await?;
    for device in devices {
        // A device that never published keys is in no other server's cache.
        let had_keys = services.keys.device_keys(user, device.as_str())?.is_some();
        services.keys.delete_device(user, device.as_str()).await?;
        if had_keys {
            announce_device(services, user, user_id, device.as_str(), None).await?;
        }
    }
    Ok(())
}

/// Tells the servers sharing a room with a local user of their current master and
/// self-signing keys.
pub async fn announce_signing_keys(
    services: &Services,
    user: ShortId,
    user_id: &ruma::UserId,
) -> Result<()> {
    let mut content = serde_json::json!({ "user_id": user_id });
    for (usage, field) in [
        ("master", "master_key"),
        ("self_signing", "self_signing_key"),
    ] {
        if let Some(k) = services.keys.cross_signing_key(user, usage)? {
            content[field] = k;
        }
    }
    let edu = serde_json::json!({ "edu_type": "m.signing_key_update", "content": content });
    services.sender.edu_to_peers_of(user, edu).await
}

/// The device keys of a local user's devices (all when `only` is empty), with their display
/// names in `unsigned`.
pub fn local_device_keys(
    services: &Services,
    user: ShortId,
    only: &[OwnedDeviceId],
) -> Result<BTreeMap<OwnedDeviceId, JsonValue>> {
    let mut out = BTreeMap::new();
    for (device, mut keys) in services.keys.all_device_keys(user)? {
        let device = OwnedDeviceId::from(device);
        if !only.is_empty() && !only.contains(&device) {
            continue;
        }
        if let Some(record) = services.sessions.get_device(user, &device)? {
            if let Some(name) = record.display_name {
                keys["unsigned"]["device_display_name"] = name.into();
            }
        } else {
            // Keys outliving their device are not served.
            continue;
        }
        out.insert(device, keys);
    }
    Ok(out)
}

/// Ends the session's device: its tokens, its keys, and peers stop encrypting for it.
pub async fn logout(services: &Services, session: &Session) -> Result<()> {
    services.sessions.logout(session).await?;
    forget_devices(
        services,
        session.user,
        &session.user_id,
        std::slice::from_ref(&session.device_id),
    )
    .await
}

/// Ends every device of the user, as [`logout`] does for one.
pub async fn logout_all(services: &Services, user: ShortId, user_id: &ruma::UserId) -> Result<()> {
    let devices: Vec<_> = services
        .sessions
        .devices(user)?
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    services.sessions.delete_all_devices(user, None).await?;
    forget_devices(services, user, user_id, &devices).await
}

/// Claims a one-time key (or the fallback key) of each of our users' devices in `claims`, into
/// `out`. Other servers' users are skipped; unknown users and devices simply have no keys to give.
pub async fn claim_local_keys<T>(
    services: &Services,
    claims: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
    out: &mut BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, BTreeMap<OwnedOneTimeKeyId, Raw<T>>>>,
) -> Result<()> {
    for (user_id, devices) in claims {
        if !services.users.is_local(user_id) {
            continue;
        }
        let Some(user) = services.users.short_id(user_id)? else {
            continue;
        };
        for (device, algorithm) in devices {
            if let Some((id, key)) = services
                .keys
                .claim(user, device.as_str(), algorithm.as_str())
                .await?
            {
                let id = OwnedOneTimeKeyId::try_from(id.as_str())
                    .map_err(|e| Error::internal(format!("stored key id: {e}")))?;
                out.entry(user_id.clone())
                    .or_default()
                    .entry(device.clone())
                    .or_default()
                    .insert(id, raw(&key)?);
            }
        }
    }
    Ok(())
}

fn raw<T>(value: &JsonValue) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(value).map_err(Error::internal)?,
    ))
}

/// Our users' device and cross-signing keys, as /keys/query answers them to anyone (the
/// user-signing key, private to its owner, is not among them).
#[derive(Default)]
pub struct QueriedKeys {
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Raw<DeviceKeys>>>,
    pub master_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
    pub self_signing_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
}

/// The keys of our users among `requested` (user → devices, all when empty); other servers'
/// users and unknown users are skipped.
pub fn query_local_keys(
    services: &Services,
    requested: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
) -> Result<QueriedKeys> {
    let mut out = QueriedKeys::default();
    for (user_id, devices) in requested {
        // Only our users' keys are ours to give.
        if !services.users.is_local(user_id) {
            continue;
        }
        let Some(user) = services.users.short_id(user_id)? else {
            continue;
        };
        let mut map = BTreeMap::new();
        for (device, keys) in local_device_keys(services, user, devices)? {
            map.insert(device, raw(&keys)?);
        }
        out.device_keys.insert(user_id.clone(), map);
        if let Some(k) = services.keys.cross_signing_key(user, "master")? {
            out.master_keys.insert(user_id.clone(), raw(&k)?);
        }
        if let Some(k) = services.keys.cross_signing_key(user, "self_signing")? {
            out.self_signing_keys.insert(user_id.clone(), raw(&k)?);
        }
    }
    Ok(out)
}
