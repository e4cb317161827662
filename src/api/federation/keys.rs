//! E2EE keys of our users for other servers: device keys and cross-signing keys (query), one-time
//! keys (claim) and device lists.

use std::collections::BTreeMap;

use axum::extract::State;
use ruma::{
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
    },
    serde::Raw,
    OwnedDeviceId, UInt,
};
use serde_json::Value as JsonValue;

use super::super::{ruma::Ruma, AppState};
use crate::{
    error::{Error, Result},
    service::devices::{self, local_device_keys},
};

fn raw<T>(value: &JsonValue) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(value).map_err(Error::internal)?,
    ))
}

pub async fn query(
    State(services): State<AppState>,
    req: Ruma<get_keys::v1::Request>,
) -> Result<get_keys::v1::Response> {
    let local = devices::query_local_keys(&services, &req.body.device_keys)?;
    let mut resp = get_keys::v1::Response::new(local.device_keys);
    resp.master_keys = local.master_keys;
    resp.self_signing_keys = local.self_signing_keys;
    Ok(resp)
}

pub async fn claim(
    State(services): State<AppState>,
    req: Ruma<claim_keys::v1::Request>,
) -> Result<claim_keys::v1::Response> {
    let mut out: claim_keys::v1::OneTimeKeys = BTreeMap::new();
    devices::claim_local_keys(&services, &req.body.one_time_keys, &mut out).await?;
    Ok(claim_keys::v1::Response::new(out))
}

pub async fn devices(
    State(services): State<AppState>,
    req: Ruma<get_devices::v1::Request>,
) -> Result<get_devices::v1::Response> {
    let user_id = &req.body.user_id;
    if !services.users.is_local(user_id) {
        return Err(Error::not_found("The user is not on this server"));
    }
    let user = services
        .users
        .short_id(user_id)?
        .ok_or_else(|| Error::not_found("Unknown user"))?;
    let mut resp = get_devices::v1::Response::new(
        user_id.clone(),
        UInt::new_saturating(services.stream.current()),
    );
    let none: [OwnedDeviceId; 0] = [];
    for (device, keys) in local_device_keys(&services, user, &none)? {
        let mut d = get_devices::v1::UserDevice::new(device.clone(), raw(&keys)?);
        d.device_display_name = services
            .sessions
            .get_device(user, &device)?
            .and_then(|r| r.display_name);
        resp.devices.push(d);
    }
    if let Some(k) = services.keys.cross_signing_key(user, "master")? {
        resp.master_key = Some(raw(&k)?);
    }
    if let Some(k) = services.keys.cross_signing_key(user, "self_signing")? {
        resp.self_signing_key = Some(raw(&k)?);
    }
    Ok(resp)
}
