//! Our public room directory, for other servers (GET and POST /publicRooms).

use axum::extract::State;
use ruma::api::federation::directory::{get_public_rooms, get_public_rooms_filtered};

use super::super::{public_rooms_response, ruma::Ruma, AppState};
use crate::{
    error::Result,
    service::directory::{self, PageQuery},
};

pub async fn public_rooms(
    State(services): State<AppState>,
    req: Ruma<get_public_rooms::v1::Request>,
) -> Result<get_public_rooms::v1::Response> {
    let query = PageQuery::unfiltered(req.body.limit, req.body.since.as_deref());
    let page = directory::local_page(&services, query)?;
    Ok(public_rooms_response!(
        get_public_rooms::v1::Response::new(),
        page
    ))
}

pub async fn public_rooms_filtered(
    State(services): State<AppState>,
    req: Ruma<get_public_rooms_filtered::v1::Request>,
) -> Result<get_public_rooms_filtered::v1::Response> {
    let query = PageQuery::filtered(req.body.limit, req.body.since.as_deref(), &req.body.filter)
        .on(&req.body.room_network);
    let page = directory::local_page(&services, query)?;
    Ok(public_rooms_response!(
        get_public_rooms_filtered::v1::Response::new(),
        page
    ))
}

/// `/hierarchy`: a space here and its children, as far as the asking server may see them.
pub async fn hierarchy(
    State(services): State<AppState>,
    req: Ruma<ruma::api::federation::space::get_hierarchy::v1::Request>,
) -> Result<ruma::api::federation::space::get_hierarchy::v1::Response> {
    use ruma::api::federation::space::get_hierarchy::v1::Response;
    let origin = req
        .origin
        .as_deref()
        .ok_or_else(|| crate::error::Error::unauthorized("Missing X-Matrix origin"))?;
    let answer = crate::service::spaces::federation_hierarchy(
        &services,
        origin,
        &req.body.room_id,
        req.body.suggested_only,
    )?;
    let bad = |e: serde_json::Error| crate::error::Error::internal(format!("hierarchy: {e}"));
    let room = serde_json::from_value(answer["room"].clone()).map_err(bad)?;
    let mut response = Response::new(room);
    response.children = answer["children"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| serde_json::from_value(c.clone()).ok())
        .collect();
    response.inaccessible_children =
        serde_json::from_value(answer["inaccessible_children"].clone()).map_err(bad)?;
    Ok(response)
}
