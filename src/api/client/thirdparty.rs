//! Third-party networks (`/thirdparty/*`): what the bridges registered as appservices know of
//! their networks, asked of them (see `service::appservice`).

use axum::{extract::State, Router};
use ruma::api::client::thirdparty::{
    get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols,
    get_user_for_protocol, get_user_for_user_id,
};
use serde::de::DeserializeOwned;
use serde_json::Value as JsonValue;

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(protocols)
        .ruma(protocol)
        .ruma(location_for_protocol)
        .ruma(user_for_protocol)
        .ruma(location_for_alias)
        .ruma(user_for_id)
}

/// What appservices answered, as the client API's types; entries that do not fit the spec's
/// shape are left out rather than failing the whole answer.
fn typed<T: DeserializeOwned>(found: Vec<JsonValue>) -> Vec<T> {
    found
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

fn fields(map: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

async fn protocols(
    State(services): State<AppState>,
    req: Ruma<get_protocols::v3::Request>,
) -> Result<get_protocols::v3::Response> {
    req.session()?;
    let found = services.appservice.protocols(None).await?;
    let protocols = found
        .into_iter()
        .filter_map(|(name, p)| Some((name, serde_json::from_value(p).ok()?)))
        .collect();
    Ok(get_protocols::v3::Response::new(protocols))
}

async fn protocol(
    State(services): State<AppState>,
    req: Ruma<get_protocol::v3::Request>,
) -> Result<get_protocol::v3::Response> {
    req.session()?;
    let name = &req.body.protocol;
    let found = services.appservice.protocols(Some(name)).await?;
    let protocol = found
        .into_values()
        .next()
        .and_then(|p| serde_json::from_value(p).ok())
        .ok_or_else(|| Error::not_found("Unknown third-party protocol"))?;
    Ok(get_protocol::v3::Response::new(protocol))
}

async fn location_for_protocol(
    State(services): State<AppState>,
    req: Ruma<get_location_for_protocol::v3::Request>,
) -> Result<get_location_for_protocol::v3::Response> {
    req.session()?;
    let b = &req.body;
    let found = services
        .appservice
        .thirdparty_lookup("location", Some(&b.protocol), &fields(&b.fields))
        .await?;
    Ok(get_location_for_protocol::v3::Response::new(typed(found)))
}

async fn user_for_protocol(
    State(services): State<AppState>,
    req: Ruma<get_user_for_protocol::v3::Request>,
) -> Result<get_user_for_protocol::v3::Response> {
    req.session()?;
    let b = &req.body;
    let found = services
        .appservice
        .thirdparty_lookup("user", Some(&b.protocol), &fields(&b.fields))
        .await?;
    Ok(get_user_for_protocol::v3::Response::new(typed(found)))
}

async fn location_for_alias(
    State(services): State<AppState>,
    req: Ruma<get_location_for_room_alias::v3::Request>,
) -> Result<get_location_for_room_alias::v3::Response> {
    req.session()?;
    let query = [("alias".to_owned(), req.body.alias.to_string())];
    let found = services
        .appservice
        .thirdparty_lookup("location", None, &query)
        .await?;
    Ok(get_location_for_room_alias::v3::Response::new(typed(found)))
}

async fn user_for_id(
    State(services): State<AppState>,
    req: Ruma<get_user_for_user_id::v3::Request>,
) -> Result<get_user_for_user_id::v3::Response> {
    req.session()?;
    let query = [("userid".to_owned(), req.body.userid.to_string())];
    let found = services
        .appservice
        .thirdparty_lookup("user", None, &query)
        .await?;
    Ok(get_user_for_user_id::v3::Response::new(typed(found)))
}
