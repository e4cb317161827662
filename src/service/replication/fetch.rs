//! Step two: what a received event refers to and we lack: its auth chain (stored as
//! outliers once checked), missing prev events (get_missing_events, oldest first), or the state
//! at a gap too wide to fill (/state_ids); and the state before the event from its prev events.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{room_version_rules::RoomVersionRules, EventId, OwnedEventId, RoomId, ServerName};
use serde_json::{json, Value as JsonValue};

use super::{
    bad_event, dropped, to_canonical, urlencode, Checked, Refused, Service, MAX_FETCHES,
    MISSING_EVENTS_LIMIT,
};
use crate::{
    error::Result,
    service::rooms::{
        pdu::Pdu,
        remote::{Relay, REJECTED},
        state::StateMap,
    },
    storage::ShortId,
};

impl Service {
    /// Fetches one event from a server (GET /event) and verifies it.
    pub(super) async fn fetch_event(
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
    pub(super) async fn fetch_auth_chain(
        &self,
        from: &ServerName,
        room_id: &RoomId,
        rules: &RoomVersionRules,
        start: &[OwnedEventId],
    ) -> Result<()> {
        let mut missing: Vec<OwnedEventId> = Vec::new();
        for id in start {
            if self.rooms.events.event_short(id)?.is_none() && !missing.contains(id) {
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
                if self.rooms.events.event_short(a)?.is_none() && !seen.contains(a) {
                    missing.push(a.clone());
                }
            }
            fetched.push(v);
        }
        self.store_checked_outliers(rules, fetched).await
    }

    /// Stores events as outliers in auth order, each checked against its own auth events
    /// (failures are kept, marked rejected, so they are never fetched again or used as state).
    pub(super) async fn store_checked_outliers(
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
                    checked.contains_key(a)
                        || self.rooms.events.event_short(a).ok().flatten().is_some()
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

    /// The state before an event: from its prev events, fetching missing ones with
    /// get_missing_events, or the state at them with /state_ids when the gap is too wide.
    pub(super) async fn state_before(
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
            .filter(|p| !self.rooms.events.has_in_dag(p).unwrap_or(false))
            .cloned()
            .collect();
        if !missing.is_empty() && depth == 0 {
            self.fill_gap(origin, room, rules, v).await;
        }
        let mut states = Vec::new();
        for prev in &v.pdu.prev_events {
            let short = self.rooms.events.event_short(prev)?;
            let after = match short {
                Some(s) => self.rooms.state.state_after(s)?,
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
    pub(super) async fn fill_gap(
        &self,
        origin: &ServerName,
        room: ShortId,
        rules: &RoomVersionRules,
        v: &Checked,
    ) {
        let Ok(Some(meta)) = self.rooms.state.meta(room) else {
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
                    e.pdu.prev_events.iter().any(|p| {
                        !seen.contains(p) && !self.rooms.events.has_in_dag(p).unwrap_or(false)
                    })
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
    pub(super) async fn state_at_remote(
        &self,
        origin: &ServerName,
        room: ShortId,
        rules: &RoomVersionRules,
        event_id: &EventId,
    ) -> std::result::Result<StateMap, Refused> {
        let room_id = self.rooms.events.room_id_of(room)?;
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
            if self.rooms.events.event_short(id)?.is_some() {
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
        let before = self.rooms.state.state_from_events(&pdu_ids)?;
        let short = self
            .rooms
            .events
            .event_short(event_id)?
            .ok_or_else(|| dropped("prev event not stored"))?;
        let pdu = self
            .rooms
            .events
            .pdu(short)?
            .ok_or_else(|| dropped("prev event not stored"))?;
        Ok(self.rooms.state.state_with(&before, &pdu, short)?)
    }
}
