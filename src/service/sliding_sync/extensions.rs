//! Sliding sync extensions: to-device messages, end-to-end encryption (device lists, key counts),
//! account data, receipts and typing, each over the rooms it is asked for.

use std::collections::{BTreeMap, BTreeSet};

use ruma::{
    api::client::sync::sync_events::v5::{self, request::ExtensionRoomConfig},
    events::room::member::MembershipState,
    OwnedRoomId,
};
use serde_json::{json, Value as JsonValue};

use super::{ConnState, Request};
use crate::{
    error::{Error, Result},
    service::{
        account_data,
        sync::{key_counts, raw, receipt_event, Since},
        Services,
    },
    storage::ShortId,
};

/// Most to-device messages per response (the client comes back for the rest at once).
const TO_DEVICE_LIMIT: usize = 100;

/// The rooms extensions may speak of: those in the lists' ranges (with the lists they are in)
/// and the subscriptions; and which of them this response sends whole.
pub(super) struct Scope {
    pub window: Vec<(ShortId, OwnedRoomId, BTreeSet<String>, bool)>,
    pub fresh: BTreeSet<ShortId>,
}

impl Scope {
    /// The rooms an extension's `lists` and `rooms` select (both default to everything).
    fn select(
        &self,
        lists: Option<&Vec<String>>,
        rooms: Option<&Vec<ExtensionRoomConfig>>,
    ) -> Vec<(ShortId, &OwnedRoomId)> {
        self.window
            .iter()
            .filter(|(_, room_id, in_lists, subscribed)| {
                let by_list = match lists {
                    None => !in_lists.is_empty(),
                    Some(names) => names
                        .iter()
                        .any(|n| n == "*" || in_lists.contains(n.as_str())),
                };
                let by_room = match rooms {
                    None => *subscribed,
                    Some(configs) => configs.iter().any(|c| match c {
                        ExtensionRoomConfig::AllSubscribed => *subscribed,
                        ExtensionRoomConfig::Room(id) => id == room_id,
                        _ => false,
                    }),
                };
                by_list || by_room
            })
            .map(|(room, id, _, _)| (*room, id))
            .collect()
    }
}

/// Fills the extensions asked for; returns whether any has something new (key counts alone do
/// not count: they are sent every time).
pub(super) async fn fill(
    services: &Services,
    req: &Request<'_>,
    base: &ConnState,
    upto: Since,
    scope: &Scope,
    response: &mut v5::Response,
) -> Result<bool> {
    let ext = &req.body.extensions;
    let since = base.since;
    // Where each room's extensions start: where they were last sent for it, or from nothing
    // for a room sent whole now or never in the window before.
    let seen = |room: ShortId| -> Option<Since> {
        base.extensions
            .get(&room)
            .copied()
            .filter(|_| !scope.fresh.contains(&room))
    };
    let mut has_data = false;
    if ext.to_device.enabled == Some(true) {
        has_data |= to_device(services, req, upto, response).await?;
    }
    if ext.e2ee.enabled == Some(true) {
        has_data |= e2ee(services, req, since, upto, response)?;
    }
    if ext.account_data.enabled == Some(true) {
        let rooms = scope.select(
            ext.account_data.lists.as_ref(),
            ext.account_data.rooms.as_ref(),
        );
        has_data |= account_data(services, req, since, upto, &rooms, &seen, response)?;
    }
    if ext.receipts.enabled == Some(true) {
        let rooms = scope.select(ext.receipts.lists.as_ref(), ext.receipts.rooms.as_ref());
        for (room, room_id) in rooms {
            let from = seen(room).map(|s| s.pos);
            if let Some(event) = receipt_event(services, req.user_id, room, from, upto.pos)? {
                response
                    .extensions
                    .receipts
                    .rooms
                    .insert(room_id.clone(), raw(&event)?);
                has_data = true;
            }
        }
    }
    if ext.typing.enabled == Some(true) {
        let rooms = scope.select(ext.typing.lists.as_ref(), ext.typing.rooms.as_ref());
        for (room, room_id) in rooms {
            let from = seen(room).map(|s| s.typing);
            let Some(users) = services.typing.changed_since(room, from) else {
                continue;
            };
            if users.is_empty() && from.is_none() {
                continue;
            }
            let event = json!({ "type": "m.typing", "content": { "user_ids": users } });
            response
                .extensions
                .typing
                .rooms
                .insert(room_id.clone(), raw(&event)?);
            has_data = true;
        }
    }
    Ok(has_data)
}

/// To-device messages: what the client's `since` acknowledges is deleted, then up to
/// [`TO_DEVICE_LIMIT`] newer ones are sent with the `next_batch` to acknowledge them by.
async fn to_device(
    services: &Services,
    req: &Request<'_>,
    upto: Since,
    response: &mut v5::Response,
) -> Result<bool> {
    let since = match req.body.extensions.to_device.since.as_deref() {
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| Error::invalid_param("to_device.since is not a token we gave"))?,
        ),
        None => None,
    };
    let limit = req
        .body
        .extensions
        .to_device
        .limit
        .map_or(TO_DEVICE_LIMIT, |l| {
            (u64::from(l) as usize).clamp(1, TO_DEVICE_LIMIT)
        });
    let mut out = v5::response::ToDevice::default();
    // A `since` ahead of us (a token from before a restore): nothing newer to give.
    if since.is_some_and(|s| s > upto.pos) {
        out.next_batch = since.unwrap_or_default().to_string();
        response.extensions.to_device = Some(out);
        return Ok(false);
    }
    let messages = services
        .keys
        .to_device_page(req.user, req.device_id, since, upto.pos, limit)
        .await?;
    out.next_batch = match messages.last() {
        Some((pos, _)) if messages.len() == limit => *pos,
        _ => upto.pos,
    }
    .to_string();
    let has_data = !messages.is_empty();
    for (_, m) in messages {
        out.events.push(raw(&json!({
            "sender": m.sender,
            "type": m.kind,
            "content": m.content,
        }))?);
    }
    response.extensions.to_device = Some(out);
    Ok(has_data)
}

/// Key counts always; device-list changes since the connection's snapshot (none on a fresh
/// connection: the client then queries every user it tracks anyway).
fn e2ee(
    services: &Services,
    req: &Request<'_>,
    since: Option<Since>,
    upto: Since,
    response: &mut v5::Response,
) -> Result<bool> {
    let e2ee = &mut response.extensions.e2ee;
    let (counts, fallback) = key_counts(services, req.user, req.device_id)?;
    e2ee.device_one_time_keys_count = counts;
    e2ee.device_unused_fallback_key_types = Some(fallback);
    let Some(since) = since else {
        return Ok(false);
    };
    let (changed, left) = device_list_changes(services, req, since.pos, upto.pos)?;
    let has_data = !changed.is_empty() || !left.is_empty();
    e2ee.device_lists.changed = changed;
    e2ee.device_lists.left = left;
    Ok(has_data)
}

/// Users whose devices the client should query again (changed keys, new members of shared
/// rooms, everyone in rooms the user joined) and users it no longer shares a room with, over
/// (since, upto].
#[allow(clippy::type_complexity)]
fn device_list_changes(
    services: &Services,
    req: &Request<'_>,
    since: u64,
    upto: u64,
) -> Result<(Vec<ruma::OwnedUserId>, Vec<ruma::OwnedUserId>)> {
    let rooms = &services.rooms;
    let my_rooms = services.keys.joined_rooms(req.user)?;
    let mut changed: BTreeSet<ShortId> = BTreeSet::new();
    let mut maybe_left: BTreeSet<ShortId> = BTreeSet::new();
    for user in services.keys.changed_users(since, upto)? {
        if services.keys.shares_with(req.user, &my_rooms, user)? {
            changed.insert(user);
        }
    }
    for (room, membership) in rooms.membership.memberships(req.user)? {
        if membership.event > upto {
            continue;
        }
        let mine_changed = membership.event > since;
        match membership.membership() {
            MembershipState::Join if mine_changed => {
                for (member, m) in rooms.membership.members(room)? {
                    if m.membership() == MembershipState::Join && member != req.user {
                        changed.insert(member);
                    }
                }
            }
            MembershipState::Join => {
                // Members who came or went since: only rooms with new events can have any.
                let latest = rooms.timeline.timeline(room, upto, false, 1)?;
                if latest.first().is_none_or(|l| *l <= since) {
                    continue;
                }
                for (member, m) in rooms.membership.members(room)? {
                    if m.event <= since || m.event > upto || member == req.user {
                        continue;
                    }
                    match m.membership() {
                        MembershipState::Join => {
                            changed.insert(member);
                        }
                        MembershipState::Leave | MembershipState::Ban => {
                            maybe_left.insert(member);
                        }
                        _ => {}
                    }
                }
            }
            MembershipState::Leave | MembershipState::Ban if mine_changed => {
                for (member, m) in rooms.membership.members(room)? {
                    if m.membership() == MembershipState::Join {
                        maybe_left.insert(member);
                    }
                }
            }
            _ => {}
        }
    }
    let mut left = Vec::new();
    for user in maybe_left {
        if user != req.user
            && !changed.contains(&user)
            && !services.keys.shares_with(req.user, &my_rooms, user)?
        {
            left.push(rooms.events.user_id_of(user)?);
        }
    }
    let changed = changed
        .into_iter()
        .map(|u| rooms.events.user_id_of(u))
        .collect::<Result<_>>()?;
    Ok((changed, left))
}

/// Global account data changed since the snapshot (all of it, and the push rules, on a fresh
/// connection), and the account data of the selected rooms changed since their extensions were
/// last sent (all of it for rooms sent whole or new to the window).
fn account_data(
    services: &Services,
    req: &Request<'_>,
    since: Option<Since>,
    upto: Since,
    rooms: &[(ShortId, &OwnedRoomId)],
    seen: &dyn Fn(ShortId) -> Option<Since>,
    response: &mut v5::Response,
) -> Result<bool> {
    let since = since.map(|s| s.pos);
    let out = &mut response.extensions.account_data;
    let mut has_data = false;
    let mut has_push_rules = false;
    for entry in services.account_data.changes(req.user, since, upto.pos)? {
        if entry.room == account_data::GLOBAL {
            has_push_rules |= entry.kind == "m.push_rules";
            out.global.push(raw(
                &json!({ "type": entry.kind, "content": entry.content }),
            )?);
            has_data = true;
        }
    }
    // Per room: from where its extensions were last sent, or everything. One read of the
    // changes since the oldest of those positions, one of all entries if any room needs them.
    let from: BTreeMap<ShortId, (Option<u64>, &OwnedRoomId)> = rooms
        .iter()
        .map(|(room, id)| (*room, (seen(*room).map(|s| s.pos), *id)))
        .collect();
    let oldest = from.values().filter_map(|(p, _)| *p).min();
    let whole = from.values().any(|(p, _)| p.is_none());
    let mut reads = Vec::new();
    if whole {
        reads.push(services.account_data.changes(req.user, None, upto.pos)?);
    }
    if let Some(oldest) = oldest {
        reads.push(
            services
                .account_data
                .changes(req.user, Some(oldest), upto.pos)?,
        );
    }
    let mut sent = BTreeSet::new();
    for entry in reads.into_iter().flatten() {
        let Some((room_from, room_id)) = from.get(&entry.room) else {
            continue;
        };
        if room_from.is_some_and(|p| entry.pos <= p)
            || !sent.insert((entry.room, entry.kind.clone()))
        {
            continue;
        }
        out.rooms.entry((*room_id).clone()).or_default().push(raw(
            &json!({ "type": entry.kind, "content": entry.content }),
        )?);
        has_data = true;
    }
    if since.is_none() && !has_push_rules {
        let ruleset = services.push.ruleset(req.user, req.user_id)?;
        let rules: JsonValue = json!({ "type": "m.push_rules", "content": { "global": *ruleset } });
        out.global.push(raw(&rules)?);
    }
    Ok(has_data)
}
