//! Events as a local client sends them through `PUT /send` and `PUT /state`: the checks those
//! endpoints make on top of the auth rules (the sender is in the room, content the server reads
//! is well-formed, aliases exist), then the one local pipeline. Delayed events (MSC4140) go
//! through here too when they fire, so they are checked, signed, authorised and committed like
//! any event their sender sends by hand.

use ruma::{
    events::{StateEventType, TimelineEventType},
    RoomId, UserId,
};
use serde_json::Value as JsonValue;

use super::{NewEvent, Sent, Service, Txn};
use crate::{
    error::{Error, Result},
    storage::ShortId,
};

/// A message or state event a client asks to send.
#[derive(Clone, Debug)]
pub struct ClientEvent {
    pub kind: String,
    /// `Some` for a state event.
    pub state_key: Option<String>,
    pub content: JsonValue,
}

impl Service {
    /// Checks what can be checked before an event is built: the sender is joined, the content is
    /// an object, and what the server itself reads is well-formed. Returns the room. Rooms the
    /// sender is not in answer 403 whether or not they exist, so nothing leaks.
    pub fn check_client_event(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        ev: &ClientEvent,
    ) -> Result<ShortId> {
        let not_in = || Error::forbidden("You are not in this room");
        let room = self.events.room_short(room_id)?.ok_or_else(not_in)?;
        if !self.membership.is_joined(sender, room)? {
            return Err(not_in());
        }
        if !ev.content.is_object() {
            return Err(Error::bad_json("Event content must be a JSON object"));
        }
        match &ev.state_key {
            None => {
                if TimelineEventType::from(ev.kind.as_str()) == TimelineEventType::RoomRedaction {
                    return Err(Error::bad_json("Use the /redact endpoint to redact events"));
                }
            }
            Some(_) => {
                let kind = StateEventType::from(ev.kind.as_str());
                validate_state_content(&kind, &ev.content)?;
                if kind == StateEventType::RoomCanonicalAlias {
                    self.check_canonical_aliases(room_id, &ev.content)?;
                }
            }
        }
        Ok(room)
    }

    /// Sends an event as a local client: [`Service::check_client_event`], then the pipeline.
    /// Setting state to what the same sender already set it to sends nothing, as the spec allows,
    /// and answers with the current event.
    pub async fn send_as_client(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        ev: ClientEvent,
        txn: Option<Txn<'_>>,
    ) -> Result<Sent> {
        let room = self.check_client_event(sender, room_id, &ev)?;
        let new = match ev.state_key {
            Some(state_key) => {
                let kind = StateEventType::from(ev.kind);
                if let Some(current) = self.state.current_state_pdu(room, &kind, &state_key)? {
                    if current.content_value() == ev.content && current.sender == sender {
                        let short = self
                            .events
                            .event_short(&current.event_id)?
                            .unwrap_or_default();
                        return Ok(Sent {
                            event_id: current.event_id,
                            short,
                        });
                    }
                }
                NewEvent::state(kind, state_key, ev.content)
            }
            None => NewEvent::message(TimelineEventType::from(ev.kind), ev.content),
        };
        self.send(room_id, sender, new, txn).await
    }

    /// Every alias a canonical alias event names must exist and point at this room (local
    /// aliases; remote ones need federation to check).
    fn check_canonical_aliases(&self, room_id: &RoomId, content: &JsonValue) -> Result<()> {
        let bad_alias = |msg: String| Error::matrix(crate::error::ErrorKind::BadAlias, msg);
        let mut names: Vec<&str> = Vec::new();
        match content.get("alias") {
            Some(JsonValue::String(a)) => names.push(a),
            Some(JsonValue::Null) | None => {}
            Some(_) => return Err(Error::bad_json("alias must be a string")),
        }
        match content.get("alt_aliases") {
            Some(JsonValue::Array(list)) => {
                for a in list {
                    names.push(
                        a.as_str()
                            .ok_or_else(|| Error::bad_json("alt_aliases must be strings"))?,
                    );
                }
            }
            Some(JsonValue::Null) | None => {}
            Some(_) => return Err(Error::bad_json("alt_aliases must be an array")),
        }
        for name in names {
            let alias = ruma::RoomAliasId::parse(name)
                .map_err(|e| Error::invalid_param(format!("Invalid alias {name}: {e}")))?;
            if !self.aliases.is_local_alias(&alias) {
                continue;
            }
            match self.aliases.resolve_alias(&alias)? {
                Some(r) if r.room_id == room_id => {}
                _ => return Err(bad_alias(format!("{name} does not point to this room"))),
            }
        }
        Ok(())
    }
}

/// Checks the content of state events the server itself interprets.
fn validate_state_content(kind: &StateEventType, content: &JsonValue) -> Result<()> {
    use ruma::events::room::{
        join_rules::RoomJoinRulesEventContent, member::RoomMemberEventContent,
        power_levels::RoomPowerLevelsEventContent,
    };
    let check = |r: std::result::Result<(), serde_json::Error>, what: &str| {
        r.map_err(|e| Error::bad_json(format!("Invalid {what} content: {e}")))
    };
    match kind {
        StateEventType::RoomPowerLevels => check(
            serde_json::from_value::<RoomPowerLevelsEventContent>(content.clone()).map(|_| ()),
            "m.room.power_levels",
        ),
        StateEventType::RoomJoinRules => check(
            serde_json::from_value::<RoomJoinRulesEventContent>(content.clone()).map(|_| ()),
            "m.room.join_rules",
        ),
        StateEventType::RoomMember => check(
            serde_json::from_value::<RoomMemberEventContent>(content.clone()).map(|_| ()),
            "m.room.member",
        ),
        StateEventType::RoomCreate => Err(Error::forbidden("The create event cannot be replaced")),
        _ => Ok(()),
    }
}
