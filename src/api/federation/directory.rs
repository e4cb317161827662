//! Our public room directory, for other servers (GET and POST /publicRooms).

use axum::extract::State;
use ruma::api::federation::directory::{get_public_rooms, get_public_rooms_filtered};

use super::super::{ruma::Ruma, AppState};
use crate::{
    error::Result,
    service::directory::{self, DirectoryPage, PageQuery},
};

pub async fn public_rooms(
    State(services): State<AppState>,
    req: Ruma<get_public_rooms::v1::Request>,
) -> Result<get_public_rooms::v1::Response> {
    let page = directory::local_page(
        &services,
        PageQuery {
            limit: req.body.limit,
            since: req.body.since.as_deref(),
            search: None,
            room_types: None,
            filtered: false,
        },
    )?;
    let DirectoryPage {
        chunk,
        next_batch,
        prev_batch,
        total_room_count_estimate,
    } = page;
    let mut resp = get_public_rooms::v1::Response::new();
    resp.chunk = chunk;
    resp.next_batch = next_batch;
    resp.prev_batch = prev_batch;
    resp.total_room_count_estimate = total_room_count_estimate;
    Ok(resp)
}

pub async fn public_rooms_filtered(
    State(services): State<AppState>,
    req: Ruma<get_public_rooms_filtered::v1::Request>,
) -> Result<get_public_rooms_filtered::v1::Response> {
    let page = directory::local_page(
        &services,
        PageQuery {
            limit: req.body.limit,
            since: req.body.since.as_deref(),
            search: req.body.filter.generic_search_term.as_deref(),
            room_types: Some(&req.body.filter.room_types),
            filtered: true,
        },
    )?;
    let mut resp = get_public_rooms_filtered::v1::Response::new();
    resp.chunk = page.chunk;
    resp.next_batch = page.next_batch;
    resp.prev_batch = page.prev_batch;
    resp.total_room_count_estimate = page.total_room_count_estimate;
    Ok(resp)
}
