//! Server discovery and feature negotiation: /versions, /capabilities, /.well-known.

use std::collections::BTreeMap;

use axum::{extract::State, routing::get, Json, Router};
use http::Method;
use ruma::api::auth_scheme::AccessToken;
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
use serde::Serialize;
use serde_json::json;

use crate::{
    api::{
        endpoint::{JsonEndpoint, JsonRequest, JsonResponse, NoBody, Reanswered},
        ruma::Ruma,
        AppState, RouterExt,
    },
    error::{Error, Result},
};

type JsonObject = serde_json::Map<String, serde_json::Value>;

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
        .ruma(rtc_transports)
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
    // MatrixRTC transport discovery (MSC4143's `rtc/transports`, served with or without any).
    resp.unstable_features
        .insert("org.matrix.msc4143".to_owned(), true);
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

/// `/.well-known/matrix/client`, with the MatrixRTC transports under MSC4143's
/// `org.matrix.msc4143.rtc_foci`, where Element Web and Element X look for them. Written out here
/// rather than with ruma's response: that one has the foci only with ruma's `unstable-msc4143`
/// feature and, with `unstable-msc4195`, keeps only the fields it knows of a LiveKit focus, while
/// the configured transports are handed on as written.
#[derive(Serialize)]
struct WellKnownClient {
    #[serde(rename = "m.homeserver")]
    homeserver: HomeserverInfo,
    #[serde(
        rename = "org.matrix.msc4143.rtc_foci",
        skip_serializing_if = "Vec::is_empty"
    )]
    rtc_foci: Vec<JsonObject>,
}

async fn well_known_client(
    State(services): State<AppState>,
    _: Ruma<Reanswered<discover_homeserver::Request, JsonResponse<WellKnownClient>>>,
) -> Result<JsonResponse<WellKnownClient>> {
    let base_url = services
        .config
        .client_base_url()
        .ok_or_else(|| Error::not_found("No public base URL is configured (well_known.client)"))?;
    Ok(JsonResponse(WellKnownClient {
        homeserver: HomeserverInfo::new(base_url),
        rtc_foci: services.config.matrix_rtc.transports.clone(),
    }))
}

/// `GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports`: the MatrixRTC transports
/// (e.g. a LiveKit SFU's authorisation service) members of calls may use, for signed-in users.
pub enum RtcTransports {}

impl JsonEndpoint for RtcTransports {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports";
    type Authentication = AccessToken;
    type Body = NoBody;
    type Response = RtcTransportList;
}

#[derive(Serialize)]
pub struct RtcTransportList {
    /// Required by the MSC, so present (empty) when none are configured.
    rtc_transports: Vec<JsonObject>,
}

async fn rtc_transports(
    State(services): State<AppState>,
    _: Ruma<JsonRequest<RtcTransports>>,
) -> Result<JsonResponse<RtcTransportList>> {
    Ok(JsonResponse(RtcTransportList {
        rtc_transports: services.config.matrix_rtc.transports.clone(),
    }))
}

async fn well_known_server(State(services): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "m.server": services.config.federation_delegation() }))
}
