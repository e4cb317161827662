//! Device management: list, get, rename, delete (with user-interactive authentication).

use axum::{extract::State, Router};
use ruma::{
    api::client::device::{
        delete_device, delete_devices, get_device, get_devices, update_device, Device,
    },
    api::client::uiaa::AuthData,
    MilliSecondsSinceUnixEpoch, OwnedDeviceId, UInt,
};

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
    service::{
        devices::forget_devices,
        sessions::{DeviceRecord, Session},
        uiaa, Services,
    },
    storage::ShortId,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(list)
        .ruma(get)
        .ruma(update)
        .ruma(delete)
        .ruma(delete_many)
}

fn to_device(services: &AppState, user: ShortId, record: &DeviceRecord) -> Device {
    let (ts, ip) = services.sessions.last_seen(user, record);
    let mut device = Device::new(record.device_id.clone());
    device.display_name = record.display_name.clone();
    device.last_seen_ip = ip;
    device.last_seen_ts = ts.and_then(UInt::new).map(MilliSecondsSinceUnixEpoch);
    device
}

async fn list(
    State(services): State<AppState>,
    req: Ruma<get_devices::v3::Request>,
) -> Result<get_devices::v3::Response> {
    let session = req.session()?;
    let devices = services
        .sessions
        .devices(session.user)?
        .iter()
        .map(|d| to_device(&services, session.user, d))
        .collect();
    Ok(get_devices::v3::Response::new(devices))
}

async fn get(
    State(services): State<AppState>,
    req: Ruma<get_device::v3::Request>,
) -> Result<get_device::v3::Response> {
    let session = req.session()?;
    let record = services
        .sessions
        .get_device(session.user, &req.body.device_id)?
        .ok_or_else(|| Error::not_found("Unknown device"))?;
    Ok(get_device::v3::Response::new(to_device(
        &services,
        session.user,
        &record,
    )))
}

async fn update(
    State(services): State<AppState>,
    req: Ruma<update_device::v3::Request>,
) -> Result<update_device::v3::Response> {
    let session = req.session()?;
    if req
        .body
        .display_name
        .as_ref()
        .is_some_and(|n| n.len() > 255)
    {
        return Err(Error::invalid_param("Device display name is too long"));
    }
    services
        .sessions
        .set_display_name(
            session.user,
            &req.body.device_id,
            req.body.display_name.clone(),
            session.appservice.is_some(),
        )
        .await?;
    Ok(update_device::v3::Response::new())
}

async fn delete(
    State(services): State<AppState>,
    req: Ruma<delete_device::v3::Request>,
) -> Result<delete_device::v3::Response> {
    let session = req.session()?;
    if services
        .sessions
        .get_device(session.user, &req.body.device_id)?
        .is_none()
    {
        return Err(Error::not_found("Unknown device"));
    }
    let devices = std::slice::from_ref(&req.body.device_id);
    delete_authenticated(&services, session, req.body.auth.as_ref(), devices).await?;
    Ok(delete_device::v3::Response::new())
}

async fn delete_many(
    State(services): State<AppState>,
    req: Ruma<delete_devices::v3::Request>,
) -> Result<delete_devices::v3::Response> {
    let session = req.session()?;
    delete_authenticated(
        &services,
        session,
        req.body.auth.as_ref(),
        &req.body.devices,
    )
    .await?;
    Ok(delete_devices::v3::Response::new())
}

/// Deletes devices of the session's user once the user has authenticated again.
async fn delete_authenticated(
    services: &Services,
    session: &Session,
    auth: Option<&AuthData>,
    devices: &[OwnedDeviceId],
) -> Result<()> {
    // Appservices manage their users' devices without interactive authentication.
    if session.appservice.is_none() {
        services
            .uiaa
            .authenticate(
                uiaa::Purpose::DeleteDevices,
                uiaa::Service::password_flows(),
                auth,
                Some(&session.user_id),
            )
            .await?;
    }
    services
        .sessions
        .delete_devices(session.user, devices)
        .await?;
    forget_devices(services, session.user, &session.user_id, devices).await
}
