//! Delayed events (MSC4140, unstable prefix `org.matrix.msc4140`), as Synapse serves them and
//! Element Call and matrix-rust-sdk use them: the `org.matrix.msc4140.delay` query parameter of
//! `PUT /send` and `PUT /state` (see [`Delayable`], used by `room.rs`), the list of a user's
//! scheduled events, and their management: `POST .../delayed_events/{delay_id}/{action}` and the
//! older `POST .../delayed_events/{delay_id}` with `{"action": ...}`.
//!
//! ruma 0.16 has no types for the list and the path-action endpoints, and its body-action type
//! requires an access token where Synapse (and the MSC's SFU delegation) take the delay ID alone,
//! so the endpoints are declared here (see `api::endpoint`).

use axum::{extract::State, Router};
use bytes::BufMut;
use http::Method;
use ruma::api::{
    auth_scheme::{AccessToken, AccessTokenOptional},
    error::{FromHttpRequestError, IntoHttpError},
    IncomingRequest, Metadata, OutgoingResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use crate::{
    api::{
        endpoint::{Empty, JsonEndpoint, JsonRequest, JsonResponse, NoBody},
        ruma::Ruma,
        AppState, RouterExt,
    },
    error::{Error, Result},
    service::delayed_events::{Action, Listed},
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(list_delayed_events)
        .ruma(update_delayed_event)
        .ruma(manage_delayed_event)
}

/// The query parameter that turns a send into a delayed send (milliseconds).
const DELAY_PARAM: &str = "org.matrix.msc4140.delay";

/// A `PUT /send` or `PUT /state` request with MSC4140's optional delay: ruma's request, parsed
/// as ruma parses it, plus the `org.matrix.msc4140.delay` query parameter.
pub struct Delayable<R> {
    pub request: R,
    /// `None` without the parameter; `Some(Err)` when it is not a whole number of milliseconds.
    pub delay: Option<std::result::Result<u64, String>>,
}

impl<R> Delayable<R> {
    /// The delay asked for, if any; 400 `M_INVALID_PARAM` when it is not a non-negative integer.
    pub fn delay_ms(&self) -> Result<Option<u64>> {
        match &self.delay {
            None => Ok(None),
            Some(Ok(ms)) => Ok(Some(*ms)),
            Some(Err(raw)) => Err(Error::invalid_param(format!(
                "{DELAY_PARAM} must be a non-negative integer (milliseconds), not `{raw}`"
            ))),
        }
    }
}

fn delay_param(query: Option<&str>) -> Option<std::result::Result<u64, String>> {
    let (_, raw) = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == DELAY_PARAM)?;
    // Digits only: `u64::from_str` would also take a leading `+`.
    let valid = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    Some(
        valid
            .then(|| raw.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| raw.into_owned()),
    )
}

impl<R: Metadata> Metadata for Delayable<R> {
    const METHOD: http::Method = R::METHOD;
    const RATE_LIMITED: bool = R::RATE_LIMITED;
    type Authentication = R::Authentication;
    type PathBuilder = R::PathBuilder;
    const PATH_BUILDER: R::PathBuilder = R::PATH_BUILDER;
}

impl<R: IncomingRequest> IncomingRequest for Delayable<R> {
    type EndpointError = R::EndpointError;
    type OutgoingResponse = DelayableResponse<R::OutgoingResponse>;

    fn try_from_http_request<B, S>(
        req: http::Request<B>,
        path_args: &[S],
    ) -> std::result::Result<Self, FromHttpRequestError>
    where
        B: AsRef<[u8]>,
        S: AsRef<str>,
    {
        let delay = delay_param(req.uri().query());
        Ok(Self {
            request: R::try_from_http_request(req, path_args)?,
            delay,
        })
    }
}

/// The endpoint's own answer, or MSC4140's `{"delay_id": ...}` for a delayed send.
pub enum DelayableResponse<T> {
    Sent(T),
    Delayed(String),
}

impl<T: OutgoingResponse> OutgoingResponse for DelayableResponse<T> {
    fn try_into_http_response<B: Default + BufMut>(
        self,
    ) -> std::result::Result<http::Response<B>, IntoHttpError> {
        match self {
            Self::Sent(response) => response.try_into_http_response(),
            Self::Delayed(delay_id) => {
                JsonResponse(serde_json::json!({ "delay_id": delay_id })).try_into_http_response()
            }
        }
    }
}

/// A scheduled event as the list shows it: Synapse's fields (`delay`, `running_since`), and the
/// same values under the names of the MSC's latest draft (`delay_ms`, `scheduled_at`).
#[derive(Clone, Debug, Serialize)]
pub struct DelayedEventInfo {
    pub delay_id: String,
    pub room_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_key: Option<String>,
    pub delay: u64,
    pub running_since: u64,
    pub delay_ms: u64,
    pub scheduled_at: u64,
    pub content: JsonValue,
}

impl From<Listed> for DelayedEventInfo {
    fn from(l: Listed) -> Self {
        let e = l.event;
        let since = l.due.saturating_sub(e.delay_ms);
        Self {
            delay_id: l.delay_id,
            room_id: e.room_id.to_string(),
            kind: e.kind,
            state_key: e.state_key,
            delay: e.delay_ms,
            running_since: since,
            delay_ms: e.delay_ms,
            scheduled_at: since,
            content: e.content,
        }
    }
}

/// `GET .../delayed_events`: the user's scheduled events.
pub enum ListDelayedEvents {}

impl JsonEndpoint for ListDelayedEvents {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events";
    type Authentication = AccessToken;
    type Body = NoBody;
    type Response = DelayedEvents;
}

#[derive(Serialize)]
pub struct DelayedEvents {
    /// The next due first.
    pub delayed_events: Vec<DelayedEventInfo>,
}

/// `POST .../delayed_events/{delay_id}` with `{"action": "cancel" | "restart" | "send"}`: the
/// MSC's first form, which matrix-rust-sdk uses.
pub enum UpdateDelayedEvent {}

impl JsonEndpoint for UpdateDelayedEvent {
    const METHOD: Method = Method::POST;
    const PATH: &'static str = concat!(
        "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
        "/{delay_id}"
    );
    type Authentication = AccessTokenOptional;
    type Body = UpdateBody;
    type Response = Empty;
}

#[derive(Deserialize)]
pub struct UpdateBody {
    /// Read as any JSON, to tell a missing action from a wrong one.
    #[serde(default)]
    pub action: Option<JsonValue>,
}

/// `POST .../delayed_events/{delay_id}/{action}`: the MSC's current form, which matrix-js-sdk
/// (and so Element Call) uses.
pub enum ManageDelayedEvent {}

impl JsonEndpoint for ManageDelayedEvent {
    const METHOD: Method = Method::POST;
    const PATH: &'static str = concat!(
        "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
        "/{delay_id}/{action}"
    );
    type Authentication = AccessTokenOptional;
    type Body = JsonValue;
    type Response = Empty;
}

async fn list_delayed_events(
    State(services): State<AppState>,
    req: Ruma<JsonRequest<ListDelayedEvents>>,
) -> Result<JsonResponse<DelayedEvents>> {
    let session = req.session()?;
    let delayed_events = services
        .delayed_events
        .list(session.user)?
        .into_iter()
        .map(DelayedEventInfo::from)
        .collect();
    Ok(JsonResponse(DelayedEvents { delayed_events }))
}

/// The `{delay_id}` (and `{action}`) of a management path.
fn path_arg(req: &Ruma<JsonRequest<impl JsonEndpoint>>, i: usize) -> Result<&str> {
    req.body
        .path
        .get(i)
        .map(String::as_str)
        .ok_or_else(|| Error::internal("a management path without its variables"))
}

async fn update_delayed_event(
    State(services): State<AppState>,
    req: Ruma<JsonRequest<UpdateDelayedEvent>>,
) -> Result<JsonResponse<Empty>> {
    let action = match &req.body.body.action {
        None => return Err(Error::missing_param("'action' is missing")),
        Some(JsonValue::String(a)) => Action::parse(a),
        Some(_) => None,
    }
    .ok_or_else(|| Error::invalid_param("'action' is not one of 'cancel', 'restart', 'send'"))?;
    let caller = req.session.as_ref().map(|s| s.user);
    services
        .delayed_events
        .act(path_arg(&req, 0)?, caller, action)
        .await?;
    Ok(JsonResponse(Empty {}))
}

async fn manage_delayed_event(
    State(services): State<AppState>,
    req: Ruma<JsonRequest<ManageDelayedEvent>>,
) -> Result<JsonResponse<Empty>> {
    // Only these three paths exist (as in Synapse): another answers as an unknown endpoint, which
    // matrix-js-sdk takes as its cue to fall back to the `{"action": ...}` form.
    let action = Action::parse(path_arg(&req, 1)?)
        .ok_or_else(|| Error::unrecognized("Unrecognized request"))?;
    let caller = req.session.as_ref().map(|s| s.user);
    services
        .delayed_events
        .act(path_arg(&req, 0)?, caller, action)
        .await?;
    Ok(JsonResponse(Empty {}))
}

#[cfg(test)]
mod tests {
    use super::delay_param;

    #[test]
    fn the_delay_is_a_whole_number_of_milliseconds() {
        assert_eq!(delay_param(None), None);
        assert_eq!(delay_param(Some("ts=5")), None);
        assert_eq!(
            delay_param(Some("org.matrix.msc4140.delay=1500")),
            Some(Ok(1500))
        );
        assert_eq!(
            delay_param(Some("a=b&org%2Ematrix%2Emsc4140%2Edelay=0")),
            Some(Ok(0))
        );
        for bad in ["-5", "1.5", "+5", "", "soon", "99999999999999999999999"] {
            assert!(
                matches!(
                    delay_param(Some(&format!("org.matrix.msc4140.delay={bad}"))),
                    Some(Err(_))
                ),
                "{bad}"
            );
        }
    }
}
