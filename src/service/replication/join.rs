//! Joining rooms that live on other servers: make_join/send_join as the joining server, the
//! state and history a join brings, and the resident side's acceptance of joins we sign.

use std::{collections::HashSet, sync::Arc};

use ruma::{
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    CanonicalJsonObject, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, ServerName,
    UserId,
};
use serde_json::Value as JsonValue;

use super::{
    bad_event, read_template, to_canonical, urlencode, Refused, Service, HISTORY_AT_JOIN,
    SUPPORTED_VERSIONS,
};
use crate::{
    error::{Error, Result},
    service::rooms::{
        self,
        pdu::Pdu,
        remote::{Relay, REJECTED},
        state::StateMap,
    },
    storage::ShortId,
};

impl Service {
    /// Signs an event of one of our users built from a template (ours or a resident's): old
    /// hashes and signatures dropped, the v1/v2 event ID or origin added where the version has
    /// them, hashed and signed. Returns its event ID and the signed event.
    pub(super) fn sign_new(
        &self,
        mut object: CanonicalJsonObject,
        rules: &RoomVersionRules,
    ) -> Result<(OwnedEventId, CanonicalJsonObject)> {
        object.remove("hashes");
        object.remove("signatures");
        object.remove("unsigned");
        if rules.redaction.keep_origin_membership_prev_state {
            object.insert("origin".into(), self.server_name().as_str().into());
        }
        let v1_id = rules
            .event_format
            .require_event_id
            .then(|| EventId::new_v1(self.server_name()));
        if let Some(id) = &v1_id {
            object.insert("event_id".into(), id.as_str().into());
        }
        hearth_federation::pdu::hash_and_sign(self.server_name(), &self.key, &mut object, rules)
            .map_err(Error::internal)?;
        let event_id = match v1_id {
            Some(id) => id,
            None => hearth_federation::pdu::event_id(&object, rules)
                .map_err(Error::internal)?
                .ok_or_else(|| Error::internal("no event ID"))?,
        };
        Ok((event_id, object))
    }

    /// Resolves an alias of another server through its /query/directory.
    pub async fn resolve_remote_alias(
        &self,
        alias: &ruma::RoomAliasId,
    ) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        let answer = self
            .federation
            .get_json(
                alias.server_name(),
                &format!(
                    "/_matrix/federation/v1/query/directory?room_alias={}",
                    urlencode(alias.as_str())
                ),
            )
            .await
            .map_err(|e| Error::not_found(format!("Room alias not found: {e}")))?;
        let room_id = answer
            .get("room_id")
            .and_then(JsonValue::as_str)
            .and_then(|r| OwnedRoomId::try_from(r).ok())
            .ok_or_else(|| Error::not_found("Room alias not found"))?;
        let mut servers: Vec<OwnedServerName> = answer
            .get("servers")
            .and_then(JsonValue::as_array)
            .into_iter()
            .flatten()
            .filter_map(JsonValue::as_str)
            .filter_map(|s| OwnedServerName::try_from(s).ok())
            .collect();
        servers.insert(0, alias.server_name().to_owned());
        Ok((room_id, servers))
    }

    /// Joins a room that lives on other servers: make_join on the first of `via` that answers,
    /// sign the event, send_join, take over the state it returns, and place the join.
    pub async fn join_remote(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        content_extra: Option<JsonValue>,
    ) -> Result<()> {
        let mut last_error = Error::not_found("No server to join the room through");
        for server in via {
            if server == self.server_name() {
                continue;
            }
            match self
                .join_via(server, user_id, room_id, content_extra.clone())
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::info!(%server, %room_id, "join through {server} failed: {e}");
                    last_error = e;
                }
            }
        }
        Err(last_error)
    }

    pub(super) async fn join_via(
        &self,
        server: &ServerName,
        user_id: &UserId,
        room_id: &RoomId,
        content_extra: Option<JsonValue>,
    ) -> Result<()> {
        let versions: String = SUPPORTED_VERSIONS
            .iter()
            .map(|v| format!("&ver={v}"))
            .collect();
        let template = self
            .federation
            .request_json(
                server,
                http::Method::GET,
                &format!(
                    "/_matrix/federation/v1/make_join/{}/{}?{}",
                    urlencode(room_id.as_str()),
                    urlencode(user_id.as_str()),
                    &versions[1..]
                ),
                None,
            )
            .await?;
        let (version, rules, mut event) = read_template(&template, server, "join")?;
        // The template is the resident's; what we sign is ours to check.
        if event.get("type").and_then(JsonValue::as_str) != Some("m.room.member")
            || event.get("state_key").and_then(JsonValue::as_str) != Some(user_id.as_str())
            || event.get("sender").and_then(JsonValue::as_str) != Some(user_id.as_str())
        {
            return Err(bad_event("the join template is not our user's join"));
        }
        event["content"]["membership"] = "join".into();
        if let Some(JsonValue::Object(extra)) = content_extra {
            for (k, v) in extra {
                event["content"][k] = v;
            }
        }
        event["origin_server_ts"] = crate::util::now_ms().into();
        let (event_id, mut object) = self.sign_new(to_canonical(event)?, &rules)?;
        let answer = self
            .federation
            .request_json(
                server,
                http::Method::PUT,
                &format!(
                    "/_matrix/federation/v2/send_join/{}/{}",
                    urlencode(room_id.as_str()),
                    urlencode(event_id.as_str())
                ),
                Some(&serde_json::to_value(&object).map_err(Error::internal)?),
            )
            .await?;
        // A restricted join comes back with the resident's signature added.
        if let Some(signed) = answer.get("event").cloned().filter(JsonValue::is_object) {
            let signed = to_canonical(signed)?;
            if hearth_federation::pdu::event_id(&signed, &rules)
                .ok()
                .flatten()
                .is_none_or(|id| id == event_id)
            {
                object = signed;
            }
        }
        let list = |field: &str| -> Result<Vec<CanonicalJsonObject>> {
            answer
                .get(field)
                .and_then(JsonValue::as_array)
                .ok_or_else(|| bad_event(format!("send_join answer without {field}")))?
                .iter()
                .map(|e| to_canonical(e.clone()))
                .collect()
        };
        let state_events = list("state")?;
        let auth_chain = list("auth_chain")?;
        // Verify everything; events that fail verification are left out.
        let mut verified = Vec::new();
        let mut state_ids = Vec::new();
        let mut seen = HashSet::new();
        for (is_state, object) in state_events
            .into_iter()
            .map(|o| (true, o))
            .chain(auth_chain.into_iter().map(|o| (false, o)))
        {
            match self.verify(&rules, object).await {
                Ok(v) => {
                    if v.pdu.room_id.as_deref().is_some_and(|r| r != room_id) {
                        continue;
                    }
                    if is_state {
                        state_ids.push(v.event_id.clone());
                    }
                    if seen.insert(v.event_id.clone())
                        && self.rooms.events.event_short(&v.event_id)?.is_none()
                    {
                        verified.push(v);
                    }
                }
                Err(e) => tracing::info!(%server, "state event from send_join dropped: {e}"),
            }
        }
        self.store_checked_outliers(&rules, verified).await?;
        let mut state = self.rooms.state.state_from_events(&state_ids)?;
        // Rejected events never become state.
        let mut keep = StateMap::new();
        for (k, e) in state {
            if self.rooms.events.event_flags(e)? & REJECTED == 0 {
                keep.insert(k, e);
            }
        }
        state = keep;
        let create_short = self
            .rooms
            .state
            .state_key_short(&StateEventType::RoomCreate, "")?
            .and_then(|k| state.get(&k).copied())
            .ok_or_else(|| bad_event("the room's state has no create event"))?;
        let create_event = self.rooms.events.event_id_of(create_short)?;
        if rules.authorization.room_create_event_id_as_room_id
            && create_event.localpart() != room_id.strip_sigil()
        {
            return Err(bad_event("the create event does not match the room ID"));
        }
        let pdu = Pdu::from_canonical(event_id.clone(), &object).map_err(bad_event)?;
        let room = self
            .rooms
            .adopt_room(
                &room_id.to_owned(),
                &version,
                create_event,
                state.clone(),
                pdu.prev_events.clone(),
                pdu.depth.saturating_sub(1),
            )
            .await?;
        self.rooms
            .authorise_against(&rules, &pdu, &state)
            .map_err(|e| bad_event(format!("our join is not allowed by the room's state: {e}")))?;
        // Recent history first, so the new member's timeline does not start at their join.
        if let Err(e) = self
            .history_at_join(server, room, room_id, &rules, &pdu.prev_events)
            .await
        {
            tracing::info!(%room_id, %server, "no history fetched at join: {e}");
        }
        self.rooms
            .persist_remote(
                room,
                &rules,
                &event_id,
                object,
                &pdu,
                Arc::new(state),
                0,
                Relay::No,
            )
            .await?;
        tracing::info!(%room_id, %server, "joined a remote room");
        Ok(())
    }

    /// Fetches the latest events before our join (/backfill from the resident server) and puts
    /// them in the timeline ahead of it. They are kept only if they verify and pass the auth
    /// rules against their auth events.
    pub(super) async fn history_at_join(
        &self,
        server: &ServerName,
        room: ShortId,
        room_id: &RoomId,
        rules: &RoomVersionRules,
        from: &[OwnedEventId],
    ) -> Result<()> {
        let v: String = from
            .iter()
            .map(|e| format!("&v={}", urlencode(e.as_str())))
            .collect();
        let answer = self
            .federation
            .get_json(
                server,
                &format!(
                    "/_matrix/federation/v1/backfill/{}?limit={HISTORY_AT_JOIN}{v}",
                    urlencode(room_id.as_str())
                ),
            )
            .await?;
        let mut events = Vec::new();
        for e in answer
            .get("pdus")
            .and_then(JsonValue::as_array)
            .into_iter()
            .flatten()
            .take(HISTORY_AT_JOIN)
        {
            let Ok(object) = to_canonical(e.clone()) else {
                continue;
            };
            match self.verify(rules, object).await {
                Ok(c) if c.pdu.room_id.as_deref() == Some(room_id) => events.push(c),
                Ok(_) => {}
                Err(e) => tracing::info!(%server, "history event dropped: {e}"),
            }
        }
        let auth: Vec<OwnedEventId> = events
            .iter()
            .flat_map(|c| c.pdu.auth_events.clone())
            .collect();
        self.fetch_auth_chain(server, room_id, rules, &auth).await?;
        let mut keep = Vec::new();
        for c in events {
            if self.rooms.events.event_short(&c.event_id)?.is_some() {
                continue;
            }
            match self.rooms.authorise_by_auth_events(rules, &c.pdu) {
                Ok(()) => keep.push((c.event_id, c.object, c.pdu)),
                Err(e) => tracing::info!(event_id = %c.event_id, "history event rejected: {e}"),
            }
        }
        keep.sort_by_key(|(_, _, p)| p.depth);
        self.rooms.store_history(room, keep).await
    }

    /// The resident side of send_join: check the join is the origin's user's, countersign a
    /// restricted join we vouch for, and place it. Returns the event as stored.
    pub async fn accept_join(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        object: CanonicalJsonObject,
        membership: &str,
    ) -> Result<(ShortId, CanonicalJsonObject)> {
        let (room, meta) = self.rooms.state.known_room(room_id)?;
        if self.denied_by_acl(room, origin)? {
            return Err(Error::forbidden("The room's server ACL denies your server"));
        }
        let rules = rooms::Service::version_rules(&meta.version)?;
        let mut object = object;
        object.remove("unsigned");
        let pdu = Pdu::from_canonical(event_id.to_owned(), &object).map_err(bad_event)?;
        if pdu.kind != TimelineEventType::RoomMember
            || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
            || pdu.sender.server_name() != origin
            || pdu.room_id.as_deref() != Some(room_id)
        {
            return Err(bad_event(format!(
                "not a {membership} of a user of {origin} in this room"
            )));
        }
        if pdu
            .content_field("membership")
            .and_then(|m| m.as_str().map(str::to_owned))
            .as_deref()
            != Some(membership)
        {
            return Err(bad_event(format!("membership is not {membership}")));
        }
        // We vouch for a restricted join through one of our users: add our signature.
        if let Some(via) = pdu
            .content_field("join_authorised_via_users_server")
            .and_then(|v| v.as_str().map(str::to_owned))
        {
            if UserId::parse(via.as_str()).is_ok_and(|u| u.server_name() == self.server_name()) {
                hearth_federation::pdu::countersign(
                    self.server_name(),
                    &self.key,
                    &mut object,
                    &rules,
                )
                .map_err(Error::internal)?;
            }
        }
        let v = self.verify(&rules, object).await?;
        if v.event_id != event_id {
            return Err(bad_event("the event ID does not match the event"));
        }
        let stored = v.object.clone();
        let short = self
            .place(origin, room, &rules, v, Relay::ToRoom, 0)
            .await
            .map_err(|e| match e {
                Refused::Rejected(m) => Error::forbidden(m),
                Refused::Dropped(m) => bad_event(m),
            })?;
        if self.rooms.events.event_flags(short)? != 0 {
            return Err(Error::forbidden(
                "The event is not allowed by the room's current state",
            ));
        }
        Ok((short, stored))
    }
}
