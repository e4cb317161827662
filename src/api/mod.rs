//! HTTP surface: the router that maps every endpoint's paths (all versions ruma knows) to its
//! handler, plus the layers every request passes through (CORS, tracing, panics → 500).

pub mod admin;
pub mod client;
pub mod content;
pub mod detach;
pub mod endpoint;
pub mod federation;
pub mod ruma;

use std::{future::Future, sync::Arc};

use ::ruma::api::{path_builder::PathBuilder, IncomingRequest};
use axum::{
    extract::State,
    response::{IntoResponse, Response},
    routing::{on, MethodFilter},
    Router,
};
use http::Method;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{Any, CorsLayer},
    trace::TraceLayer,
};

use self::ruma::{AuthKind, Ruma, RumaResponse};
use crate::{error::Error, service::Services};

pub type AppState = Arc<Services>;

/// A public rooms response (any of ruma's client and federation kinds) holding a directory page.
macro_rules! public_rooms_response {
    ($response:expr, $page:expr) => {{
        let page: $crate::service::directory::DirectoryPage = $page;
        let mut response = $response;
        response.chunk = page.chunk;
        response.next_batch = page.next_batch;
        response.prev_batch = page.prev_batch;
        response.total_room_count_estimate = page.total_room_count_estimate;
        response
    }};
}
pub(crate) use public_rooms_response;

/// The federation listener's router: server-server and key APIs (and nothing of the client API).
pub fn federation_router(services: AppState) -> Router {
    serve(federation::routes(Router::new()), services)
}

/// Finishes a listener's router: the fallbacks, its state, and the layers every request passes
/// through (panics caught as 500s, writes detached from the connection, tracing).
fn serve(router: Router<AppState>, services: AppState) -> Router {
    let tasks = services.tasks.clone();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(services)
        .layer(CatchPanicLayer::custom(|_| {
            Error::internal("handler panicked").into_response()
        }))
        .layer(axum::middleware::from_fn_with_state(
            tasks,
            detach::detach_writes,
        ))
        .layer(TraceLayer::new_for_http())
}

/// Registers a ruma endpoint's handler on every path of its version history.
pub trait RouterExt {
    fn ruma<Req, F, Fut>(self, handler: F) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: AuthKind,
        Req::OutgoingResponse: Send,
        F: Fn(State<AppState>, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Req::OutgoingResponse, Error>> + Send + 'static;
}

impl RouterExt for Router<AppState> {
    fn ruma<Req, F, Fut>(mut self, handler: F) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: AuthKind,
        Req::OutgoingResponse: Send,
        F: Fn(State<AppState>, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Req::OutgoingResponse, Error>> + Send + 'static,
    {
        let filter = method_filter(&Req::METHOD);
        for path in Req::PATH_BUILDER.all_paths() {
            let path = axum_path(path);
            // An empty state key may be left out of the path, with or without the slash.
            let mut paths = vec![path.clone()];
            if let Some(base) = path.strip_suffix("/{state_key}") {
                paths.push(base.to_owned());
                paths.push(format!("{base}/"));
            }
            for p in paths {
                let handler = handler.clone();
                let route = on(filter, move |state: State<AppState>, req: Ruma<Req>| {
                    let handler = handler.clone();
                    async move { handler(state, req).await.map(RumaResponse) }
                });
                self = self.route(&p, route);
            }
        }
        self
    }
}

fn method_filter(method: &Method) -> MethodFilter {
    match *method {
        Method::GET => MethodFilter::GET,
        Method::POST => MethodFilter::POST,
        Method::PUT => MethodFilter::PUT,
        Method::DELETE => MethodFilter::DELETE,
        Method::PATCH => MethodFilter::PATCH,
        Method::HEAD => MethodFilter::HEAD,
        _ => MethodFilter::OPTIONS,
    }
}

/// ruma paths use `{name}` (or the older `:name`) for variables; axum wants `{name}`.
pub(crate) fn axum_path(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg.strip_prefix(':') {
            Some(name) => format!("{{{name}}}"),
            None => seg.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn not_found() -> Response {
    Error::unrecognized("Unrecognized request").into_response()
}

async fn method_not_allowed() -> Response {
    Error::method_not_allowed("Method not allowed for this endpoint").into_response()
}

/// The client-facing router (client-server API, well-known, admin API).
pub fn client_router(services: AppState) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            http::header::AUTHORIZATION,
            http::header::CONTENT_TYPE,
            http::header::ACCEPT,
            // Media downloads answer range requests.
            http::header::RANGE,
            http::HeaderName::from_static("x-requested-with"),
        ]);
    let router = admin::routes(client::routes(Router::new()));
    serve(router, services).layer(cors)
}
