//! Membership: join, invite, leave, forget, kick, ban, unban, and the member lists.

use axum::{extract::State, Router};
use ruma::{
    api::client::knock::knock_room,
    api::client::membership::{
        ban_user, forget_room, get_member_events, invite_user, join_room_by_id,
        join_room_by_id_or_alias, joined_members, joined_rooms, kick_user, leave_room, unban_user,
    },
    events::{room::member::MembershipState, StateEventType},
    OwnedRoomId, OwnedServerName, RoomId, UserId,
};
use serde_json::{json, Value as JsonValue};

use super::room::{client_raw, joined_room, parse_token};
use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
    service::{
        join_rules,
        rooms::{history::Access, NewEvent},
        Services,
    },
    storage::ShortId,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(join_by_id)
        .ruma(join_by_id_or_alias)
        .ruma(invite)
        .ruma(leave)
        .ruma(forget)
        .ruma(kick)
        .ruma(ban)
        .ruma(unban)
        .ruma(joined_rooms_list)
        .ruma(members)
        .ruma(joined_members_list)
        .ruma(knock)
}

/// Sends `membership` for `target` into a room this server knows, from `sender`.
async fn set_membership(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    membership: MembershipState,
    reason: Option<&str>,
    with_profile: bool,
) -> Result<()> {
    set_membership_with(
        services,
        room_id,
        sender,
        target,
        json!({ "membership": membership.as_str() }),
        reason,
        with_profile,
    )
    .await
}

async fn set_membership_with(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    mut content: JsonValue,
    reason: Option<&str>,
    with_profile: bool,
) -> Result<()> {
    if let Some(r) = reason {
        content["reason"] = r.into();
    }
    if with_profile {
        if let Some(user) = services.users.short_id(target)? {
            let profile = services.profiles.all(user)?;
            for f in ["displayname", "avatar_url"] {
                if let Some(v) = profile.get(f) {
                    content[f] = v.clone();
                }
            }
        }
    }
    services
        .rooms
        .send(
            room_id,
            sender,
            NewEvent::state(StateEventType::RoomMember, target.as_str(), content),
            None,
        )
        .await?;
    Ok(())
}

async fn join(
    services: &Services,
    user_id: &UserId,
    room_id: &RoomId,
    reason: Option<&str>,
    via: &[OwnedServerName],
) -> Result<OwnedRoomId> {
    let room = services
        .rooms
        .events
        .room_short(room_id)?
        .filter(|r| services.rooms.state.meta(*r).ok().flatten().is_some());
    // A room none of our users is in lives elsewhere: join it through a server that is in it.
    let resident = match room {
        Some(r) => services.rooms.membership.has_local_members(r)?,
        None => false,
    };
    if !resident {
        if !services.config.federation.enabled {
            return Err(Error::not_found(
                "Unknown room (federation is off, so rooms on other servers cannot be joined)",
            ));
        }
        let mut servers: Vec<OwnedServerName> = via.to_vec();
        // Whoever invited us, then everyone else in the room.
        if let Some(r) = services.rooms.events.room_short(room_id)? {
            if let Some(m) = services.rooms.membership.membership_of_full(user_id, r)? {
                if let Some(p) = services.rooms.events.pdu(m.event)? {
                    servers.push(p.sender.server_name().to_owned());
                }
            }
        }
        if let Some(r) = room {
            servers.extend(services.rooms.membership.remote_servers(r)?);
        }
        if let Some(s) = room_id.server_name() {
            servers.push(s.to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        servers.retain(|s| seen.insert(s.clone()));
        // The join names the user as a local join does: their profile's name and avatar.
        let mut extra = json!({});
        if let Some(r) = reason {
            extra["reason"] = r.into();
        }
        if let Some(user) = services.users.short_id(user_id)? {
            let profile = services.profiles.all(user)?;
            for f in ["displayname", "avatar_url"] {
                if let Some(v) = profile.get(f) {
                    extra[f] = v.clone();
                }
            }
        }
        let extra = extra
            .as_object()
            .is_some_and(|o| !o.is_empty())
            .then_some(extra);
        services
            .replication
            .join_remote(user_id, room_id, &servers, extra)
            .await?;
        return Ok(room_id.to_owned());
    }
    let Some(room) = room else {
        return Err(Error::not_found("Unknown room"));
    };
    let current = services.rooms.membership.membership_of(user_id, room)?;
    if current == Some(MembershipState::Join) {
        return Ok(room_id.to_owned());
    }
    let mut content = json!({ "membership": "join" });
    if current != Some(MembershipState::Invite) {
        if let Some(via) = join_rules::restricted_join_authoriser(services, user_id, room)? {
            content["join_authorised_via_users_server"] = via.as_str().into();
        }
    }
    set_membership_with(services, room_id, user_id, user_id, content, reason, true).await?;
    Ok(room_id.to_owned())
}

async fn knock(
    State(services): State<AppState>,
    req: Ruma<knock_room::v3::Request>,
) -> Result<knock_room::v3::Response> {
    let session = req.session()?;
    let (room_id, mut via) =
        resolve_room_remote(&services, req.body.room_id_or_alias.as_str()).await?;
    let resident = match services.rooms.events.room_short(&room_id)? {
        Some(r) => {
            services.rooms.state.meta(r)?.is_some()
                && services.rooms.membership.has_local_members(r)?
        }
        None => false,
    };
    // A room none of our users is in: knock through a server that is in it.
    if !resident && services.config.federation.enabled {
        via.extend(req.body.via.iter().cloned());
        if let Some(s) = room_id.server_name() {
            via.push(s.to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        via.retain(|s| seen.insert(s.clone()));
        services
            .replication
            .knock_remote(&session.user_id, &room_id, &via, req.body.reason.as_deref())
            .await?;
        return Ok(knock_room::v3::Response::new(room_id));
    }
    let Some(room) = services.rooms.events.room_short(&room_id)? else {
        return Err(Error::not_found("Unknown room"));
    };
    match services
        .rooms
        .membership
        .membership_of(&session.user_id, room)?
    {
        Some(MembershipState::Join) => {
            return Err(Error::forbidden("You are already in this room"))
        }
        Some(MembershipState::Invite) => {
            return Err(Error::forbidden("You are already invited to this room"))
        }
        Some(MembershipState::Ban) => {
            return Err(Error::forbidden("You are banned from this room"))
        }
        _ => {}
    }
    set_membership(
        &services,
        &room_id,
        &session.user_id,
        &session.user_id,
        MembershipState::Knock,
        req.body.reason.as_deref(),
        true,
    )
    .await?;
    Ok(knock_room::v3::Response::new(room_id))
}

/// A room ID, or the room a local alias points at.
async fn resolve_room(services: &Services, room_id_or_alias: &str) -> Result<OwnedRoomId> {
    if let Ok(id) = OwnedRoomId::try_from(room_id_or_alias) {
        return Ok(id);
    }
    let alias = ruma::RoomAliasId::parse(room_id_or_alias)
        .map_err(|e| Error::invalid_param(format!("Invalid room alias: {e}")))?;
    Ok(services
        .appservice
        .resolve_alias(&alias)
        .await?
        .ok_or_else(|| Error::not_found("Unknown room alias"))?
        .room_id)
}

/// A room ID, or an alias resolved here or by the alias's server over federation (which also
/// names servers to join through).
pub(super) async fn resolve_room_remote(
    services: &Services,
    room_id_or_alias: &str,
) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
    if let Ok(id) = OwnedRoomId::try_from(room_id_or_alias) {
        return Ok((id, Vec::new()));
    }
    let alias = ruma::RoomAliasId::parse(room_id_or_alias)
        .map_err(|e| Error::invalid_param(format!("Invalid room alias: {e}")))?;
    if alias.server_name() == services.config.server_name || !services.config.federation.enabled {
        return Ok((resolve_room(services, room_id_or_alias).await?, Vec::new()));
    }
    services.replication.resolve_remote_alias(&alias).await
}

async fn join_by_id(
    State(services): State<AppState>,
    req: Ruma<join_room_by_id::v3::Request>,
) -> Result<join_room_by_id::v3::Response> {
    let session = req.session()?;
    let room_id = join(
        &services,
        &session.user_id,
        &req.body.room_id,
        req.body.reason.as_deref(),
        &[],
    )
    .await?;
    Ok(join_room_by_id::v3::Response::new(room_id))
}

async fn join_by_id_or_alias(
    State(services): State<AppState>,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let session = req.session()?;
    let (room_id, mut via) =
        resolve_room_remote(&services, req.body.room_id_or_alias.as_str()).await?;
    via.extend(req.body.via.iter().cloned());
    let room_id = join(
        &services,
        &session.user_id,
        &room_id,
        req.body.reason.as_deref(),
        &via,
    )
    .await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

async fn invite(
    State(services): State<AppState>,
    req: Ruma<invite_user::v3::Request>,
) -> Result<invite_user::v3::Response> {
    use ruma::api::client::membership::invite_user::v3::InvitationRecipient;
    let session = req.session()?;
    joined_room(&services, &session.user_id, &req.body.room_id)?;
    let InvitationRecipient::UserId(invitee) = &req.body.recipient else {
        return Err(Error::forbidden("Third-party invites are not supported"));
    };
    if services.users.is_local(&invitee.user_id) {
        // A bridged user not created yet is asked of its appservice first.
        services.appservice.user_exists(&invitee.user_id).await?;
    } else {
        if !services.config.federation.enabled {
            return Err(Error::forbidden(
                "Federation is off, so users of other servers cannot be invited",
            ));
        }
        services
            .replication
            .invite_remote(
                &req.body.room_id,
                &session.user_id,
                &invitee.user_id,
                invitee.reason.as_deref(),
                false,
            )
            .await?;
        return Ok(invite_user::v3::Response::new());
    }
    set_membership(
        &services,
        &req.body.room_id,
        &session.user_id,
        &invitee.user_id,
        MembershipState::Invite,
        invitee.reason.as_deref(),
        false,
    )
    .await?;
    Ok(invite_user::v3::Response::new())
}

async fn leave(
    State(services): State<AppState>,
    req: Ruma<leave_room::v3::Request>,
) -> Result<leave_room::v3::Response> {
    let session = req.session()?;
    let room = services
        .rooms
        .events
        .room_short(&req.body.room_id)?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    match services
        .rooms
        .membership
        .membership_of(&session.user_id, room)?
    {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {}
        _ => return Ok(leave_room::v3::Response::new()),
    }
    // An invite to a room we are not in is rejected through the inviting server.
    if services.rooms.state.meta(room)?.is_none()
        || !services.rooms.membership.has_local_members(room)?
    {
        if let Some(m) = services
            .rooms
            .membership
            .membership_of_full(&session.user_id, room)?
        {
            if m.membership() == MembershipState::Invite {
                if let Some(p) = services.rooms.events.pdu(m.event)? {
                    let via = [p.sender.server_name().to_owned()];
                    services
                        .replication
                        .leave_remote(&session.user_id, &req.body.room_id, &via)
                        .await?;
                    return Ok(leave_room::v3::Response::new());
                }
            }
        }
    }
    set_membership(
        &services,
        &req.body.room_id,
        &session.user_id,
        &session.user_id,
        MembershipState::Leave,
        req.body.reason.as_deref(),
        false,
    )
    .await?;
    Ok(leave_room::v3::Response::new())
}

async fn forget(
    State(services): State<AppState>,
    req: Ruma<forget_room::v3::Request>,
) -> Result<forget_room::v3::Response> {
    let session = req.session()?;
    let room = services
        .rooms
        .events
        .room_short(&req.body.room_id)?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    match services
        .rooms
        .membership
        .membership_of(&session.user_id, room)?
    {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
            Err(Error::unknown("Leave the room before forgetting it"))
        }
        None => Err(Error::not_found("You were never in this room")),
        _ => {
            services.rooms.membership.forget(session.user, room).await?;
            Ok(forget_room::v3::Response::new())
        }
    }
}

async fn kick(
    State(services): State<AppState>,
    req: Ruma<kick_user::v3::Request>,
) -> Result<kick_user::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    let room = joined_room(&services, &session.user_id, &b.room_id)?;
    match services.rooms.membership.membership_of(&b.user_id, room)? {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {}
        _ => return Err(Error::forbidden("The user is not in the room")),
    }
    set_membership(
        &services,
        &b.room_id,
        &session.user_id,
        &b.user_id,
        MembershipState::Leave,
        b.reason.as_deref(),
        false,
    )
    .await?;
    Ok(kick_user::v3::Response::new())
}

async fn ban(
    State(services): State<AppState>,
    req: Ruma<ban_user::v3::Request>,
) -> Result<ban_user::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    joined_room(&services, &session.user_id, &b.room_id)?;
    set_membership(
        &services,
        &b.room_id,
        &session.user_id,
        &b.user_id,
        MembershipState::Ban,
        b.reason.as_deref(),
        false,
    )
    .await?;
    Ok(ban_user::v3::Response::new())
}

async fn unban(
    State(services): State<AppState>,
    req: Ruma<unban_user::v3::Request>,
) -> Result<unban_user::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    let room = joined_room(&services, &session.user_id, &b.room_id)?;
    if services.rooms.membership.membership_of(&b.user_id, room)? != Some(MembershipState::Ban) {
        return Err(Error::forbidden("The user is not banned"));
    }
    set_membership(
        &services,
        &b.room_id,
        &session.user_id,
        &b.user_id,
        MembershipState::Leave,
        b.reason.as_deref(),
        false,
    )
    .await?;
    Ok(unban_user::v3::Response::new())
}

async fn joined_rooms_list(
    State(services): State<AppState>,
    req: Ruma<joined_rooms::v3::Request>,
) -> Result<joined_rooms::v3::Response> {
    let session = req.session()?;
    let rooms = services
        .rooms
        .membership
        .rooms_of(session.user, &MembershipState::Join)?
        .into_iter()
        .map(|r| services.rooms.events.room_id_of(r))
        .collect::<Result<Vec<_>>>()?;
    Ok(joined_rooms::v3::Response::new(rooms))
}

async fn members(
    State(services): State<AppState>,
    req: Ruma<get_member_events::v3::Request>,
) -> Result<get_member_events::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    // The member events of the state the user may see: at `at` (a pagination token) when
    // given, else the current state, or the state when they left.
    let (room, access) = services
        .rooms
        .timeline
        .room_access(&session.user_id, &b.room_id)?;
    let mut upto = match access {
        Access::Former(event) => Some(event),
        Access::Joined | Access::Public => None,
    };
    if let Some(at) = b.at.as_deref() {
        let at = parse_token(at)?;
        upto = Some(upto.map_or(at, |u| u.min(at)));
    }
    let member_events: Vec<ShortId> = match upto {
        None => services
            .rooms
            .membership
            .members(room)?
            .into_iter()
            .map(|(_, m)| m.event)
            .collect(),
        Some(pos) => {
            let Some(last) = services
                .rooms
                .timeline
                .timeline(room, pos, false, 1)?
                .first()
                .copied()
            else {
                return Ok(get_member_events::v3::Response::new(Vec::new()));
            };
            let meta = services
                .rooms
                .events
                .event_meta(last)?
                .ok_or_else(|| Error::internal("event without metadata"))?;
            let mut events = Vec::new();
            for (key, event) in services.rooms.state.state_at(meta.state_after)?.iter() {
                if services.rooms.state.state_key_of(*key)?.0 == StateEventType::RoomMember {
                    events.push(*event);
                }
            }
            events
        }
    };
    let mut chunk = Vec::new();
    for event in member_events {
        let Some(pdu) = services.rooms.events.pdu(event)? else {
            continue;
        };
        let membership = pdu
            .content_value()
            .get("membership")
            .and_then(JsonValue::as_str)
            .map(MembershipState::from)
            .unwrap_or(MembershipState::Leave);
        if b.membership
            .as_ref()
            .is_some_and(|want| *want != membership)
        {
            continue;
        }
        if b.not_membership
            .as_ref()
            .is_some_and(|not| *not == membership)
        {
            continue;
        }
        if let Some(raw) = client_raw(&services, event, &b.room_id)? {
            chunk.push(raw);
        }
    }
    Ok(get_member_events::v3::Response::new(chunk))
}

async fn joined_members_list(
    State(services): State<AppState>,
    req: Ruma<joined_members::v3::Request>,
) -> Result<joined_members::v3::Response> {
    use ruma::api::client::membership::joined_members::v3::RoomMember;
    let session = req.session()?;
    let room = joined_room(&services, &session.user_id, &req.body.room_id)?;
    let mut joined = std::collections::BTreeMap::new();
    for (user, m) in services.rooms.membership.members(room)? {
        if m.membership() != MembershipState::Join {
            continue;
        }
        let user_id = services.rooms.events.user_id_of(user)?;
        let content = services
            .rooms
            .events
            .pdu(m.event)?
            .map(|p| p.content_value())
            .unwrap_or(JsonValue::Null);
        let mut member = RoomMember::new();
        member.display_name = content["displayname"].as_str().map(str::to_owned);
        member.avatar_url = content["avatar_url"].as_str().map(ruma::OwnedMxcUri::from);
        joined.insert(user_id, member);
    }
    Ok(joined_members::v3::Response::new(joined))
}
