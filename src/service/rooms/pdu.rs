//! A parsed view of a stored PDU: what authorisation and the client API read. The canonical JSON
//! stays the source of truth (signatures must verify byte for byte); this view is derived from it.

use ruma::{
    events::TimelineEventType, CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch,
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde::Deserialize;
use serde_json::value::RawValue as RawJsonValue;

#[derive(Clone, Debug)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawJsonValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: u64,
    pub rejected: bool,
}

/// v1/v2 rooms reference events as `[id, {hashes}]`, v3+ as plain IDs.
#[derive(Deserialize)]
#[serde(untagged)]
enum EventRef {
    Id(OwnedEventId),
    WithHashes(OwnedEventId, serde::de::IgnoredAny),
}

impl EventRef {
    fn id(self) -> OwnedEventId {
        match self {
            Self::Id(id) | Self::WithHashes(id, _) => id,
        }
    }
}

#[derive(Deserialize)]
struct Fields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawJsonValue>,
    state_key: Option<String>,
    #[serde(default)]
    prev_events: Vec<EventRef>,
    #[serde(default)]
    auth_events: Vec<EventRef>,
    redacts: Option<OwnedEventId>,
    #[serde(default)]
    depth: u64,
}

#[derive(Deserialize)]
struct RedactsInContent {
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    pub fn from_canonical(
        event_id: OwnedEventId,
        object: &CanonicalJsonObject,
    ) -> Result<Self, String> {
        let json = serde_json::to_vec(object).map_err(|e| e.to_string())?;
        Self::from_json(event_id, &json)
    }

    pub fn from_json(event_id: OwnedEventId, json: &[u8]) -> Result<Self, String> {
        let f: Fields = serde_json::from_slice(json).map_err(|e| format!("malformed PDU: {e}"))?;
        // v11 moved `redacts` into content; read either.
        let redacts = match f.redacts {
            Some(r) => Some(r),
            None if f.kind == TimelineEventType::RoomRedaction => {
                serde_json::from_str::<RedactsInContent>(f.content.get())
                    .ok()
                    .and_then(|c| c.redacts)
            }
            None => None,
        };
        Ok(Self {
            event_id,
            room_id: f.room_id,
            sender: f.sender,
            origin_server_ts: f.origin_server_ts,
            kind: f.kind,
            content: f.content,
            state_key: f.state_key,
            prev_events: f.prev_events.into_iter().map(EventRef::id).collect(),
            auth_events: f.auth_events.into_iter().map(EventRef::id).collect(),
            redacts,
            depth: f.depth,
            rejected: false,
        })
    }

    pub fn content_value(&self) -> serde_json::Value {
        serde_json::from_str(self.content.get()).unwrap_or_default()
    }

    pub fn content_field(&self, field: &str) -> Option<serde_json::Value> {
        self.content_value().get(field).cloned()
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawJsonValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}

/// Fields of a PDU that clients see; the rest (hashes, signatures, DAG links) is federation's.
const CLIENT_FIELDS: &[&str] = &[
    "content",
    "origin_server_ts",
    "sender",
    "state_key",
    "type",
    "redacts",
];

/// The client (ClientEvent) form of a stored PDU, without `unsigned.redacted_because`: what is
/// stored there is the redaction as a PDU (no event ID from v3 on, federation fields), which
/// `rooms::Service::client_event` turns into the client form of the redaction.
pub fn client_event(
    event_id: &EventId,
    room_id: &RoomId,
    stored: &serde_json::Map<String, serde_json::Value>,
    now_ms: u64,
) -> serde_json::Value {
    let mut out = serde_json::Map::with_capacity(10);
    for f in CLIENT_FIELDS {
        if let Some(v) = stored.get(*f) {
            out.insert((*f).to_owned(), v.clone());
        }
    }
    out.insert("event_id".into(), event_id.as_str().into());
    out.insert("room_id".into(), room_id.as_str().into());
    let mut unsigned = serde_json::Map::new();
    if let Some(ts) = stored.get("origin_server_ts").and_then(|v| v.as_u64()) {
        unsigned.insert("age".into(), now_ms.saturating_sub(ts).into());
    }
    out.insert("unsigned".into(), serde_json::Value::Object(unsigned));
    serde_json::Value::Object(out)
}

/// The redaction stored in a redacted PDU's `unsigned.redacted_because` (the redaction event as
/// a PDU), if any.
pub fn stored_redacted_because(
    stored: &serde_json::Map<String, serde_json::Value>,
) -> Option<&serde_json::Map<String, serde_json::Value>> {
    stored.get("unsigned")?.get("redacted_because")?.as_object()
}
