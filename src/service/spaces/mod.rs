//! Spaces: the rooms a space holds (`/hierarchy`, client and federation) and what is shown of a
//! room to someone who may not be in it (its summary). A space's children are its current
//! `m.space.child` state events with a `via`; a room known here is summarised from its current
//! state, one that is not is asked of a server its parent names (federation `/hierarchy`).
//! Only rooms the requester may see are shown: world-readable, public or knockable ones, rooms
//! they are in or invited to, and restricted ones whose allowed rooms they are in.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{
    events::{room::member::MembershipState, StateEventType},
    OwnedRoomId, OwnedServerName, RoomId, ServerName, UserId,
};
use serde_json::{json, Map, Value as JsonValue};

use super::Services;
use crate::{
    error::{Error, Result},
    storage::ShortId,
};

/// Paginated walks kept for a `from` token; beyond this the oldest go.
const MAX_SESSIONS: usize = 10_000;
/// How long a walk's next page stays available.
const SESSION_TTL: Duration = Duration::from_secs(600);
/// Rooms one page may hold at most, and when the client does not say.
pub const MAX_LIMIT: usize = 50;
/// How deep a walk goes when the client does not say, and at most.
const MAX_DEPTH: usize = 10;

/// One room as `/hierarchy` shows it: its summary fields and its children's stripped events.
#[derive(Clone, Debug)]
pub struct Summary {
    pub json: Map<String, JsonValue>,
    pub children: Vec<Child>,
    /// The rooms its join rule lets in, when restricted.
    pub allowed: Vec<OwnedRoomId>,
}

#[derive(Clone, Debug)]
pub struct Child {
    pub room_id: OwnedRoomId,
    pub via: Vec<OwnedServerName>,
    pub suggested: bool,
    order: Option<String>,
    ts: u64,
}

/// A walk in progress: what is left to visit, and what was seen.
struct Session {
    user: ShortId,
    root: OwnedRoomId,
    suggested_only: bool,
    max_depth: usize,
    queue: VecDeque<(OwnedRoomId, usize, Vec<OwnedServerName>)>,
    seen: HashSet<OwnedRoomId>,
    /// Summaries other servers gave for rooms not visited yet.
    remote: HashMap<OwnedRoomId, Summary>,
    made: Instant,
}

#[derive(Default)]
pub struct Service {
    sessions: Mutex<HashMap<String, Session>>,
}

/// A page of a walk.
pub struct Page {
    pub rooms: Vec<JsonValue>,
    pub next_batch: Option<String>,
}

/// A room's summary from its current state here; `None` when this server holds no state of it.
pub fn local_summary(services: &Services, room_id: &RoomId) -> Result<Option<Summary>> {
    let Some(room) = services.rooms.events.room_short(room_id)? else {
        return Ok(None);
    };
    let Some(meta) = services.rooms.state.meta(room)? else {
        return Ok(None);
    };
    let state = &services.rooms.state;
    let content = |kind: StateEventType| -> Result<Option<JsonValue>> {
        Ok(state
            .current_state_pdu(room, &kind, "")?
            .map(|p| p.content_value()))
    };
    let Some(create) = content(StateEventType::RoomCreate)? else {
        return Ok(None);
    };
    let str_of = |v: Option<JsonValue>, field: &str| -> Option<String> {
        v.and_then(|c| c.get(field).and_then(JsonValue::as_str).map(str::to_owned))
            .filter(|s| !s.is_empty())
    };
    let mut json = Map::new();
    json.insert("room_id".into(), room_id.as_str().into());
    let joined = services
        .rooms
        .membership
        .members(room)?
        .iter()
        .filter(|(_, m)| m.membership() == MembershipState::Join)
        .count();
    json.insert("num_joined_members".into(), joined.into());
    if let Some(name) = str_of(content(StateEventType::RoomName)?, "name") {
        json.insert("name".into(), name.into());
    }
    if let Some(topic) = str_of(content(StateEventType::RoomTopic)?, "topic") {
        json.insert("topic".into(), topic.into());
    }
    if let Some(url) = str_of(content(StateEventType::RoomAvatar)?, "url") {
        json.insert("avatar_url".into(), url.into());
    }
    if let Some(alias) = str_of(content(StateEventType::RoomCanonicalAlias)?, "alias") {
        json.insert("canonical_alias".into(), alias.into());
    }
    if let Some(kind) = create.get("type").and_then(JsonValue::as_str) {
        json.insert("room_type".into(), kind.into());
    }
    if let Some(alg) = str_of(content(StateEventType::RoomEncryption)?, "algorithm") {
        json.insert("encryption".into(), alg.into());
    }
    json.insert("room_version".into(), meta.version.as_str().into());
    let join_rules = content(StateEventType::RoomJoinRules)?;
    let rule = str_of(join_rules.clone(), "join_rule").unwrap_or_else(|| "invite".into());
    let allowed: Vec<OwnedRoomId> = join_rules
        .as_ref()
        .and_then(|c| c.get("allow"))
        .and_then(JsonValue::as_array)
        .into_iter()
        .flatten()
        .filter(|a| a.get("type").and_then(JsonValue::as_str) == Some("m.room_membership"))
        .filter_map(|a| a.get("room_id").and_then(JsonValue::as_str))
        .filter_map(|r| RoomId::parse(r).ok())
        .collect();
    if matches!(rule.as_str(), "restricted" | "knock_restricted") {
        json.insert(
            "allowed_room_ids".into(),
            allowed
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .into(),
        );
    }
    json.insert("join_rule".into(), rule.into());
    let visibility = str_of(
        content(StateEventType::RoomHistoryVisibility)?,
        "history_visibility",
    );
    json.insert(
        "world_readable".into(),
        (visibility.as_deref() == Some("world_readable")).into(),
    );
    let guests = str_of(content(StateEventType::RoomGuestAccess)?, "guest_access");
    json.insert(
        "guest_can_join".into(),
        (guests.as_deref() == Some("can_join")).into(),
    );
    // The children: every current m.space.child with a via, as stripped state.
    let mut children = Vec::new();
    let mut children_state = Vec::new();
    for (state_key, short) in state.current_state_of_type(room, &StateEventType::SpaceChild)? {
        let Some(pdu) = services.rooms.events.pdu(short)? else {
            continue;
        };
        let content = pdu.content_value();
        let via: Vec<OwnedServerName> = content
            .get("via")
            .and_then(JsonValue::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().and_then(|s| ServerName::parse(s).ok()))
            .collect();
        let Ok(child) = RoomId::parse(state_key.as_str()) else {
            continue;
        };
        if via.is_empty() {
            continue;
        }
        let ts = u64::from(pdu.origin_server_ts.get());
        children_state.push(json!({
            "type": "m.space.child",
            "state_key": state_key,
            "content": content,
            "sender": pdu.sender,
            "origin_server_ts": ts,
        }));
        children.push(Child {
            room_id: child,
            via,
            suggested: content.get("suggested").and_then(JsonValue::as_bool) == Some(true),
            order: content
                .get("order")
                .and_then(JsonValue::as_str)
                .filter(|o| o.len() <= 50 && o.chars().all(|c| (' '..='~').contains(&c)))
                .map(str::to_owned),
            ts,
        });
    }
    sort_children(&mut children);
    json.insert("children_state".into(), children_state.into());
    Ok(Some(Summary {
        json,
        children,
        allowed,
    }))
}

/// The spec's order: by `order` (rooms without one last), then age, then room ID.
fn sort_children(children: &mut [Child]) {
    children.sort_by(|a, b| {
        let by_order = match (&a.order, &b.order) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_order
            .then(a.ts.cmp(&b.ts))
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
}

/// A summary another server gave (federation `/hierarchy`), read back into ours.
fn remote_summary(json: &JsonValue) -> Option<Summary> {
    let map = json.as_object()?.clone();
    RoomId::parse(map.get("room_id")?.as_str()?).ok()?;
    let mut children = Vec::new();
    for e in map
        .get("children_state")
        .and_then(JsonValue::as_array)
        .into_iter()
        .flatten()
    {
        let Some(room_id) = e
            .get("state_key")
            .and_then(JsonValue::as_str)
            .and_then(|s| RoomId::parse(s).ok())
        else {
            continue;
        };
        let content = e.get("content").cloned().unwrap_or_default();
        let via: Vec<OwnedServerName> = content
            .get("via")
            .and_then(JsonValue::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().and_then(|s| ServerName::parse(s).ok()))
            .collect();
        if via.is_empty() {
            continue;
        }
        children.push(Child {
            room_id,
            via,
            suggested: content.get("suggested").and_then(JsonValue::as_bool) == Some(true),
            order: content
                .get("order")
                .and_then(JsonValue::as_str)
                .map(str::to_owned),
            ts: e
                .get("origin_server_ts")
                .and_then(JsonValue::as_u64)
                .unwrap_or_default(),
        });
    }
    sort_children(&mut children);
    let allowed = map
        .get("allowed_room_ids")
        .and_then(JsonValue::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().and_then(|s| RoomId::parse(s).ok()))
        .collect();
    Some(Summary {
        json: map,
        children,
        allowed,
    })
}

/// Who asks: a local user, or another server.
#[derive(Clone, Copy)]
pub enum Requester<'a> {
    User(ShortId, &'a UserId),
    Server(&'a ServerName),
    /// Someone without an access token (a room summary's preview).
    Anonymous,
}

/// Whether the requester may see the room: it is world-readable, public or knockable, they are
/// in it or invited, or it is restricted to rooms they are in.
pub fn may_see(services: &Services, who: Requester<'_>, summary: &Summary) -> Result<bool> {
    // Summaries leave a public join rule out (the spec's default).
    let rule = Some(
        summary
            .json
            .get("join_rule")
            .and_then(JsonValue::as_str)
            .unwrap_or("public"),
    );
    if summary.json.get("world_readable") == Some(&JsonValue::Bool(true))
        || matches!(rule, Some("public" | "knock"))
    {
        return Ok(true);
    }
    let room_id = summary
        .json
        .get("room_id")
        .and_then(JsonValue::as_str)
        .and_then(|r| RoomId::parse(r).ok());
    let is_in = |room_id: &RoomId, invited_too: bool| -> Result<bool> {
        let Some(room) = services.rooms.events.room_short(room_id)? else {
            return Ok(false);
        };
        match who {
            Requester::User(user, _) => Ok(services
                .rooms
                .membership
                .membership(user, room)?
                .is_some_and(|m| {
                    let m = m.membership();
                    m == MembershipState::Join || (invited_too && m == MembershipState::Invite)
                })),
            Requester::Server(server) => Ok(services
                .rooms
                .membership
                .members(room)?
                .iter()
                .filter(|(_, m)| m.membership() == MembershipState::Join)
                .any(|(u, _)| {
                    services
                        .rooms
                        .events
                        .user_id_of(*u)
                        .is_ok_and(|id| id.server_name() == server)
                })),
            Requester::Anonymous => Ok(false),
        }
    };
    if let Some(room_id) = &room_id {
        if is_in(room_id, true)? {
            return Ok(true);
        }
    }
    if matches!(rule, Some("restricted" | "knock_restricted")) {
        for allowed in &summary.allowed {
            if is_in(allowed, false)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The summary of a room for someone (fields only, no children), or 403/404.
pub async fn summary_for(
    services: &Services,
    who: Requester<'_>,
    room_id: &RoomId,
    via: &[OwnedServerName],
) -> Result<Map<String, JsonValue>> {
    let summary = match local_summary(services, room_id)? {
        Some(s) => s,
        None => fetch(services, room_id, via, false)
            .await?
            .map(|(s, _)| s)
            .ok_or_else(|| Error::not_found("Unknown room"))?,
    };
    if !may_see(services, who, &summary)? {
        return Err(Error::forbidden("You may not see this room"));
    }
    Ok(summary.json)
}

/// Asks the servers in `via` for a room's hierarchy; the room and its children's summaries.
async fn fetch(
    services: &Services,
    room_id: &RoomId,
    via: &[OwnedServerName],
    suggested_only: bool,
) -> Result<Option<(Summary, Vec<Summary>)>> {
    if !services.config.federation.enabled {
        return Ok(None);
    }
    for server in via {
        if server == &services.config.server_name {
            continue;
        }
        let path = format!(
            "/_matrix/federation/v1/hierarchy/{}?suggested_only={suggested_only}",
            super::replication::urlencode(room_id.as_str())
        );
        match services.federation.get_json(server, &path).await {
            Ok(answer) => {
                let Some(room) = answer.get("room").and_then(remote_summary) else {
                    continue;
                };
                if room.json.get("room_id").and_then(JsonValue::as_str) != Some(room_id.as_str()) {
                    continue;
                }
                let children = answer
                    .get("children")
                    .and_then(JsonValue::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(remote_summary)
                    .collect();
                return Ok(Some((room, children)));
            }
            Err(e) => tracing::debug!(%server, %room_id, "hierarchy not available: {e}"),
        }
    }
    Ok(None)
}

impl Service {
    /// One page of a walk of the space `root` for a local user (client `/hierarchy`).
    #[allow(clippy::too_many_arguments)]
    pub async fn hierarchy(
        &self,
        services: &Services,
        user: ShortId,
        user_id: &UserId,
        root: &RoomId,
        from: Option<&str>,
        limit: Option<usize>,
        max_depth: Option<usize>,
        suggested_only: bool,
    ) -> Result<Page> {
        let limit = limit.unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT);
        let max_depth = max_depth.unwrap_or(MAX_DEPTH).min(MAX_DEPTH);
        let who = Requester::User(user, user_id);
        let mut session = match from {
            Some(token) => {
                let session = self
                    .sessions
                    .lock()
                    .remove(token)
                    .ok_or_else(|| Error::invalid_param("Unknown or expired `from` token"))?;
                if session.user != user
                    || session.root != root
                    || session.suggested_only != suggested_only
                    || session.max_depth != max_depth
                    || session.made.elapsed() > SESSION_TTL
                {
                    return Err(Error::invalid_param(
                        "The `from` token belongs to another walk",
                    ));
                }
                session
            }
            None => {
                // The root must be one the user may see.
                let Some(summary) = local_summary(services, root)? else {
                    return Err(Error::forbidden("You may not see this room"));
                };
                if !may_see(services, who, &summary)? {
                    return Err(Error::forbidden("You may not see this room"));
                }
                Session {
                    user,
                    root: root.to_owned(),
                    suggested_only,
                    max_depth,
                    queue: VecDeque::from([(root.to_owned(), 0, Vec::new())]),
                    seen: HashSet::new(),
                    remote: HashMap::from([(root.to_owned(), summary)]),
                    made: Instant::now(),
                }
            }
        };
        let mut rooms = Vec::new();
        while rooms.len() < limit {
            let Some((room_id, depth, via)) = session.queue.pop_front() else {
                break;
            };
            if !session.seen.insert(room_id.clone()) {
                continue;
            }
            let summary = match session.remote.remove(&room_id) {
                Some(s) => Some(s),
                None => match local_summary(services, &room_id)? {
                    Some(s) => Some(s),
                    None => match fetch(services, &room_id, &via, suggested_only).await? {
                        Some((s, children)) => {
                            // A child space's summary lists no children of its own: it is
                            // asked for in turn; plain rooms are taken as given.
                            for c in children.into_iter().filter(|c| {
                                c.json.get("room_type").and_then(JsonValue::as_str)
                                    != Some("m.space")
                            }) {
                                if let Some(id) = c
                                    .json
                                    .get("room_id")
                                    .and_then(JsonValue::as_str)
                                    .and_then(|r| RoomId::parse(r).ok())
                                {
                                    session.remote.entry(id).or_insert(c);
                                }
                            }
                            Some(s)
                        }
                        None => None,
                    },
                },
            };
            let Some(summary) = summary else {
                continue;
            };
            if !may_see(services, who, &summary)? {
                continue;
            }
            if depth < max_depth {
                for child in &summary.children {
                    if suggested_only && !child.suggested {
                        continue;
                    }
                    if !session.seen.contains(&child.room_id) {
                        session.queue.push_back((
                            child.room_id.clone(),
                            depth + 1,
                            child.via.clone(),
                        ));
                    }
                }
            }
            let mut json = summary.json;
            if !json.contains_key("children_state") {
                json.insert("children_state".into(), JsonValue::Array(Vec::new()));
            }
            rooms.push(JsonValue::Object(json));
        }
        let next_batch = if session.queue.is_empty() {
            None
        } else {
            let token = crate::util::random_string(16);
            session.made = Instant::now();
            let mut sessions = self.sessions.lock();
            sessions.retain(|_, s| s.made.elapsed() < SESSION_TTL);
            if sessions.len() >= MAX_SESSIONS {
                if let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.made)
                    .map(|(k, _)| k.clone())
                {
                    sessions.remove(&oldest);
                }
            }
            sessions.insert(token.clone(), session);
            Some(token)
        };
        Ok(Page { rooms, next_batch })
    }
}

/// The federation `/hierarchy` answer for a room here: the room, its children known here that
/// the asking server may see, and the children it may not (or that are not known here).
pub fn federation_hierarchy(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    suggested_only: bool,
) -> Result<JsonValue> {
    let who = Requester::Server(origin);
    let summary =
        local_summary(services, room_id)?.ok_or_else(|| Error::not_found("Unknown room"))?;
    if !may_see(services, who, &summary)? {
        return Err(Error::not_found("Unknown room"));
    }
    let mut children = Vec::new();
    let mut inaccessible = Vec::new();
    for child in &summary.children {
        if suggested_only && !child.suggested {
            continue;
        }
        match local_summary(services, &child.room_id)? {
            Some(s) if may_see(services, who, &s)? => {
                let mut json = s.json;
                json.remove("children_state");
                children.push(JsonValue::Object(json));
            }
            Some(_) => inaccessible.push(child.room_id.as_str().to_owned()),
            None => {}
        }
    }
    Ok(json!({
        "room": JsonValue::Object(summary.json),
        "children": children,
        "inaccessible_children": inaccessible,
    }))
}
