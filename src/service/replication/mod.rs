//! Rooms shared with other servers: the receiving half of the event pipeline (verify, fetch
//! what is missing, authorise against auth events, the state before and the current state,
//! persist) and joining rooms that live elsewhere (make_join / send_join as the joining server).
//! The sending half is `service::sender`; the resident side of joins is in the federation API.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use hearth_federation::ServerSigningKey;
use ruma::{
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    signatures::{required_server_signatures_to_verify_event, verify_event, Verified},
    state_res, CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId,
    OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
};
use serde_json::{json, Value as JsonValue};

use crate::{
    error::{Error, ErrorCode, Result},
    service::{
        federation,
        rooms::{
            self,
            pdu::Pdu,
            remote::{Relay, REJECTED, SOFT_FAILED},
            state::StateMap,
        },
    },
    storage::ShortId,
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
    Error::new(
        http::StatusCode::BAD_REQUEST,
        ErrorCode::BadJson,
        format!("Invalid event: {m}"),
    )
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

    fn server_name(&self) -> &ServerName {
        self.federation.server_name()
    }

    /// Signs an event of one of our users built from a template (ours or a resident's): old
    /// hashes and signatures dropped, the v1/v2 event ID or origin added where the version has
    /// them, hashed and signed. Returns its event ID and the signed event.
    fn sign_new(
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

    /// Checks a received PDU's signatures (fetching the signers' keys) and content hash, and
    /// derives its event ID. A hash mismatch gives the redacted event, as the spec asks.
    pub async fn verify(
        &self,
        rules: &RoomVersionRules,
        mut object: CanonicalJsonObject,
    ) -> Result<Checked> {
        object.remove("unsigned");
        state_res::check_pdu_format(&object, &rules.event_format).map_err(bad_event)?;
        let servers = required_server_signatures_to_verify_event(&object, &rules.signatures)
            .map_err(bad_event)?;
        let mut keys = ruma::signatures::PublicKeyMap::new();
        for server in servers {
            let key_ids: Vec<String> = match object.get("signatures") {
                Some(CanonicalJsonValue::Object(sigs)) => match sigs.get(server.as_str()) {
                    Some(CanonicalJsonValue::Object(k)) => k.keys().cloned().collect(),
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            let Some(key_id) = key_ids.first() else {
                return Err(bad_event(format!("no signature of {server}")));
            };
            let (server_keys, _) = self
                .federation
                .server_keys(&server, Some(key_id))
                .await
                .map_err(|e| bad_event(format!("no keys of {server}: {e}")))?;
            keys.extend(server_keys.key_map(&server));
        }
        let verified = verify_event(&keys, &object, rules)
            .map_err(|e| bad_event(format!("bad signature: {e}")))?;
        let event_id = match hearth_federation::pdu::event_id(&object, rules).map_err(bad_event)? {
            Some(id) => id,
            None => match object.get("event_id") {
                Some(CanonicalJsonValue::String(s)) => {
                    OwnedEventId::try_from(s.as_str()).map_err(bad_event)?
                }
                _ => return Err(bad_event("no event_id")),
            },
        };
        if verified == Verified::Signatures {
            tracing::info!(%event_id, "content hash mismatch: storing the redacted event");
            object = hearth_federation::pdu::redacted(object, &rules.redaction, None)
                .map_err(bad_event)?;
        }
        let pdu = Pdu::from_canonical(event_id.clone(), &object).map_err(bad_event)?;
        Ok(Checked {
            event_id,
            object,
            pdu,
        })
    }

    /// Fetches one event from a server (GET /event) and verifies it.
    async fn fetch_event(
        &self,
        from: &ServerName,
        rules: &RoomVersionRules,
        event_id: &EventId,
    ) -> Result<Checked> {
        let answer = self
            .federation
            .get_json(
                from,
                &format!(
                    "/_matrix/federation/v1/event/{}",
                    urlencode(event_id.as_str())
                ),
            )
            .await?;
        let object = answer
            .get("pdus")
            .and_then(JsonValue::as_array)
            .and_then(|a| a.first())
            .cloned()
            .ok_or_else(|| bad_event(format!("{from} sent no event for {event_id}")))?;
        let object = to_canonical(object)?;
        let v = self.verify(rules, object).await?;
        if v.event_id != event_id {
            return Err(bad_event(format!(
                "{from} sent another event for {event_id}"
            )));
        }
        Ok(v)
    }

    /// Makes sure every auth event (recursively) of these events is stored, fetching the missing
    /// ones from `from` as outliers; each fetched one is checked against its own auth events.
    async fn fetch_auth_chain(
        &self,
        from: &ServerName,
        room_id: &RoomId,
        rules: &RoomVersionRules,
        start: &[OwnedEventId],
    ) -> Result<()> {
        let mut missing: Vec<OwnedEventId> = Vec::new();
        for id in start {
            if self.rooms.event_short(id)?.is_none() && !missing.contains(id) {
                missing.push(id.clone());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        // Fetch breadth-first, then store deepest-first so each one's auth events exist.
        let mut fetched: Vec<Checked> = Vec::new();
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        while let Some(id) = missing.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if fetched.len() >= MAX_FETCHES {
                return Err(bad_event("auth chain too long to fetch"));
            }
            let v = self.fetch_event(from, rules, &id).await?;
            if v.pdu.room_id.as_deref().is_some_and(|r| r != room_id) {
                return Err(bad_event(format!("auth event {id} is in another room")));
            }
            for a in &v.pdu.auth_events {
                if self.rooms.event_short(a)?.is_none() && !seen.contains(a) {
                    missing.push(a.clone());
                }
            }
            fetched.push(v);
        }
        self.store_checked_outliers(rules, fetched).await
    }

    /// Stores events as outliers in auth order, each checked against its own auth events
    /// (failures are kept, marked rejected, so they are never fetched again or used as state).
    async fn store_checked_outliers(
        &self,
        rules: &RoomVersionRules,
        mut events: Vec<Checked>,
    ) -> Result<()> {
        events.sort_by_key(|v| v.pdu.depth);
        let mut pending: Vec<Checked> = events;
        // Checked here, written together at the end: one synced write per event made the state
        // of a 1,000-member room a thousand fsyncs. Later events' auth checks find them here.
        let mut checked: HashMap<OwnedEventId, Pdu> = HashMap::new();
        let mut out = Vec::with_capacity(pending.len());
        // Repeat while progress is made: an event's auth events may come later in depth order
        // when depths lie.
        while !pending.is_empty() {
            let mut next = Vec::new();
            let mut progressed = false;
            for v in pending {
                let ready = v.pdu.auth_events.iter().all(|a| {
                    checked.contains_key(a) || self.rooms.event_short(a).ok().flatten().is_some()
                });
                if !ready {
                    next.push(v);
                    continue;
                }
                progressed = true;
                let flags = match self
                    .rooms
                    .authorise_by_auth_events_with(rules, &v.pdu, &|id| checked.get(id).cloned())
                {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::info!(event_id = %v.event_id, "auth event rejected: {e}");
                        REJECTED
                    }
                };
                checked.insert(v.event_id.clone(), v.pdu);
                out.push((v.event_id, v.object, flags));
            }
            if !progressed {
                // What was checked is still good, and spares fetching it again.
                self.rooms.store_outliers(out).await?;
                return Err(bad_event("events with auth events nobody sent"));
            }
            pending = next;
        }
        self.rooms.store_outliers(out).await
    }

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
        let Some(acl) = self
            .rooms
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
    async fn place(
        &self,
        origin: &ServerName,
        room: ShortId,
        rules: &RoomVersionRules,
        v: Checked,
        relay: Relay,
        depth: u32,
    ) -> std::result::Result<ShortId, Refused> {
        if let Some(s) = self.rooms.event_short(&v.event_id)? {
            if self.rooms.event_meta(s)?.is_some() {
                return Ok(s);
            }
            if self.rooms.event_flags(s)? & REJECTED != 0 {
                return Err(Refused::Rejected("rejected before".into()));
            }
        }
        let meta = self
            .rooms
            .meta(room)?
            .ok_or_else(|| dropped("unknown room"))?;
        if v.pdu.room_id.as_deref() != Some(&*meta.room_id) {
            return Err(dropped("event for another room"));
        }
        // 1. Its auth events, then the auth rules against them.
        self.fetch_auth_chain(origin, &meta.room_id, rules, &v.pdu.auth_events)
            .await?;
        if let Err(e) = self.rooms.authorise_by_auth_events(rules, &v.pdu) {
            self.rooms
                .store_outliers(vec![(v.event_id.clone(), v.object.clone(), REJECTED)])
                .await?;
            return Err(Refused::Rejected(e.to_string()));
        }
        // 2. Its prev events, then the state before it.
        let state_before = self.state_before(origin, room, rules, &v, depth).await?;
        if let Err(e) = self.rooms.authorise_against(rules, &v.pdu, &state_before) {
            self.rooms
                .store_outliers(vec![(v.event_id.clone(), v.object.clone(), REJECTED)])
                .await?;
            return Err(Refused::Rejected(e.to_string()));
        }
        // 3. Soft failure: allowed by its own history but not by the room as it is now.
        let current = self.rooms.current_state_map(room)?;
        let flags = match self.rooms.authorise_against(rules, &v.pdu, &current) {
            Ok(()) => 0,
            Err(e) => {
                tracing::info!(event_id = %v.event_id, "soft-failed: {e}");
                SOFT_FAILED
            }
        };
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

    /// The state before an event: from its prev events, fetching missing ones with
    /// get_missing_events, or the state at them with /state_ids when the gap is too wide.
    async fn state_before(
        &self,
        origin: &ServerName,
        room: ShortId,
        rules: &RoomVersionRules,
        v: &Checked,
        depth: u32,
    ) -> std::result::Result<StateMap, Refused> {
        let missing: Vec<OwnedEventId> = v
            .pdu
            .prev_events
            .iter()
            .filter(|p| !self.rooms.has_in_dag(p).unwrap_or(false))
            .cloned()
            .collect();
        if !missing.is_empty() && depth == 0 {
            self.fill_gap(origin, room, rules, v).await;
        }
        let mut states = Vec::new();
        for prev in &v.pdu.prev_events {
            let short = self.rooms.event_short(prev)?;
            let after = match short {
                Some(s) => self.rooms.state_after(s)?,
                None => None,
            };
            let after = match after {
                Some(a) => a,
                None => Arc::new(self.state_at_remote(origin, room, rules, prev).await?),
            };
            states.push(after);
        }
        Ok(self.rooms.resolve(rules, &states)?)
    }

    /// Asks `origin` for the events between what we have and `v`, and places them oldest first.
    /// One get_missing_events answers at most `limit` events (Synapse's catch-up after a peer's
    /// downtime sends only the newest event, however many came before), so ask again from the
    /// oldest ones still missing their prev events, up to MAX_FETCHES in all; a gap left beyond
    /// that is bridged by /state_ids in `state_before`.
    async fn fill_gap(
        &self,
        origin: &ServerName,
        room: ShortId,
        rules: &RoomVersionRules,
        v: &Checked,
    ) {
        let Ok(Some(meta)) = self.rooms.meta(room) else {
            return;
        };
        let mut events: Vec<Checked> = Vec::new();
        let mut seen: HashSet<OwnedEventId> = HashSet::from([v.event_id.clone()]);
        let mut latest = vec![v.event_id.clone()];
        while !latest.is_empty() && events.len() < MAX_FETCHES {
            let body = json!({
                "earliest_events": meta.extremities,
                "latest_events": latest,
                "limit": MISSING_EVENTS_LIMIT,
                "min_depth": 0,
            });
            let answer = match self
                .federation
                .request_json(
                    origin,
                    http::Method::POST,
                    &format!(
                        "/_matrix/federation/v1/get_missing_events/{}",
                        urlencode(meta.room_id.as_str())
                    ),
                    Some(&body),
                )
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    tracing::info!(%origin, "get_missing_events failed: {e}");
                    break;
                }
            };
            let before = events.len();
            for e in answer
                .get("events")
                .and_then(JsonValue::as_array)
                .into_iter()
                .flatten()
            {
                let Ok(object) = to_canonical(e.clone()) else {
                    continue;
                };
                match self.verify(rules, object).await {
                    Ok(ev) if seen.insert(ev.event_id.clone()) => events.push(ev),
                    Ok(_) => {}
                    Err(e) => tracing::info!(%origin, "missing event dropped: {e}"),
                }
            }
            if events.len() == before {
                break;
            }
            // The new events whose prev events are neither here nor among those fetched.
            latest = events[before..]
                .iter()
                .filter(|e| {
                    e.pdu
                        .prev_events
                        .iter()
                        .any(|p| !seen.contains(p) && !self.rooms.has_in_dag(p).unwrap_or(false))
                })
                .map(|e| e.event_id.clone())
                .collect();
        }
        events.sort_by_key(|e| e.pdu.depth);
        for ev in events {
            let id = ev.event_id.clone();
            if let Err(e) = Box::pin(self.place(origin, room, rules, ev, Relay::No, 1)).await {
                tracing::info!(%origin, event_id = %id, "missing event not placed: {e}");
            }
        }
    }

    /// The state after an event we do not have, from `origin`'s /state_ids at it.
    async fn state_at_remote(
        &self,
        origin: &ServerName,
        room: ShortId,
        rules: &RoomVersionRules,
        event_id: &EventId,
    ) -> std::result::Result<StateMap, Refused> {
        let room_id = self.rooms.room_id_of(room)?;
        let answer = self
            .federation
            .get_json(
                origin,
                &format!(
                    "/_matrix/federation/v1/state_ids/{}?event_id={}",
                    urlencode(room_id.as_str()),
                    urlencode(event_id.as_str())
                ),
            )
            .await?;
        let ids = |field: &str| -> Vec<OwnedEventId> {
            answer
                .get(field)
                .and_then(JsonValue::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.as_str())
                .filter_map(|i| OwnedEventId::try_from(i).ok())
                .collect()
        };
        let pdu_ids = ids("pdu_ids");
        let mut wanted = ids("auth_chain_ids");
        wanted.extend(pdu_ids.iter().cloned());
        wanted.push(event_id.to_owned());
        // Fetch the missing ones and store them with their auth chains as outliers.
        let mut fetched = Vec::new();
        for id in &wanted {
            if self.rooms.event_short(id)?.is_some() {
                continue;
            }
            if fetched.len() >= MAX_FETCHES {
                return Err(dropped("state too large to fetch event by event"));
            }
            fetched.push(self.fetch_event(origin, rules, id).await?);
        }
        let auth: Vec<OwnedEventId> = fetched
            .iter()
            .flat_map(|v| v.pdu.auth_events.clone())
            .collect();
        self.fetch_auth_chain(origin, &room_id, rules, &auth)
            .await?;
        self.store_checked_outliers(rules, fetched).await?;
        let before = self.rooms.state_from_events(&pdu_ids)?;
        let short = self
            .rooms
            .event_short(event_id)?
            .ok_or_else(|| dropped("prev event not stored"))?;
        let pdu = self
            .rooms
            .pdu(short)?
            .ok_or_else(|| dropped("prev event not stored"))?;
        Ok(self.rooms.state_with(&before, &pdu, short)?)
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

    async fn join_via(
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
        let version = template
            .get("room_version")
            .and_then(JsonValue::as_str)
            .map(RoomVersionId::try_from)
            .transpose()
            .map_err(|e| bad_event(format!("room version: {e}")))?
            .unwrap_or(RoomVersionId::V1);
        let rules = rooms::Service::version_rules(&version)?;
        let mut event = template
            .get("event")
            .cloned()
            .filter(JsonValue::is_object)
            .ok_or_else(|| bad_event(format!("{server} sent no join template")))?;
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
        event["origin_server_ts"] = crate::service::now_ms().into();
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
                        && self.rooms.event_short(&v.event_id)?.is_none()
                    {
                        verified.push(v);
                    }
                }
                Err(e) => tracing::info!(%server, "state event from send_join dropped: {e}"),
            }
        }
        self.store_checked_outliers(&rules, verified).await?;
        let mut state = self.rooms.state_from_events(&state_ids)?;
        // Rejected events never become state.
        let mut keep = StateMap::new();
        for (k, e) in state {
            if self.rooms.event_flags(e)? & REJECTED == 0 {
                keep.insert(k, e);
            }
        }
        state = keep;
        let create_short = self
            .rooms
            .state_key_short(&StateEventType::RoomCreate, "")?
            .and_then(|k| state.get(&k).copied())
            .ok_or_else(|| bad_event("the room's state has no create event"))?;
        let create_event = self.rooms.event_id_of(create_short)?;
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
    async fn history_at_join(
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
            if self.rooms.event_short(&c.event_id)?.is_some() {
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
        let (room, meta) = self.rooms.known_room(room_id)?;
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
        if self.rooms.event_flags(short)? != 0 {
            return Err(Error::forbidden(
                "The event is not allowed by the room's current state",
            ));
        }
        Ok((short, stored))
    }
}

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
        let (room, meta) = self.rooms.known_room(room_id)?;
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
    fn stripped_state(&self, room: ShortId, inviter: &UserId) -> Result<Vec<JsonValue>> {
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
                    .current_state_event(room, &StateEventType::from(kind), sk)?
            {
                if let Some(json) = self.rooms.event_json(short)? {
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
            Error::new(
                http::StatusCode::BAD_REQUEST,
                ErrorCode::IncompatibleRoomVersion {
                    room_version: version.to_string(),
                },
                format!("Room version {version} is not supported"),
            )
        })?;
        if let Some(room) = self.rooms.room_short(room_id)? {
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
        let resident = match self.rooms.room_short(room_id)? {
            Some(r) => self.rooms.meta(r)?.is_some() && self.rooms.has_local_members(r)?,
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

    async fn leave_via(
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
    async fn make_and_send(
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
        let version = template
            .get("room_version")
            .and_then(JsonValue::as_str)
            .map(RoomVersionId::try_from)
            .transpose()
            .map_err(|e| bad_event(format!("room version: {e}")))?
            .unwrap_or(RoomVersionId::V1);
        let rules = rooms::Service::version_rules(&version)?;
        let mut event = template
            .get("event")
            .cloned()
            .filter(JsonValue::is_object)
            .ok_or_else(|| bad_event(format!("{server} sent no {membership} template")))?;
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
        event["origin_server_ts"] = crate::service::now_ms().into();
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
