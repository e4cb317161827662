//! Client-server API handlers, one file per area of the spec.

mod account;
mod account_data;
mod appservice;
mod backup;
mod delayed_events;
mod device;
pub(crate) mod directory;
mod discovery;
pub(crate) mod keys;
pub(crate) mod media;
pub(crate) mod membership;
mod openid;
mod presence;
mod profile;
mod push;
mod receipts;
mod relations;
mod room;
mod search;
mod session;
mod spaces;
mod sync;
mod thirdparty;
mod user_directory;
mod voip;

use axum::Router;

use super::AppState;

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = discovery::routes(router);
    let router = account::routes(router);
    let router = session::routes(router);
    let router = appservice::routes(router);
    let router = device::routes(router);
    let router = room::routes(router);
    let router = delayed_events::routes(router);
    let router = membership::routes(router);
    let router = directory::routes(router);
    let router = relations::routes(router);
    let router = sync::routes(router);
    let router = account_data::routes(router);
    let router = receipts::routes(router);
    let router = keys::routes(router);
    let router = media::routes(router);
    let router = backup::routes(router);
    let router = presence::routes(router);
    let router = push::routes(router);
    let router = openid::routes(router);
    let router = thirdparty::routes(router);
    let router = user_directory::routes(router);
    let router = spaces::routes(router);
    let router = voip::routes(router);
    let router = search::routes(router);
    profile::routes(router)
}
