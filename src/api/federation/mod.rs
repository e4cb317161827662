//! Server-server API: discovery (/version), our keys and the key notary, and queries. Every
//! endpoint that needs it is authenticated by its origin's X-Matrix signature (see `ruma.rs`).

mod directory;
mod keys;
mod media;
mod openid;
mod rooms;

use axum::{extract::State, Router};
use ruma::{
    api::federation::{
        discovery::{
            get_remote_server_keys, get_remote_server_keys_batch, get_server_keys,
            get_server_version,
        },
        query::get_profile_information,
    },
    serde::Raw,
    CanonicalJsonObject, CanonicalJsonValue, ServerName,
};

use super::{ruma::Ruma, AppState, RouterExt};
use crate::{
    error::{Error, Result},
    service::Services,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(version)
        .ruma(server_keys)
        .ruma(notary_batch)
        .ruma(notary_single)
        .ruma(profile)
        .ruma(rooms::send_transaction)
        .ruma(rooms::make_join)
        .ruma(rooms::send_join)
        .ruma(rooms::make_leave)
        .ruma(rooms::send_leave)
        .ruma(rooms::invite)
        .ruma(rooms::make_knock)
        .ruma(rooms::send_knock)
        .ruma(rooms::event)
        .ruma(rooms::state_ids)
        .ruma(rooms::state)
        .ruma(rooms::event_auth)
        .ruma(rooms::backfill)
        .ruma(rooms::missing_events)
        .ruma(rooms::directory)
        .ruma(keys::query)
        .ruma(keys::claim)
        .ruma(keys::devices)
        .ruma(directory::public_rooms)
        .ruma(directory::public_rooms_filtered)
        .ruma(directory::hierarchy)
        .ruma(openid::userinfo)
        .merge(media::routes(Router::new()))
}

async fn version(
    State(_services): State<AppState>,
    _req: Ruma<get_server_version::v1::Request>,
) -> Result<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Hearth".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut resp = get_server_version::v1::Response::new();
    resp.server = Some(server);
    Ok(resp)
}

fn raw<T>(object: &CanonicalJsonObject) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(object).map_err(Error::internal)?,
    ))
}

async fn server_keys(
    State(services): State<AppState>,
    _req: Ruma<get_server_keys::v2::Request>,
) -> Result<get_server_keys::v2::Response> {
    let own = services.federation.own_keys()?;
    Ok(get_server_keys::v2::Response::new(raw(&own)?))
}

/// A server's keys as a notary answers for them: the server's own signed response, counter-signed
/// by us (our signature says we saw it so).
async fn notarised(services: &Services, server: &ServerName) -> Result<CanonicalJsonObject> {
    let (_, mut object) = services.federation.server_keys(server, None).await?;
    if server != services.federation.server_name() {
        services
            .signing_key
            .sign_json(services.federation.server_name().as_str(), &mut object)
            .map_err(Error::internal)?;
    }
    // Only what the spec's response has, plus the signatures.
    object.retain(|k, _| {
        matches!(
            k.as_str(),
            "server_name" | "verify_keys" | "old_verify_keys" | "valid_until_ts" | "signatures"
        )
    });
    if !object.contains_key("old_verify_keys") {
        object.insert(
            "old_verify_keys".to_owned(),
            CanonicalJsonValue::Object(CanonicalJsonObject::new()),
        );
    }
    Ok(object)
}

async fn notary_batch(
    State(services): State<AppState>,
    req: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> Result<get_remote_server_keys_batch::v2::Response> {
    let mut out = Vec::new();
    for server in req.body.server_keys.keys() {
        // Servers we cannot reach are left out, as the spec allows.
        match notarised(&services, server).await {
            Ok(object) => out.push(raw(&object)?),
            Err(e) => tracing::debug!(%server, "no keys to notarise: {e}"),
        }
    }
    Ok(get_remote_server_keys_batch::v2::Response::new(out))
}

async fn notary_single(
    State(services): State<AppState>,
    req: Ruma<get_remote_server_keys::v2::Request>,
) -> Result<get_remote_server_keys::v2::Response> {
    let mut out = Vec::new();
    match notarised(&services, &req.body.server_name).await {
        Ok(object) => out.push(raw(&object)?),
        Err(e) => tracing::debug!(server = %req.body.server_name, "no keys to notarise: {e}"),
    }
    Ok(get_remote_server_keys::v2::Response::new(out))
}

async fn profile(
    State(services): State<AppState>,
    req: Ruma<get_profile_information::v1::Request>,
) -> Result<get_profile_information::v1::Response> {
    let b = &req.body;
    if !services.users.is_local(&b.user_id) {
        return Err(Error::not_found("User is not on this server"));
    }
    // A bridged user not created yet is asked of its appservice first.
    services.appservice.user_exists(&b.user_id).await?;
    let user = services
        .users
        .short_id(&b.user_id)?
        .ok_or_else(|| Error::not_found("Unknown user"))?;
    let profile = services.profiles.all(user)?;
    let mut resp = get_profile_information::v1::Response::new();
    for (field, value) in profile {
        if b.field.as_ref().is_some_and(|f| f.as_str() != field) {
            continue;
        }
        resp.set(field, value);
    }
    Ok(resp)
}
