//! Membership: join, invite, leave, forget, kick, ban, unban, and the member lists.

use axum::{extract::State, Router};
use ruma::{
    api::client::membership::{
        ban_user, forget_room, get_member_events, invite_user, join_room_by_id,
        join_room_by_id_or_alias, joined_members, joined_rooms, kick_user, leave_room, unban_user,
    },
    events::{room::member::MembershipState, StateEventType},
    OwnedRoomId, RoomId, UserId,
};
use serde_json::{json, Value as JsonValue};

use super::room::{client_raw, joined_room};
use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
    service::{rooms::NewEvent, Services},
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
    let mut content = json!({ "membership": membership.as_str() });
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
) -> Result<OwnedRoomId> {
    // Joining a room this server is not in needs federation.
    let Some(room) = services.rooms.room_short(room_id)? else {
        return Err(Error::not_found(
            "Unknown room; joining rooms on other servers needs federation, which is not enabled yet",
        ));
    };
    if services.rooms.meta(room)?.is_none() {
        return Err(Error::not_found("Unknown room"));
    }
    if services.rooms.is_joined(user_id, room)? {
        return Ok(room_id.to_owned());
    }
    set_membership(
        services,
        room_id,
        user_id,
        user_id,
        MembershipState::Join,
        reason,
        true,
    )
    .await?;
    Ok(room_id.to_owned())
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
    )
    .await?;
    Ok(join_room_by_id::v3::Response::new(room_id))
}

async fn join_by_id_or_alias(
    State(services): State<AppState>,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let session = req.session()?;
    let room_id = match OwnedRoomId::try_from(req.body.room_id_or_alias.as_str()) {
        Ok(id) => id,
        Err(_) => {
            let alias = ruma::RoomAliasId::parse(req.body.room_id_or_alias.as_str())
                .map_err(|e| Error::invalid_param(format!("Invalid room alias: {e}")))?;
            services
                .rooms
                .resolve_alias(&alias)?
                .ok_or_else(|| Error::not_found("Unknown room alias"))?
                .room_id
        }
    };
    let room_id = join(
        &services,
        &session.user_id,
        &room_id,
        req.body.reason.as_deref(),
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
    if !services.users.is_local(&invitee.user_id) {
        return Err(Error::forbidden(
            "Inviting users of other servers needs federation, which is not enabled yet",
        ));
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
        .room_short(&req.body.room_id)?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    match services.rooms.membership_of(&session.user_id, room)? {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {}
        _ => return Ok(leave_room::v3::Response::new()),
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
        .room_short(&req.body.room_id)?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    match services.rooms.membership_of(&session.user_id, room)? {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
            Err(Error::bad_json("Leave the room before forgetting it")
                .with_code(crate::error::ErrorCode::Unknown))
        }
        None => Err(Error::not_found("You were never in this room")),
        _ => Ok(forget_room::v3::Response::new()),
    }
}

async fn kick(
    State(services): State<AppState>,
    req: Ruma<kick_user::v3::Request>,
) -> Result<kick_user::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    let room = joined_room(&services, &session.user_id, &b.room_id)?;
    match services.rooms.membership_of(&b.user_id, room)? {
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
    if services.rooms.membership_of(&b.user_id, room)? != Some(MembershipState::Ban) {
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
        .rooms_of(session.user, &MembershipState::Join)?
        .into_iter()
        .map(|r| services.rooms.room_id_of(r))
        .collect::<Result<Vec<_>>>()?;
    Ok(joined_rooms::v3::Response::new(rooms))
}

async fn members(
    State(services): State<AppState>,
    req: Ruma<get_member_events::v3::Request>,
) -> Result<get_member_events::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    let room = joined_room(&services, &session.user_id, &b.room_id)?;
    let mut chunk = Vec::new();
    for (_, m) in services.rooms.members(room)? {
        let membership = m.membership();
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
        if let Some(raw) = client_raw(&services, m.event, &b.room_id)? {
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
    for (user, m) in services.rooms.members(room)? {
        if m.membership() != MembershipState::Join {
            continue;
        }
        let user_id = services.rooms.user_id_of(user)?;
        let content = services
            .rooms
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
