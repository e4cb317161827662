//! `/search`: full-text search of the rooms a user is or was in (see `service::search`), with
//! what the spec lets a client ask for around the results: context events and their senders'
//! profiles, rooms' current state, groups by room or sender.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::{extract::State, Router};
use ruma::{
    api::client::search::search_events::v3::{
        self as search_events, EventContextResult, GroupingKey, OrderBy, ResultCategories,
        ResultGroup, ResultGroupMap, ResultRoomEvents, SearchKeys, SearchResult, UserProfile,
    },
    events::StateEventType,
    OwnedMxcUri, OwnedRoomId, OwnedUserId, UInt,
};
use serde_json::Value as JsonValue;

use super::room::{client_json, make_token, to_raw};
use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
    service::{
        search::{Cursor, Hit, Key, SearchQuery},
        Services,
    },
    storage::ShortId,
};

/// The most context events on either side of a result.
const MAX_CONTEXT: usize = 20;

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(search)
}

async fn search(
    State(services): State<AppState>,
    req: Ruma<search_events::Request>,
) -> Result<search_events::Response> {
    let session = req.session()?.clone();
    let body = req.body;
    let cursor = body
        .next_batch
        .as_deref()
        .map(|t| Cursor::parse(t).ok_or_else(|| Error::invalid_param("Unknown next_batch")))
        .transpose()?;
    let Some(criteria) = body.search_categories.room_events else {
        // room_events is the only category; a request without it asks for nothing.
        return Ok(search_events::Response::new(ResultCategories::new()));
    };
    let order = match &criteria.order_by {
        None | Some(OrderBy::Rank) => crate::service::search::OrderBy::Rank,
        Some(OrderBy::Recent) => crate::service::search::OrderBy::Recent,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown order_by {:?}: rank or recent",
                other.as_str()
            )))
        }
    };
    let keys = match &criteria.keys {
        None => Key::ALL.to_vec(),
        Some(keys) => keys
            .iter()
            .map(|k| match k {
                SearchKeys::ContentBody => Ok(Key::Body),
                SearchKeys::ContentName => Ok(Key::Name),
                SearchKeys::ContentTopic => Ok(Key::Topic),
                other => Err(Error::invalid_param(format!(
                    "Unknown search key {:?}: content.body, content.name or content.topic",
                    other.as_str()
                ))),
            })
            .collect::<Result<Vec<_>>>()?,
    };

    let blocking = services.clone();
    tokio::task::spawn_blocking(move || {
        let services = blocking;
        let found = services.search.search(&SearchQuery {
            user: &session.user_id,
            search_term: &criteria.search_term,
            keys: &keys,
            filter: &criteria.filter,
            order,
            cursor,
        })?;

        let mut events = ResultRoomEvents::new();
        events.count = Some(UInt::try_from(found.count).unwrap_or(UInt::MAX));
        events.highlights = found.highlights;
        events.next_batch = found.next.map(Cursor::token);

        // Context: the spec's default (none asked) is ruma's default value.
        let context = &criteria.event_context;
        let want_context = !context.is_default();
        let limit = |n: UInt| usize::try_from(u64::from(n)).unwrap_or(MAX_CONTEXT);
        let (before_n, after_n) = (
            limit(context.before_limit).min(MAX_CONTEXT),
            limit(context.after_limit).min(MAX_CONTEXT),
        );
        let mut viewers = HashMap::new();
        for hit in &found.hits {
            let mut result = SearchResult::new();
            result.rank = hit.rank;
            result.result = Some(to_raw(&hit.json)?);
            if want_context {
                result.context = event_context(
                    &services,
                    &session.user_id,
                    &mut viewers,
                    hit,
                    before_n,
                    after_n,
                    context.include_profile,
                )?;
            }
            events.results.push(result);
        }

        if criteria.include_state == Some(true) {
            events.state = room_states(&services, &session.user_id, &found.hits)?;
        }

        for grouping in &criteria.groupings.group_by {
            match grouping.key {
                Some(GroupingKey::RoomId) => {
                    let mut groups: BTreeMap<OwnedRoomId, ResultGroup> = BTreeMap::new();
                    for hit in &found.hits {
                        group(&mut groups, hit.room_id.clone(), hit)?;
                    }
                    events.groups.insert(ResultGroupMap::RoomId(groups));
                }
                Some(GroupingKey::Sender) => {
                    let mut groups: BTreeMap<OwnedUserId, ResultGroup> = BTreeMap::new();
                    for hit in &found.hits {
                        let Some(sender) = hit
                            .json
                            .get("sender")
                            .and_then(JsonValue::as_str)
                            .and_then(|s| OwnedUserId::try_from(s).ok())
                        else {
                            continue;
                        };
                        group(&mut groups, sender, hit)?;
                    }
                    events.groups.insert(ResultGroupMap::Sender(groups));
                }
                _ => {
                    return Err(Error::invalid_param(
                        "Unknown grouping key: room_id or sender",
                    ))
                }
            }
        }

        let mut categories = ResultCategories::new();
        categories.room_events = events;
        Ok(search_events::Response::new(categories))
    })
    .await
    .map_err(Error::internal)?
}

/// Adds a hit to its group; groups are ordered by their best (first) result.
fn group<K: Ord>(groups: &mut BTreeMap<K, ResultGroup>, key: K, hit: &Hit) -> Result<()> {
    let order = UInt::try_from(groups.len()).unwrap_or(UInt::MAX);
    let entry = groups.entry(key).or_insert_with(|| {
        let mut g = ResultGroup::new();
        g.order = Some(order);
        g
    });
    let event_id = hit
        .json
        .get("event_id")
        .and_then(JsonValue::as_str)
        .ok_or_else(|| Error::internal("a search result without event_id"))?;
    entry
        .results
        .push(ruma::OwnedEventId::try_from(event_id).map_err(Error::internal)?);
    Ok(())
}

/// The events around a result that the searcher may see, with the tokens to page on from them
/// and, if asked, the profiles of their senders as the room showed them at the result.
fn event_context(
    services: &Services,
    user: &ruma::UserId,
    viewers: &mut HashMap<ShortId, crate::service::rooms::history::Viewer>,
    hit: &Hit,
    before_n: usize,
    after_n: usize,
    include_profile: bool,
) -> Result<EventContextResult> {
    let timeline = &services.rooms.timeline;
    let before = timeline.timeline(hit.room, hit.event.saturating_sub(1), false, before_n)?;
    let after = timeline.timeline(hit.room, hit.event, true, after_n)?;
    let viewer = match viewers.entry(hit.room) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(timeline.viewer(user, hit.room)?),
    };
    let mut senders = BTreeSet::new();
    let mut render = |positions: &[ShortId]| -> Result<Vec<_>> {
        let mut out = Vec::new();
        for p in positions {
            if !timeline.can_see(viewer, *p)? {
                continue;
            }
            let Some(json) = client_json(services, *p, &hit.room_id, user)? else {
                continue;
            };
            if let Some(sender) = json.get("sender").and_then(JsonValue::as_str) {
                senders.insert(sender.to_owned());
            }
            out.push(to_raw(&json)?);
        }
        Ok(out)
    };
    let mut context = EventContextResult::new();
    context.events_before = render(&before)?;
    context.events_after = render(&after)?;
    context.start = Some(make_token(
        before
            .last()
            .map(|p| p.saturating_sub(1))
            .unwrap_or(hit.event.saturating_sub(1)),
    ));
    context.end = Some(make_token(after.last().copied().unwrap_or(hit.event)));
    if include_profile {
        if let Some(sender) = hit.json.get("sender").and_then(JsonValue::as_str) {
            senders.insert(sender.to_owned());
        }
        let state = services.rooms.state.state_after(hit.event)?;
        for sender in senders {
            let Ok(user_id) = OwnedUserId::try_from(sender.as_str()) else {
                continue;
            };
            let Some(key) = services
                .rooms
                .state
                .state_key_short(&StateEventType::RoomMember, &sender)?
            else {
                continue;
            };
            let Some(member) = state.as_ref().and_then(|s| s.get(&key)).copied() else {
                continue;
            };
            let Some(pdu) = services.rooms.events.pdu(member)? else {
                continue;
            };
            let content = pdu.content_value();
            let mut profile = UserProfile::new();
            profile.displayname = content
                .get("displayname")
                .and_then(JsonValue::as_str)
                .map(str::to_owned);
            profile.avatar_url = content
                .get("avatar_url")
                .and_then(JsonValue::as_str)
                .filter(|u| u.starts_with("mxc://"))
                .map(OwnedMxcUri::from);
            context.profile_info.insert(user_id, profile);
        }
    }
    Ok(context)
}

/// The current state of the rooms of the results that the searcher is in.
fn room_states(
    services: &Services,
    user: &ruma::UserId,
    hits: &[Hit],
) -> Result<BTreeMap<OwnedRoomId, Vec<ruma::serde::Raw<ruma::events::AnyStateEvent>>>> {
    let mut out = BTreeMap::new();
    for hit in hits {
        if out.contains_key(&hit.room_id) || !services.rooms.membership.is_joined(user, hit.room)? {
            continue;
        }
        let mut events = Vec::new();
        for (_, event) in services.rooms.state.current_state(hit.room)? {
            if let Some(json) = client_json(services, event, &hit.room_id, user)? {
                events.push(to_raw(&json)?);
            }
        }
        out.insert(hit.room_id.clone(), events);
    }
    Ok(out)
}
