//! The public room directory: our published rooms as one page of summaries (for clients and
//! for other servers), and another server's directory read over federation when a client names
//! one. Publishing a room is `rooms`; this module only reads.

use ruma::{
    directory::{Filter, PublicRoomsChunk, PublicRoomsChunkInit, RoomNetwork, RoomTypeFilter},
    events::{room::member::MembershipState, StateEventType},
    room::JoinRuleKind,
    ServerName, UInt,
};
use serde_json::json;

use super::Services;
use crate::{
    error::{Error, Result},
    storage::ShortId,
};

/// What a directory request asks for.
pub struct PageQuery<'a> {
    pub limit: Option<UInt>,
    pub since: Option<&'a str>,
    pub search: Option<&'a str>,
    pub room_types: Option<&'a [RoomTypeFilter]>,
    /// The filtered form of the request (POST /publicRooms), which is what a remote server is
    /// then asked too.
    pub filtered: bool,
    /// The Matrix directory, a bridged network's (`third_party_instance_id`), or all of them.
    pub network: RoomNetwork,
}

impl<'a> PageQuery<'a> {
    /// A page of every public room (GET /publicRooms).
    pub fn unfiltered(limit: Option<UInt>, since: Option<&'a str>) -> Self {
        Self {
            limit,
            since,
            search: None,
            room_types: None,
            filtered: false,
            network: RoomNetwork::Matrix,
        }
    }

    /// A page of the public rooms matching `filter` (POST /publicRooms).
    pub fn filtered(limit: Option<UInt>, since: Option<&'a str>, filter: &'a Filter) -> Self {
        Self {
            limit,
            since,
            search: filter.generic_search_term.as_deref(),
            room_types: Some(&filter.room_types),
            filtered: true,
            network: RoomNetwork::Matrix,
        }
    }

    /// The same, of another network's directory, or of all.
    pub fn on(mut self, network: &RoomNetwork) -> Self {
        self.network = network.clone();
        self
    }
}

/// One page of a directory.
pub struct DirectoryPage {
    pub chunk: Vec<PublicRoomsChunk>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub total_room_count_estimate: Option<UInt>,
}

/// The page a client asked for: of `server`'s directory when it names another server, else ours.
pub async fn page(
    services: &Services,
    server: Option<&ServerName>,
    query: PageQuery<'_>,
) -> Result<DirectoryPage> {
    match remote_page(services, server, &query).await? {
        Some(page) => Ok(page),
        None => local_page(services, query),
    }
}

fn state_str(
    services: &Services,
    room: ShortId,
    kind: StateEventType,
    field: &str,
) -> Option<String> {
    services
        .rooms
        .state
        .current_state_pdu(room, &kind, "")
        .ok()
        .flatten()
        .and_then(|p| p.content_field(field))
        .and_then(|v| v.as_str().map(str::to_owned))
}

fn chunk(services: &Services, room: ShortId) -> Result<PublicRoomsChunk> {
    let room_id = services.rooms.events.room_id_of(room)?;
    let joined = services
        .rooms
        .membership
        .members(room)?
        .into_iter()
        .filter(|(_, m)| m.membership() == MembershipState::Join)
        .count();
    let world_readable = state_str(
        services,
        room,
        StateEventType::RoomHistoryVisibility,
        "history_visibility",
    )
    .as_deref()
        == Some("world_readable");
    let guest_can_join = state_str(
        services,
        room,
        StateEventType::RoomGuestAccess,
        "guest_access",
    )
    .as_deref()
        == Some("can_join");
    let mut chunk: PublicRoomsChunk = PublicRoomsChunkInit {
        num_joined_members: UInt::try_from(joined as u64).unwrap_or_default(),
        room_id,
        world_readable,
        guest_can_join,
    }
    .into();
    chunk.name = state_str(services, room, StateEventType::RoomName, "name");
    chunk.topic = state_str(services, room, StateEventType::RoomTopic, "topic");
    chunk.canonical_alias = state_str(services, room, StateEventType::RoomCanonicalAlias, "alias")
        .and_then(|a| a.try_into().ok());
    chunk.avatar_url = state_str(services, room, StateEventType::RoomAvatar, "url").map(Into::into);
    chunk.join_rule =
        match state_str(services, room, StateEventType::RoomJoinRules, "join_rule").as_deref() {
            Some("public") => JoinRuleKind::Public,
            Some("knock") => JoinRuleKind::Knock,
            Some("restricted") => JoinRuleKind::Restricted,
            Some("knock_restricted") => JoinRuleKind::KnockRestricted,
            _ => JoinRuleKind::Invite,
        };
    chunk.room_type = services
        .rooms
        .state
        .current_state_pdu(room, &StateEventType::RoomCreate, "")?
        .and_then(|p| p.content_field("type"))
        .and_then(|v| v.as_str().map(Into::into));
    Ok(chunk)
}

/// Our directory, largest rooms first, filtered by a search term and room types, paginated by
/// offset tokens (`o<n>`).
pub fn local_page(services: &Services, query: PageQuery<'_>) -> Result<DirectoryPage> {
    let PageQuery {
        limit,
        since,
        search,
        room_types,
        network,
        ..
    } = query;
    let offset = match since {
        Some(t) => t
            .strip_prefix('o')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::invalid_param("Invalid directory pagination token"))?,
        None => 0,
    };
    let search = search.map(str::to_lowercase);
    let mut rooms = Vec::new();
    let aliases = &services.rooms.aliases;
    let listed = match &network {
        RoomNetwork::ThirdParty(instance) => aliases.network_rooms(Some(instance))?,
        RoomNetwork::All => {
            let mut all = aliases.public_rooms()?;
            all.extend(aliases.network_rooms(None)?);
            all.sort_unstable();
            all.dedup();
            all
        }
        _ => aliases.public_rooms()?,
    };
    for room in listed {
        let c = chunk(services, room)?;
        if let Some(term) = &search {
            let hay = [
                c.name.as_deref(),
                c.topic.as_deref(),
                c.canonical_alias.as_ref().map(|a| a.as_str()),
            ]
            .into_iter()
            .flatten()
            .any(|s| s.to_lowercase().contains(term.as_str()));
            if !hay {
                continue;
            }
        }
        if let Some(types) = room_types.filter(|t| !t.is_empty()) {
            let ok = types.iter().any(|t| match t {
                RoomTypeFilter::Default => c.room_type.is_none(),
                other => c.room_type.as_ref().map(|rt| rt.as_str()) == other.as_str(),
            });
            if !ok {
                continue;
            }
        }
        rooms.push(c);
    }
    rooms.sort_by(|a, b| {
        b.num_joined_members
            .cmp(&a.num_joined_members)
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
    let total = rooms.len();
    let limit = limit
        .map(|l| u64::from(l) as usize)
        .unwrap_or(100)
        .clamp(1, 500);
    let page: Vec<_> = rooms.into_iter().skip(offset).take(limit).collect();
    Ok(DirectoryPage {
        next_batch: (offset + page.len() < total).then(|| format!("o{}", offset + page.len())),
        prev_batch: (offset > 0).then(|| format!("o{}", offset.saturating_sub(limit))),
        total_room_count_estimate: UInt::try_from(total as u64).ok(),
        chunk: page,
    })
}

/// The object without its null fields, at any depth.
fn without_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k, without_nulls(v)))
            .collect(),
        other => other,
    }
}

/// Another server's directory, when the client names one: its /publicRooms over federation.
async fn remote_page(
    services: &Services,
    server: Option<&ServerName>,
    query: &PageQuery<'_>,
) -> Result<Option<DirectoryPage>> {
    let Some(server) = server.filter(|s| *s != services.config.server_name) else {
        return Ok(None);
    };
    let body = if query.filtered {
        let mut body = json!({
            "limit": query.limit,
            "since": query.since,
            "filter": { "generic_search_term": query.search },
        });
        match &query.network {
            RoomNetwork::All => body["include_all_networks"] = true.into(),
            RoomNetwork::ThirdParty(i) => body["third_party_instance_id"] = i.as_str().into(),
            _ => {}
        }
        body
    } else {
        json!({ "limit": query.limit, "since": query.since })
    };
    if !services.config.federation.enabled {
        return Err(Error::not_found(
            "Federation is off, so other servers' directories cannot be read",
        ));
    }
    // Absent, not null: Synapse fails with a 500 on `"limit": null`.
    let body = without_nulls(body);
    let answer = services
        .federation
        .request_json(
            server,
            http::Method::POST,
            "/_matrix/federation/v1/publicRooms",
            Some(&body),
        )
        .await?;
    let bad = |e: String| Error::internal(format!("{server}'s directory: {e}"));
    let mut chunk: Vec<PublicRoomsChunk> =
        serde_json::from_value(answer.get("chunk").cloned().unwrap_or_default())
            .map_err(|e| bad(e.to_string()))?;
    chunk.truncate(500);
    let text = |f: &str| answer.get(f).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(Some(DirectoryPage {
        chunk,
        next_batch: text("next_batch"),
        prev_batch: text("prev_batch"),
        total_room_count_estimate: answer
            .get("total_room_count_estimate")
            .and_then(|v| v.as_u64())
            .and_then(|n| UInt::try_from(n).ok()),
    }))
}
