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
