//! Invites, leaves and knocks across servers: invites we send and receive, rejecting an invite
//! to a room we are not in, knocking, and the stripped state outsiders see.

use ruma::{
    events::{StateEventType, TimelineEventType},
    CanonicalJsonObject, EventId, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, ServerName,
    UserId,
};
use serde_json::{json, Value as JsonValue};

use super::{
    bad_event, read_template, stripped, to_canonical, urlencode, Refused, Service,
    SUPPORTED_VERSIONS,
};
use crate::{
    error::{Error, Result},
    service::rooms::{self, remote::Relay},
    storage::ShortId,
};

impl Service {
    /// Invites a user of another server: build the invite on the room's head, have the
    /// invitee's server countersign it (PUT /invite/v2), then place it like any event and send it
    /// to the room's other servers.
    pub async fn invite_remote(
        &self,
        room_id: &RoomId,
        inviter: &UserId,
        invitee: &UserId,
        reason: Option<&str>,
        is_direct: bool,
    ) -> Result<()> {
        let (room, meta) = self.rooms.state.known_room(room_id)?;
        let rules = rooms::Service::version_rules(&meta.version)?;
        let mut content = json!({ "membership": "invite" });
        if let Some(r) = reason {
            content["reason"] = r.into();
        }
        if is_direct {
            content["is_direct"] = true.into();
        }
        let (_, mut object) = self
            .rooms
            .member_event_template(room, inviter, invitee, content)?;
        let v1_id = rules
            .event_format
            .require_event_id
            .then(|| EventId::new_v1(self.server_name()));
        if let Some(id) = &v1_id {
            object.insert("event_id".into(), id.as_str().into());
        }
        hearth_federation::pdu::hash_and_sign(self.server_name(), &self.key, &mut object, &rules)
            .map_err(Error::internal)?;
        let event_id = match v1_id {
            Some(id) => id,
            None => hearth_federation::pdu::event_id(&object, &rules)
                .map_err(Error::internal)?
                .ok_or_else(|| Error::internal("no event ID"))?,
        };
        let stripped = self.stripped_state(room, inviter)?;
        let body = json!({
            "room_version": meta.version,
            "event": object,
            "invite_room_state": stripped,
        });
        let answer = self
            .federation
            .request_json(
                invitee.server_name(),
                http::Method::PUT,
                &format!(
                    "/_matrix/federation/v2/invite/{}/{}",
                    urlencode(room_id.as_str()),
                    urlencode(event_id.as_str())
                ),
                Some(&body),
            )
            .await
            .map_err(|e| {
                Error::forbidden(format!("The invitee's server refused the invite: {e}"))
            })?;
        let signed = answer
            .get("event")
            .cloned()
            .ok_or_else(|| bad_event("the invitee's server sent no event"))?;
        let v = self.verify(&rules, to_canonical(signed)?).await?;
        if v.event_id != event_id {
            return Err(bad_event("the invitee's server changed the invite"));
        }
        self.place(self.server_name(), room, &rules, v, Relay::ToRoom, 0)
            .await
            .map_err(|e| match e {
                Refused::Rejected(m) => Error::forbidden(m),
                Refused::Dropped(m) => bad_event(m),
            })?;
        Ok(())
    }

    /// The state sent with an invite: the room's name and such, and the inviter's membership,
    /// as full PDUs (what the spec asks for since v1.16).
    pub(super) fn stripped_state(&self, room: ShortId, inviter: &UserId) -> Result<Vec<JsonValue>> {
        let mut out = Vec::new();
        let kinds = [
            ("m.room.create", ""),
            ("m.room.join_rules", ""),
            ("m.room.name", ""),
            ("m.room.avatar", ""),
            ("m.room.canonical_alias", ""),
            ("m.room.encryption", ""),
            ("m.room.topic", ""),
            ("m.room.member", inviter.as_str()),
        ];
        for (kind, sk) in kinds {
            if let Some(short) =
                self.rooms
                    .state
                    .current_state_event(room, &StateEventType::from(kind), sk)?
            {
                if let Some(json) = self.rooms.events.event_json(short)? {
                    out.push(JsonValue::Object(json));
                }
            }
        }
        Ok(out)
    }

    /// The invitee's side of PUT /invite: check the invite is for one of our users and from the
    /// inviter's server, countersign it, and (for a room we are not in) record it so the user
    /// sees it. Returns the countersigned event.
    pub async fn receive_invite(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        version: &RoomVersionId,
        object: CanonicalJsonObject,
        invite_room_state: Vec<JsonValue>,
    ) -> Result<CanonicalJsonObject> {
        let rules = rooms::Service::version_rules(version).map_err(|_| {
            Error::matrix(
                crate::error::incompatible_room_version_kind(version.as_str()),
                format!("Room version {version} is not supported"),
            )
        })?;
        if let Some(room) = self.rooms.events.room_short(room_id)? {
            if self.denied_by_acl(room, origin)? {
                return Err(Error::forbidden("The room's server ACL denies your server"));
            }
        }
        let v = self.verify(&rules, object).await?;
        if v.event_id != event_id {
            return Err(bad_event("the event ID does not match the event"));
        }
        let pdu = &v.pdu;
        let invitee = pdu
            .state_key
            .as_deref()
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(|| bad_event("an invite names a user"))?;
        if pdu.kind != TimelineEventType::RoomMember
            || pdu
                .content_field("membership")
                .and_then(|m| m.as_str().map(str::to_owned))
                != Some("invite".to_owned())
            || pdu.room_id.as_deref() != Some(room_id)
            || pdu.sender.server_name() != origin
        {
            return Err(bad_event("not an invite from a user of your server"));
        }
        if invitee.server_name() != self.server_name() {
            return Err(bad_event("the invitee is not on this server"));
        }
        let mut object = v.object;
        hearth_federation::pdu::countersign(self.server_name(), &self.key, &mut object, &rules)
            .map_err(Error::internal)?;
        // In a room we are part of, the event arrives in a transaction like any other.
        let resident = match self.rooms.events.room_short(room_id)? {
            Some(r) => {
                self.rooms.state.meta(r)?.is_some() && self.rooms.membership.has_local_members(r)?
            }
            None => false,
        };
        if !resident {
            let mut state = invite_room_state;
            state.retain(JsonValue::is_object);
            state.truncate(50);
            self.rooms
                .record_remote_membership(
                    room_id,
                    &invitee,
                    event_id,
                    object.clone(),
                    ruma::events::room::member::MembershipState::Invite,
                    Some(state),
                )
                .await?;
        }
        Ok(object)
    }

    /// Leaves (rejects an invite to) a room we are not in, through `via`: make_leave, sign,
    /// send_leave, then record the leave.
    pub async fn leave_remote(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
    ) -> Result<()> {
        let mut last = Error::not_found("No server to leave the room through");
        for server in via {
            if server == self.server_name() {
                continue;
            }
            match self.leave_via(server, user_id, room_id).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub(super) async fn leave_via(
        &self,
        server: &ServerName,
        user_id: &UserId,
        room_id: &RoomId,
    ) -> Result<()> {
        let (event_id, object, _) = self
            .make_and_send(server, user_id, room_id, "leave", None)
            .await?;
        self.rooms
            .record_remote_membership(
                room_id,
                user_id,
                &event_id,
                object,
                ruma::events::room::member::MembershipState::Leave,
                None,
            )
            .await
    }

    /// Knocks on a room that lives on other servers: make_knock, sign, send_knock; the knock
    /// is recorded with the room state the resident server sent, for the user's /sync.
    pub async fn knock_remote(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        reason: Option<&str>,
    ) -> Result<()> {
        let mut last = Error::not_found("No server to knock through");
        for server in via {
            if server == self.server_name() {
                continue;
            }
            match self
                .make_and_send(server, user_id, room_id, "knock", reason)
                .await
            {
                Ok((event_id, object, answer)) => {
                    let state: Vec<JsonValue> = answer
                        .get("knock_room_state")
                        .and_then(JsonValue::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(stripped)
                        .take(50)
                        .collect();
                    return self
                        .rooms
                        .record_remote_membership(
                            room_id,
                            user_id,
                            &event_id,
                            object,
                            ruma::events::room::member::MembershipState::Knock,
                            Some(state),
                        )
                        .await;
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// make_leave or make_knock on `server`, our user's event signed from the template, then
    /// send_leave (v2) or send_knock (v1). Returns the event and the answer to the send.
    pub(super) async fn make_and_send(
        &self,
        server: &ServerName,
        user_id: &UserId,
        room_id: &RoomId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<(OwnedEventId, CanonicalJsonObject, JsonValue)> {
        let versions: String = SUPPORTED_VERSIONS
            .iter()
            .map(|v| format!("&ver={v}"))
            .collect();
        let (make, send) = match membership {
            "knock" => ("v1/make_knock", "v1/send_knock"),
            _ => ("v1/make_leave", "v2/send_leave"),
        };
        let template = self
            .federation
            .get_json(
                server,
                &format!(
                    "/_matrix/federation/{make}/{}/{}?{}",
                    urlencode(room_id.as_str()),
                    urlencode(user_id.as_str()),
                    &versions[1..]
                ),
            )
            .await?;
        let (_, rules, mut event) = read_template(&template, server, membership)?;
        if event.get("state_key").and_then(JsonValue::as_str) != Some(user_id.as_str())
            || event.get("sender").and_then(JsonValue::as_str) != Some(user_id.as_str())
        {
            return Err(bad_event(format!(
                "the {membership} template is not our user's"
            )));
        }
        event["content"] = json!({ "membership": membership });
        if let Some(r) = reason {
            event["content"]["reason"] = r.into();
        }
        event["origin_server_ts"] = crate::util::now_ms().into();
        let (event_id, object) = self.sign_new(to_canonical(event)?, &rules)?;
        let answer = self
            .federation
            .request_json(
                server,
                http::Method::PUT,
                &format!(
                    "/_matrix/federation/{send}/{}/{}",
                    urlencode(room_id.as_str()),
                    urlencode(event_id.as_str())
                ),
                Some(&serde_json::to_value(&object).map_err(Error::internal)?),
            )
            .await?;
        Ok((event_id, object, answer))
    }

    /// State events for someone outside the room (knock state), as full PDUs.
    pub fn outsider_state(&self, room: ShortId, user: &UserId) -> Result<Vec<JsonValue>> {
        self.stripped_state(room, user)
    }
}
