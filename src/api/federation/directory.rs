//! Our public room directory, for other servers (GET and POST /publicRooms).

use axum::extract::State;
use ruma::api::federation::directory::{get_public_rooms, get_public_rooms_filtered};

use super::super::{client::directory::directory_page, ruma::Ruma, AppState};
use crate::error::Result;

pub async fn public_rooms(
    State(services): State<AppState>,
    req: Ruma<get_public_rooms::v1::Request>,
) -> Result<get_public_rooms::v1::Response> {
    let page = directory_page(
        &services,
        req.body.limit,
        req.body.since.as_deref(),
        None,
        None,
    )?;
    let mut resp = get_public_rooms::v1::Response::new();
    resp.chunk = page.chunk;
    resp.next_batch = page.next_batch;
    resp.prev_batch = page.prev_batch;
    resp.total_room_count_estimate = page.total_room_count_estimate;
    Ok(resp)
}

pub async fn public_rooms_filtered(
    State(services): State<AppState>,
    req: Ruma<get_public_rooms_filtered::v1::Request>,
) -> Result<get_public_rooms_filtered::v1::Response> {
    let page = directory_page(
        &services,
        req.body.limit,
        req.body.since.as_deref(),
        req.body.filter.generic_search_term.as_deref(),
        Some(&req.body.filter.room_types),
    )?;
    let mut resp = get_public_rooms_filtered::v1::Response::new();
    resp.chunk = page.chunk;
    resp.next_batch = page.next_batch;
    resp.prev_batch = page.prev_batch;
    resp.total_room_count_estimate = page.total_room_count_estimate;
    Ok(resp)
}
