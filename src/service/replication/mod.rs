//! Rooms shared with other servers: the receiving half of the event pipeline (verify, fetch
//! what is missing, authorise against auth events, the state before and the current state,
//! persist) and joining rooms that live elsewhere (make_join / send_join as the joining server).
//! The sending half is `service::sender`; the resident side of joins is in the federation API.
//! One file per step of a received event (`verify`, `fetch`, `authorise`, `place`), then joins
//! and the other memberships across servers.

mod authorise;
mod fetch;
mod join;
mod membership;
mod place;
mod verify;

use std::sync::Arc;

use hearth_federation::ServerSigningKey;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, ServerName};
use serde_json::{json, Value as JsonValue};

use crate::{
    error::{Error, Result},
    service::{
        federation,
        rooms::{self, pdu::Pdu},
    },
};

/// How many missing prev events one get_missing_events asks for.
const MISSING_EVENTS_LIMIT: u64 = 20;
/// Events of history fetched when joining a room that lives elsewhere.
const HISTORY_AT_JOIN: usize = 50;
/// Most events fetched one by one while placing a single received event.
const MAX_FETCHES: usize = 500;

pub struct Service {
    rooms: Arc<rooms::Service>,
    federation: Arc<federation::Service>,
    key: Arc<ServerSigningKey>,
}

/// Why an event was not accepted.
#[derive(Debug)]
pub enum Refused {
    /// Not verifiable or malformed: dropped, nothing stored.
    Dropped(String),
    /// Failed the auth rules: stored as rejected, never state.
    Rejected(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Dropped(m) => write!(f, "dropped: {m}"),
            Refused::Rejected(m) => write!(f, "rejected: {m}"),
        }
    }
}

fn dropped(m: impl std::fmt::Display) -> Refused {
    Refused::Dropped(m.to_string())
}

impl From<Error> for Refused {
    fn from(e: Error) -> Self {
        Refused::Dropped(e.to_string())
    }
}

fn bad_event(m: impl std::fmt::Display) -> Error {
    Error::bad_json(format!("Invalid event: {m}"))
}

/// A verified PDU ready for the pipeline.
pub struct Checked {
    pub event_id: OwnedEventId,
    pub object: CanonicalJsonObject,
    pub pdu: Pdu,
}

impl Service {
    pub fn new(
        rooms: Arc<rooms::Service>,
        federation: Arc<federation::Service>,
        key: Arc<ServerSigningKey>,
    ) -> Self {
        Self {
            rooms,
            federation,
            key,
        }
    }

    pub(super) fn server_name(&self) -> &ServerName {
        self.federation.server_name()
    }
}

/// The stripped form (type, state_key, content, sender) of a state event, PDU or already
/// stripped, which is what clients are shown.
pub fn stripped(v: &JsonValue) -> Option<JsonValue> {
    Some(json!({
        "type": v.get("type")?,
        "state_key": v.get("state_key")?,
        "content": v.get("content")?,
        "sender": v.get("sender")?,
    }))
}

/// Room versions this server can join (sent as `ver` in make_join).
pub const SUPPORTED_VERSIONS: &[&str] = &["2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];

/// The room version, its rules and the event of a make_join / make_leave / make_knock answer
/// from `server`.
fn read_template(
    template: &JsonValue,
    server: impl std::fmt::Display,
    membership: impl std::fmt::Display,
) -> Result<(
    ruma::RoomVersionId,
    ruma::room_version_rules::RoomVersionRules,
    JsonValue,
)> {
    let version = template
        .get("room_version")
        .and_then(JsonValue::as_str)
        .map(ruma::RoomVersionId::try_from)
        .transpose()
        .map_err(|e| bad_event(format!("room version: {e}")))?
        .unwrap_or(ruma::RoomVersionId::V1);
    let rules = rooms::Service::version_rules(&version)?;
    let event = template
        .get("event")
        .cloned()
        .filter(JsonValue::is_object)
        .ok_or_else(|| bad_event(format!("{server} sent no {membership} template")))?;
    Ok((version, rules, event))
}

pub fn to_canonical(value: JsonValue) -> Result<CanonicalJsonObject> {
    match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(o)) => Ok(o),
        Ok(_) => Err(bad_event("not a JSON object")),
        Err(e) => Err(bad_event(e)),
    }
}

/// Percent-encodes a path segment or query value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
