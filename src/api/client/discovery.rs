//! Server discovery and feature negotiation: /versions, /capabilities, /.well-known.

use std::collections::BTreeMap;

use axum::{extract::State, routing::get, Json, Router};
use ruma::{
    api::client::discovery::{
        discover_homeserver::{self, HomeserverInfo},
        get_capabilities::{
            self,
            v3::{
                Capabilities, ProfileFieldsCapability, RoomVersionStability, RoomVersionsCapability,
            },
        },
        get_supported_versions,
    },
    RoomVersionId,
};
use serde_json::json;

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
};

/// Spec versions this server speaks, oldest first.
pub const SPEC_VERSIONS: &[&str] = &[
    "r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2",
    "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12", "v1.13",
    "v1.14", "v1.15", "v1.16", "v1.17", "v1.18", "v1.19",
];

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(versions)
        .ruma(capabilities)
        .ruma(well_known_client)
        .route("/.well-known/matrix/server", get(well_known_server))
}

async fn versions(
    State(services): State<AppState>,
    _: Ruma<get_supported_versions::Request>,
) -> Result<get_supported_versions::Response> {
    let mut resp = get_supported_versions::Response::new(
        SPEC_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
    );
    // Simplified sliding sync (MSC4186), which Element X needs.
    resp.unstable_features = BTreeMap::from([("org.matrix.simplified_msc3575".to_owned(), true)]);
    // Delayed events (MSC4140), which Element Call needs to leave calls reliably.
    if services.delayed_events.enabled() {
        resp.unstable_features
            .insert("org.matrix.msc4140".to_owned(), true);
    }
    Ok(resp)
}

async fn capabilities(
    State(services): State<AppState>,
    _: Ruma<get_capabilities::v3::Request>,
) -> Result<get_capabilities::v3::Response> {
    let mut caps = Capabilities::new();
    caps.change_password.enabled = true;
    caps.profile_fields = Some(ProfileFieldsCapability::new(true));
    caps.thirdparty_id_changes.enabled = false;
    caps.get_login_token.enabled = false;
    let available = (1..=12u8)
        .filter_map(|v| RoomVersionId::try_from(v.to_string().as_str()).ok())
        .map(|v| (v, RoomVersionStability::Stable))
        .collect();
    caps.room_versions = RoomVersionsCapability::new(RoomVersionId::V12, available);
    // MSC4140's limits, under its unstable name (as Synapse advertises them).
    if services.delayed_events.enabled() {
        let (max_delay_ms, max_scheduled) = services.delayed_events.limits();
        caps.set(
            "org.matrix.msc4140.delayed_events",
            json!({ "max_delay_ms": max_delay_ms, "max_scheduled": max_scheduled }),
        )
        .map_err(Error::internal)?;
    }
    Ok(get_capabilities::v3::Response::new(caps))
}

async fn well_known_client(
    State(services): State<AppState>,
    _: Ruma<discover_homeserver::Request>,
) -> Result<discover_homeserver::Response> {
    let base_url = services
        .config
        .client_base_url()
        .ok_or_else(|| Error::not_found("No public base URL is configured (well_known.client)"))?;
    Ok(discover_homeserver::Response::new(HomeserverInfo::new(
        base_url,
    )))
}

async fn well_known_server(State(services): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "m.server": services.config.federation_delegation() }))
}
