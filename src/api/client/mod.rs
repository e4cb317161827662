//! Client-server API handlers, one file per area of the spec.

mod account;
mod device;
mod directory;
mod discovery;
mod membership;
mod profile;
mod relations;
mod room;
mod session;

use axum::Router;

use super::AppState;

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = discovery::routes(router);
    let router = account::routes(router);
    let router = session::routes(router);
    let router = device::routes(router);
    let router = room::routes(router);
    let router = membership::routes(router);
    let router = directory::routes(router);
    let router = relations::routes(router);
    profile::routes(router)
}
