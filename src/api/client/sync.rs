//! /sync and the filters it takes.

use std::time::Duration;

use axum::{extract::State, Router};
use ruma::api::client::{
    filter::{create_filter, get_filter, FilterDefinition},
    sync::sync_events::{self, v3::Filter},
};

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
    service::{
        sliding_sync,
        sync::{self, Since},
    },
};

/// Longest long-poll honoured, whatever the client asks.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    let mut router = router.ruma(create_filter_handler).ruma(get_filter_handler);
    use ruma::api::Metadata;
    for path in <sync_events::v5::Request as Metadata>::PATH_BUILDER.all_paths() {
        router = router.route(
            &crate::api::axum_path(path),
            axum::routing::post(simplified_sliding_sync),
        );
    }
    use ruma::api::path_builder::PathBuilder;
    for path in <sync_events::v3::Request as ruma::api::Metadata>::PATH_BUILDER.all_paths() {
        router = router.route(
            &crate::api::axum_path(path),
            axum::routing::get(sync_with_knocks),
        );
    }
    router
}

/// /sync, working around ruma leaving out `rooms` when the only updates are knocks (its
/// `Rooms::is_empty` does not look at `knock`): the knocks are put back into the JSON.
async fn sync_with_knocks(
    state: State<AppState>,
    req: Ruma<sync_events::v3::Request>,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    use ruma::api::OutgoingResponse;
    let response = sync_events(state, req).await?;
    let lost_knocks = (response.rooms.is_empty() && !response.rooms.knock.is_empty())
        .then(|| serde_json::to_value(&response.rooms.knock))
        .transpose()
        .map_err(Error::internal)?;
    let http = response
        .try_into_http_response::<Vec<u8>>()
        .map_err(|e| Error::internal(format!("response serialisation: {e}")))?;
    let Some(knocks) = lost_knocks else {
        return Ok(http.map(axum::body::Body::from).into_response());
    };
    let (parts, body) = http.into_parts();
    let mut json: serde_json::Value = serde_json::from_slice(&body).map_err(Error::internal)?;
    json["rooms"] = serde_json::json!({ "knock": knocks });
    let body = serde_json::to_vec(&json).map_err(Error::internal)?;
    Ok(http::Response::from_parts(parts, axum::body::Body::from(body)).into_response())
}

/// Simplified sliding sync (MSC4186). Ruma's response has no field for
/// `unstable_expanded_timeline`, so it is added to the JSON of the rooms that have it.
async fn simplified_sliding_sync(
    State(services): State<AppState>,
    req: Ruma<sync_events::v5::Request>,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    use ruma::api::OutgoingResponse;
    let session = req.session()?;
    let answer = sliding_sync::sync(
        &services,
        sliding_sync::Request {
            user_id: &session.user_id,
            user: session.user,
            device_id: session.device_id.as_str(),
            body: &req.body,
            timeout: req.body.timeout.unwrap_or_default().min(MAX_TIMEOUT),
        },
    )
    .await?;
    let http = answer
        .response
        .try_into_http_response::<Vec<u8>>()
        .map_err(|e| Error::internal(format!("response serialisation: {e}")))?;
    if answer.expanded.is_empty() {
        return Ok(http.map(axum::body::Body::from).into_response());
    }
    let (parts, body) = http.into_parts();
    let mut json: serde_json::Value = serde_json::from_slice(&body).map_err(Error::internal)?;
    for room in &answer.expanded {
        if let Some(r) = json["rooms"].get_mut(room.as_str()) {
            r["unstable_expanded_timeline"] = true.into();
        }
    }
    let body = serde_json::to_vec(&json).map_err(Error::internal)?;
    Ok(http::Response::from_parts(parts, axum::body::Body::from(body)).into_response())
}

fn own(session_user: &ruma::UserId, user: &ruma::UserId) -> Result<()> {
    if session_user != user {
        return Err(Error::forbidden("You can only use your own filters"));
    }
    Ok(())
}

async fn sync_events(
    State(services): State<AppState>,
    req: Ruma<sync_events::v3::Request>,
) -> Result<sync_events::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    let filter = match &b.filter {
        None => FilterDefinition::default(),
        Some(Filter::FilterDefinition(f)) => f.clone(),
        // Ruma falls back to an ID when the JSON does not parse: say what is wrong instead.
        Some(Filter::FilterId(id)) if id.trim_start().starts_with('{') => {
            return Err(Error::bad_json(
                "The filter is not a valid filter definition",
            ));
        }
        Some(Filter::FilterId(id)) => {
            let stored = services
                .filters
                .get(session.user, id)?
                .ok_or_else(|| Error::not_found("Unknown filter"))?;
            serde_json::from_value(stored)
                .map_err(|e| Error::internal(format!("stored filter: {e}")))?
        }
        Some(_) => return Err(Error::invalid_param("Unsupported filter")),
    };
    let since = b.since.as_deref().map(Since::parse).transpose()?;
    let response = sync::sync(
        &services,
        sync::Request {
            user_id: &session.user_id,
            user: session.user,
            device_id: session.device_id.as_str(),
            since,
            filter,
            full_state: b.full_state,
            timeout: b.timeout.unwrap_or_default().min(MAX_TIMEOUT),
            use_state_after: b.use_state_after,
            set_presence: b.set_presence.clone(),
        },
    )
    .await?;
    Ok(response)
}

async fn create_filter_handler(
    State(services): State<AppState>,
    req: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response> {
    let session = req.session()?;
    own(&session.user_id, &req.body.user_id)?;
    let json = serde_json::to_value(&req.body.filter).map_err(Error::internal)?;
    let id = services.filters.create(session.user, &json).await?;
    Ok(create_filter::v3::Response::new(id))
}

async fn get_filter_handler(
    State(services): State<AppState>,
    req: Ruma<get_filter::v3::Request>,
) -> Result<get_filter::v3::Response> {
    let session = req.session()?;
    own(&session.user_id, &req.body.user_id)?;
    let stored = services
        .filters
        .get(session.user, &req.body.filter_id)?
        .ok_or_else(|| Error::not_found("Unknown filter"))?;
    let filter: FilterDefinition = serde_json::from_value(stored)
        .map_err(|e| Error::internal(format!("stored filter: {e}")))?;
    Ok(get_filter::v3::Response::new(filter))
}
