//! `/user_directory/search`: whom a user can find to start a chat with (see
//! `service::user_directory`).

use axum::{extract::State, Router};
use ruma::{api::client::user_directory::search_users, OwnedMxcUri};

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(search)
}

async fn search(
    State(services): State<AppState>,
    req: Ruma<search_users::v3::Request>,
) -> Result<search_users::v3::Response> {
    let session = req.session()?;
    let limit = usize::try_from(u64::from(req.body.limit)).unwrap_or(usize::MAX);
    let user = session.user;
    let term = req.body.search_term.clone();
    // A short prefix can match thousands of candidates: read them off the async workers.
    let (found, limited) = tokio::task::spawn_blocking(move || {
        services
            .user_directory
            .search(&services.rooms, user, &term, limit)
    })
    .await
    .map_err(|e| Error::internal(format!("user directory search: {e}")))??;
    let results = found
        .into_iter()
        .map(|f| {
            let mut user = search_users::v3::User::new(f.user_id);
            user.display_name = f.entry.display_name;
            // An avatar that is not an mxc:// URI is left out rather than failing the search.
            user.avatar_url = f
                .entry
                .avatar_url
                .filter(|u| u.starts_with("mxc://"))
                .map(OwnedMxcUri::from);
            user
        })
        .collect();
    Ok(search_users::v3::Response::new(results, limited))
}
