//! Requests that change something run to completion even when the client hangs up.
//!
//! hyper drops a request's future when its connection closes, which cancels the handler at
//! whatever `.await` it had reached: between a database write and the wake-up that follows it,
//! between a group commit and the answers to the requests it carried, between reserving a
//! registration token's use and spending it. Rather than proving every handler cancel-safe at
//! every await, the router runs each request whose method may write (anything but GET, HEAD and
//! OPTIONS) as a task of its own, which the connection going away cannot cancel; the connection
//! only stops waiting for the answer. This is Synapse's rule too (a request is cancellable only
//! when marked so, and only reads are). Of the reads, media downloads are detached as well (a
//! remote file is fetched once for every client asking and cached, file then record), and /sync
//! detaches the presence it writes itself: a long-poll whose client left should stop.
//!
//! Shutdown waits for these tasks (`Services::tasks`), so a write acknowledged to nobody still
//! lands before the database closes.

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::Method;

use crate::{error::Error, service::tasks::InFlight};

/// The middleware: reads stay on the connection's task (a /sync long-poll whose client left
/// should stop), everything else is detached.
pub async fn detach_writes(State(tasks): State<InFlight>, req: Request, next: Next) -> Response {
    let read = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if read && !req.uri().path().contains("/media/") {
        return next.run(req).await;
    }
    match tasks.spawn(next.run(req)).await {
        Ok(response) => response,
        Err(e) => Error::internal(format!("request task failed: {e}")).into_response(),
    }
}
