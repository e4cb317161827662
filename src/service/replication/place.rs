//! The last step of a received event, and the entry point of every PDU a peer sends us: once
//! verified and authorised, the event is placed in its room's DAG (the state before it, the
//! room's new current state and heads) and committed by the rooms service's one commit
//! function.

use std::sync::Arc;

use ruma::{
    events::StateEventType, room_version_rules::RoomVersionRules, CanonicalJsonObject,
    CanonicalJsonValue, OwnedEventId, OwnedRoomId, ServerName,
};

use super::{dropped, Checked, Refused, Service};
use crate::{
    error::Result,
    service::rooms::{
        self,
        remote::{Relay, REJECTED},
    },
    storage::ShortId,
};

impl Service {
    /// Receives one PDU from `origin` (a /send transaction, a send_join): verify, fetch what is
    /// missing, authorise, persist. `relay` is for joins we accept as the resident server.
    pub async fn receive(
        &self,
        origin: &ServerName,
        object: CanonicalJsonObject,
        relay: Relay,
    ) -> std::result::Result<OwnedEventId, (Option<OwnedEventId>, Refused)> {
        let room_id = match object.get("room_id") {
            Some(CanonicalJsonValue::String(r)) => OwnedRoomId::try_from(r.as_str())
                .map_err(|e| (None, dropped(format!("bad room_id: {e}"))))?,
            _ => return Err((None, dropped("no room_id"))),
        };
        let (room, meta) = self
            .rooms
            .state
            .known_room(&room_id)
            .map_err(|_| (None, dropped(format!("unknown room {room_id}"))))?;
        if self
            .denied_by_acl(room, origin)
            .map_err(|e| (None, e.into()))?
        {
            return Err((
                None,
                dropped(format!("the room's server ACL denies {origin}")),
            ));
        }
        let rules = rooms::Service::version_rules(&meta.version).map_err(|e| (None, e.into()))?;
        let v = self
            .verify(&rules, object)
            .await
            .map_err(|e| (None, e.into()))?;
        let id = v.event_id.clone();
        self.place(origin, room, &rules, v, relay, 0)
            .await
            .map(|_| id.clone())
            .map_err(|e| (Some(id), e))
    }

    /// Whether the room's m.room.server_acl denies a server (requests from it are refused).
    pub fn denied_by_acl(&self, room: ShortId, server: &ServerName) -> Result<bool> {
        let Some(acl) =
            self.rooms
                .state
                .current_state_pdu(room, &StateEventType::RoomServerAcl, "")?
        else {
            return Ok(false);
        };
        // An ACL that does not parse denies nobody rather than everybody.
        let Ok(content) = serde_json::from_str::<
            ruma::events::room::server_acl::RoomServerAclEventContent,
        >(acl.content.get()) else {
            return Ok(false);
        };
        Ok(!content.is_allowed(server))
    }

    /// Places a verified event in its room.
    pub(super) async fn place(
        &self,
        origin: &ServerName,
        room: ShortId,
        rules: &RoomVersionRules,
        v: Checked,
        relay: Relay,
        depth: u32,
    ) -> std::result::Result<ShortId, Refused> {
        if let Some(s) = self.rooms.events.event_short(&v.event_id)? {
            if self.rooms.events.event_meta(s)?.is_some() {
                return Ok(s);
            }
            if self.rooms.events.event_flags(s)? & REJECTED != 0 {
                return Err(Refused::Rejected("rejected before".into()));
            }
        }
        let meta = self
            .rooms
            .state
            .meta(room)?
            .ok_or_else(|| dropped("unknown room"))?;
        if v.pdu.room_id.as_deref() != Some(&*meta.room_id) {
            return Err(dropped("event for another room"));
        }
        let (state_before, flags) = self
            .authorise(origin, room, &meta.room_id, rules, &v, depth)
            .await?;
        let short = self
            .rooms
            .persist_remote(
                room,
                rules,
                &v.event_id,
                v.object,
                &v.pdu,
                Arc::new(state_before),
                flags,
                relay,
            )
            .await?;
        Ok(short)
    }
}
