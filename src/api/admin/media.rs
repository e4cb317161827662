//! Media retention on demand, Synapse-compatible: `purge_media_cache` drops cached remote media,
//! `media/delete` deletes local media, both by age (`before_ts`, ms since the epoch).

use std::collections::HashMap;

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    Json,
};
use serde_json::{json, Value};

use super::Admin;
use crate::{
    api::AppState,
    error::{Error, Result},
};

fn before_ts(query: Result<Query<HashMap<String, String>>, QueryRejection>) -> Result<u64> {
    let Query(q) = query.map_err(|e| Error::invalid_param(format!("Invalid query: {e}")))?;
    q.get("before_ts")
        .ok_or_else(|| Error::missing_param("Missing before_ts"))?
        .parse()
        .map_err(|_| Error::invalid_param("before_ts must be a timestamp in milliseconds"))
}

/// `POST /_synapse/admin/v1/purge_media_cache?before_ts=`
pub async fn purge_media_cache(
    State(services): State<AppState>,
    _: Admin,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>> {
    let deleted = services.media.purge_remote_cache(before_ts(query)?).await?;
    Ok(Json(json!({ "deleted": deleted.len() })))
}

/// `POST /_synapse/admin/v1/media/delete?before_ts=`
pub async fn delete_local_media(
    State(services): State<AppState>,
    _: Admin,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>> {
    let deleted = services.media.purge_local(before_ts(query)?).await?;
    Ok(Json(
        json!({ "total": deleted.len(), "deleted_media": deleted }),
    ))
}
