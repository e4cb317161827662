//! End-to-end encryption keys (upload, query, claim, changes, cross-signing, signatures) and
//! send-to-device.

use std::collections::BTreeMap;

use axum::{extract::State, Router};
use ruma::{
    api::client::{
        keys::{
            claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures,
            upload_signing_keys,
        },
        to_device::send_event_to_device,
    },
    serde::Raw,
    to_device::DeviceIdOrAllDevices,
    OwnedDeviceId, OwnedServerName, OwnedUserId,
};
use serde::Serialize;
use serde_json::Value as JsonValue;

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
    service::{devices, sync::Since, uiaa, Services},
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(upload)
        .ruma(query)
        .ruma(claim)
        .ruma(changes)
        .ruma(upload_cross_signing)
        .ruma(upload_signatures_handler)
        .ruma(send_to_device)
}

fn json<T>(raw: &Raw<T>) -> Result<JsonValue> {
    serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(e.to_string()))
}

fn raw<T>(value: &JsonValue) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(value).map_err(Error::internal)?,
    ))
}

async fn upload(
    State(services): State<AppState>,
    req: Ruma<upload_keys::v3::Request>,
) -> Result<upload_keys::v3::Response> {
    let session = req.session()?;
    if !session.has_device() {
        return Err(Error::matrix(
            crate::error::custom_kind("M_UNKNOWN_DEVICE"),
            "Uploading keys needs a device: an appservice names it with device_id",
        ));
    }
    let b = &req.body;
    let device_keys = b.device_keys.as_ref().map(json).transpose()?;
    if let Some(keys) = &device_keys {
        // A device publishes keys for itself only.
        if keys.get("user_id").and_then(JsonValue::as_str) != Some(session.user_id.as_str())
            || keys.get("device_id").and_then(JsonValue::as_str) != Some(session.device_id.as_str())
        {
            return Err(Error::invalid_param(
                "Device keys must be for the uploading user and device",
            ));
        }
        if !keys.get("keys").is_some_and(JsonValue::is_object)
            || !keys.get("signatures").is_some_and(JsonValue::is_object)
        {
            return Err(Error::bad_json("Device keys need keys and signatures"));
        }
    }
    let otks = b
        .one_time_keys
        .iter()
        .map(|(id, k)| Ok((id.to_string(), json(k)?)))
        .collect::<Result<Vec<_>>>()?;
    let fallbacks = b
        .fallback_keys
        .iter()
        .map(|(id, k)| Ok((id.to_string(), json(k)?)))
        .collect::<Result<Vec<_>>>()?;
    let counts = services
        .keys
        .upload(
            session.user,
            session.device_id.as_str(),
            device_keys.as_ref(),
            &otks,
            &fallbacks,
        )
        .await?;
    if let Some(keys) = &device_keys {
        devices::announce_device(
            &services,
            session.user,
            &session.user_id,
            session.device_id.as_str(),
            Some(keys),
        )
        .await?;
    }
    let counts = counts
        .into_iter()
        .map(|(alg, n)| (alg.as_str().into(), ruma::UInt::new_saturating(n)))
        .collect();
    Ok(upload_keys::v3::Response::new(counts))
}

async fn query(
    State(services): State<AppState>,
    req: Ruma<get_keys::v3::Request>,
) -> Result<get_keys::v3::Response> {
    let session = req.session()?;
    let mut resp = get_keys::v3::Response::new();
    // Other servers' users: one query per server, answered by that server.
    let path = "/_matrix/federation/v1/user/keys/query";
    for (server, answer) in ask_servers(&services, &req.body.device_keys, "device_keys", path).await
    {
        match answer {
            Ok(a) => merge_remote_keys(&mut resp, &server, &a),
            Err(failure) => {
                resp.failures.insert(server.to_string(), failure);
            }
        }
    }
    let local = devices::query_local_keys(&services, &req.body.device_keys)?;
    resp.device_keys.extend(local.device_keys);
    resp.master_keys.extend(local.master_keys);
    resp.self_signing_keys.extend(local.self_signing_keys);
    // The user-signing key is private to its owner.
    if req.body.device_keys.contains_key(&session.user_id) {
        if let Some(k) = services
            .keys
            .cross_signing_key(session.user, "user_signing")?
        {
            resp.user_signing_keys
                .insert(session.user_id.clone(), raw(&k)?);
        }
    }
    Ok(resp)
}

/// Asks each other server about its users in `requested` (POST `path` with `{field: {user:
/// devices}}`, one request per server): per server, its answer, or the failure to report.
async fn ask_servers<T: Serialize>(
    services: &Services,
    requested: &BTreeMap<OwnedUserId, T>,
    field: &str,
    path: &str,
) -> Vec<(OwnedServerName, Result<JsonValue, JsonValue>)> {
    let mut remote: BTreeMap<OwnedServerName, serde_json::Map<String, JsonValue>> = BTreeMap::new();
    for (user_id, devices) in requested {
        if !services.users.is_local(user_id) {
            remote
                .entry(user_id.server_name().to_owned())
                .or_default()
                .insert(user_id.to_string(), serde_json::json!(devices));
        }
    }
    let mut answers = Vec::new();
    for (server, users) in remote {
        let body = serde_json::json!({ field: users });
        let answer = services
            .federation
            .request_json(&server, http::Method::POST, path, Some(&body))
            .await
            .map_err(|e| serde_json::json!({ "status": 503, "message": e.to_string() }));
        answers.push((server, answer));
    }
    answers
}

/// Adds what another server answered to /user/keys/query, keeping only its own users.
fn merge_remote_keys(
    resp: &mut get_keys::v3::Response,
    server: &ruma::ServerName,
    answer: &JsonValue,
) {
    let ours = |u: &str| -> Option<OwnedUserId> {
        OwnedUserId::try_from(u)
            .ok()
            .filter(|u| u.server_name() == server)
    };
    for (user, devices) in answer
        .get("device_keys")
        .and_then(JsonValue::as_object)
        .into_iter()
        .flatten()
    {
        let Some(user) = ours(user) else { continue };
        let mut map = BTreeMap::new();
        for (device, keys) in devices.as_object().into_iter().flatten() {
            if let Ok(r) = raw(keys) {
                map.insert(OwnedDeviceId::from(device.as_str()), r);
            }
        }
        resp.device_keys.insert(user, map);
    }
    for (field, target) in [
        ("master_keys", &mut resp.master_keys),
        ("self_signing_keys", &mut resp.self_signing_keys),
    ] {
        for (user, key) in answer
            .get(field)
            .and_then(JsonValue::as_object)
            .into_iter()
            .flatten()
        {
            if let (Some(user), Ok(r)) = (ours(user), raw(key)) {
                target.insert(user, r);
            }
        }
    }
}

async fn claim(
    State(services): State<AppState>,
    req: Ruma<claim_keys::v3::Request>,
) -> Result<claim_keys::v3::Response> {
    req.session()?;
    let mut out: BTreeMap<OwnedUserId, claim_keys::v3::OneTimeKeys> = BTreeMap::new();
    let mut failures = BTreeMap::new();
    let path = "/_matrix/federation/v1/user/keys/claim";
    for (server, answer) in
        ask_servers(&services, &req.body.one_time_keys, "one_time_keys", path).await
    {
        match answer {
            Ok(a) => {
                for (user, devices) in a
                    .get("one_time_keys")
                    .and_then(JsonValue::as_object)
                    .into_iter()
                    .flatten()
                {
                    let Ok(user) = OwnedUserId::try_from(user.as_str()) else {
                        continue;
                    };
                    if user.server_name() != server {
                        continue;
                    }
                    for (device, keys) in devices.as_object().into_iter().flatten() {
                        for (id, key) in keys.as_object().into_iter().flatten() {
                            let (Ok(id), Ok(key)) =
                                (ruma::OwnedOneTimeKeyId::try_from(id.as_str()), raw(key))
                            else {
                                continue;
                            };
                            out.entry(user.clone())
                                .or_default()
                                .entry(OwnedDeviceId::from(device.as_str()))
                                .or_default()
                                .insert(id, key);
                        }
                    }
                }
            }
            Err(failure) => {
                failures.insert(server.to_string(), failure);
            }
        }
    }
    devices::claim_local_keys(&services, &req.body.one_time_keys, &mut out).await?;
    let mut resp = claim_keys::v3::Response::new(out);
    resp.failures = failures;
    Ok(resp)
}

/// The stream position of a sync token (or a bare position, as /keys/changes documents tokens
/// from /sync).
fn position(token: &str) -> Result<u64> {
    if let Ok(since) = Since::parse(token) {
        return Ok(since.pos);
    }
    token
        .parse()
        .map_err(|_| Error::invalid_param(format!("Invalid token `{token}`")))
}

async fn changes(
    State(services): State<AppState>,
    req: Ruma<get_key_changes::v3::Request>,
) -> Result<get_key_changes::v3::Response> {
    let session = req.session()?;
    let from = position(&req.body.from)?;
    let to = position(&req.body.to)?;
    let mut changed = Vec::new();
    for user in services.keys.changed_users(from, to.max(from))? {
        if services.keys.share_a_room(session.user, user)? {
            changed.push(services.rooms.events.user_id_of(user)?);
        }
    }
    Ok(get_key_changes::v3::Response::new(changed, Vec::new()))
}

/// Checks a cross-signing key is the uploader's and for this usage.
fn cross_signing_key(
    raw_key: &Raw<ruma::encryption::CrossSigningKey>,
    user: &ruma::UserId,
    usage: &str,
) -> Result<JsonValue> {
    let key = json(raw_key)?;
    if key.get("user_id").and_then(JsonValue::as_str) != Some(user.as_str()) {
        return Err(Error::invalid_param("Cross-signing keys must be your own"));
    }
    let usages = key.get("usage").and_then(JsonValue::as_array);
    if !usages.is_some_and(|u| u.iter().any(|x| x.as_str() == Some(usage))) {
        return Err(Error::invalid_param(format!(
            "The {usage} key must have usage {usage}"
        )));
    }
    let keys = key.get("keys").and_then(JsonValue::as_object);
    if keys.is_none_or(|k| k.len() != 1) {
        return Err(Error::invalid_param(
            "A cross-signing key has exactly one public key",
        ));
    }
    Ok(key)
}

async fn upload_cross_signing(
    State(services): State<AppState>,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> Result<upload_signing_keys::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    // The first upload needs no authentication; replacing existing keys does (as the spec
    // allows since v1.11).
    if session.appservice.is_none()
        && services
            .keys
            .cross_signing_key(session.user, "master")?
            .is_some()
    {
        services
            .uiaa
            .authenticate(
                uiaa::Purpose::CrossSigning,
                uiaa::Service::password_flows(),
                b.auth.as_ref(),
                Some(&session.user_id),
            )
            .await?;
    }
    let mut keys = Vec::new();
    if let Some(k) = &b.master_key {
        keys.push(("master", cross_signing_key(k, &session.user_id, "master")?));
    }
    if let Some(k) = &b.self_signing_key {
        keys.push((
            "self_signing",
            cross_signing_key(k, &session.user_id, "self_signing")?,
        ));
    }
    if let Some(k) = &b.user_signing_key {
        keys.push((
            "user_signing",
            cross_signing_key(k, &session.user_id, "user_signing")?,
        ));
    }
    if keys.is_empty() {
        return Ok(upload_signing_keys::v3::Response::new());
    }
    let has_master = keys.iter().any(|(u, _)| *u == "master")
        || services
            .keys
            .cross_signing_key(session.user, "master")?
            .is_some();
    if !has_master {
        return Err(Error::invalid_param("Upload a master key first"));
    }
    services
        .keys
        .set_cross_signing_keys(session.user, &keys)
        .await?;
    devices::announce_signing_keys(&services, session.user, &session.user_id).await?;
    Ok(upload_signing_keys::v3::Response::new())
}

async fn upload_signatures_handler(
    State(services): State<AppState>,
    req: Ruma<upload_signatures::v3::Request>,
) -> Result<upload_signatures::v3::Response> {
    let session = req.session()?;
    let mut resp = upload_signatures::v3::Response::new();
    // The user's own keys that gained signatures, to tell other servers of.
    let mut own_devices = Vec::new();
    let mut own_signing_keys = false;
    for (user_id, signed) in &req.body.signed_keys {
        let user = if services.users.is_local(user_id) {
            services.users.short_id(user_id)?
        } else {
            None
        };
        for (key_id, object) in signed.iter() {
            let outcome = match user {
                Some(user) => match serde_json::from_str::<JsonValue>(object.get()) {
                    Ok(value) => services.keys.add_signatures(user, key_id, &value).await,
                    Err(e) => Err(e.to_string()),
                },
                None => Err("Unknown user".to_owned()),
            };
            match outcome {
                Ok(()) if *user_id == session.user_id => {
                    match services.keys.device_keys(session.user, key_id)? {
                        Some(keys) => own_devices.push((key_id.to_owned(), keys)),
                        None => own_signing_keys = true,
                    }
                }
                Ok(()) => {}
                Err(message) => {
                    let failure = serde_json::from_value(serde_json::json!({
                        "errcode": "M_INVALID_SIGNATURE",
                        "error": message,
                    }))
                    .map_err(Error::internal)?;
                    resp.failures
                        .entry(user_id.clone())
                        .or_default()
                        .insert(key_id.to_owned(), failure);
                }
            }
        }
    }
    // Other servers cache our users' keys and refresh them only when told: a device signed
    // with the self-signing key, or a master key signed by a device, must be announced.
    for (device, keys) in &own_devices {
        devices::announce_device(
            &services,
            session.user,
            &session.user_id,
            device,
            Some(keys),
        )
        .await?;
    }
    if own_signing_keys {
        devices::announce_signing_keys(&services, session.user, &session.user_id).await?;
    }
    Ok(resp)
}

async fn send_to_device(
    State(services): State<AppState>,
    req: Ruma<send_event_to_device::v3::Request>,
) -> Result<send_event_to_device::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    // Idempotent per device and transaction, like room sends.
    let txn_key = format!("to_device\u{1}{}", b.txn_id);
    if services
        .rooms
        .txn_seen(session.user, session.device_id.as_str(), 0, &txn_key)?
    {
        return Ok(send_event_to_device::v3::Response::new());
    }
    let mut messages = Vec::new();
    let mut remote: BTreeMap<ruma::OwnedServerName, serde_json::Map<String, JsonValue>> =
        BTreeMap::new();
    for (user_id, devices) in &b.messages {
        if !services.users.is_local(user_id) {
            let mut per_device = serde_json::Map::new();
            for (device, content) in devices {
                let target = match device {
                    DeviceIdOrAllDevices::DeviceId(d) => d.to_string(),
                    DeviceIdOrAllDevices::AllDevices => "*".to_owned(),
                };
                per_device.insert(target, json(content)?);
            }
            remote
                .entry(user_id.server_name().to_owned())
                .or_default()
                .insert(user_id.to_string(), JsonValue::Object(per_device));
            continue;
        }
        let Some(user) = services.users.short_id(user_id)? else {
            continue;
        };
        for (device, content) in devices {
            let content = json(content)?;
            let target = match device {
                DeviceIdOrAllDevices::DeviceId(d) => Some(d.to_string()),
                DeviceIdOrAllDevices::AllDevices => None,
            };
            messages.push((user, target, content));
        }
    }
    let sessions = services.sessions.clone();
    services
        .keys
        .send_to_device(
            &session.user_id,
            &b.event_type.to_string(),
            messages,
            |user| {
                Ok(sessions
                    .devices(user)?
                    .into_iter()
                    .map(|d| d.device_id.to_string())
                    .collect())
            },
        )
        .await?;
    for (server, messages) in remote {
        let edu = serde_json::json!({
            "edu_type": "m.direct_to_device",
            "content": {
                "sender": session.user_id,
                "type": b.event_type.to_string(),
                "message_id": format!("{}.{}", session.device_id, b.txn_id),
                "messages": messages,
            },
        });
        services.sender.queue_edu(&[server], edu).await?;
    }
    services
        .rooms
        .record_txn(session.user, session.device_id.as_str(), 0, &txn_key)
        .await?;
    Ok(send_event_to_device::v3::Response::new())
}
