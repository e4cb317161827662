//! The one function that writes events, whatever their origin: built here, received in a
//! transaction, part of a send_join answer, fetched as history or as an auth chain. Building
//! (local) or verifying (remote) and authorising come before it; what it writes goes into the
//! caller's batch, which the caller writes under its stream reservation and follows with the
//! wake-ups. Local and remote events thus get the same rows by construction: the canonical
//! event, its place (timeline, DAG only, or outlier), the room's current state and the
//! membership indexes that follow from it, relations, redactions, the sending device's
//! transaction ID, the federation outbox rows, and the rows of every [`super::Outbox`]
//! (notifications of local members, appservice queues).

use std::sync::Arc;

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    room_version_rules::RoomVersionRules,
    CanonicalJsonObject, OwnedEventId, OwnedServerName, RoomId, UserId,
};

use super::{
    membership_code, pdu::Pdu, remote::Relay, state::StateGroupId, state::StateMap, EventMeta,
    Membership, RoomMeta, Service,
};
use crate::{
    error::{Error, Result},
    service::stream::Reservation,
    storage::{Batch, IdKind, ShortId},
};

/// Where an event sits once written.
pub(super) enum Place {
    /// Content only, outside the DAG (auth chains, fetched state), with its flags (see
    /// `remote::OUTLIER` and friends).
    Outlier(u8),
    /// A membership of one of our users in a room we are not in (an invite from another server,
    /// or the leave that rejects it): an outlier that moves the membership indexes.
    RemoteMembership,
    /// In the DAG and the room's timeline; local members are notified.
    Timeline(Placed),
    /// In the timeline, from before our join: never notified, never a head.
    History(Placed),
    /// In the DAG with its state, outside the timeline (soft-failed), with its flags.
    Hidden(Placed, u8),
}

/// An event's position in the DAG.
#[derive(Clone, Copy)]
pub(super) struct Placed {
    pub depth: u64,
    pub state_before: StateGroupId,
    pub state_after: StateGroupId,
}

/// A client's transaction ID for an event it sent: (user, device, transaction).
pub(super) type TxnKey = (ShortId, String, String);

/// Everything the commit of one event writes.
pub(super) struct EventCommit {
    pub short: ShortId,
    pub event_id: OwnedEventId,
    pub object: CanonicalJsonObject,
    /// Parsed, for every event placed in the DAG; an outlier may be kept unparsed.
    pub pdu: Option<Pdu>,
    pub place: Place,
    /// The room's current state before and after, when the event moves it.
    pub current: Option<(Arc<StateMap>, Arc<StateMap>)>,
    /// The event this one redacts, already checked as redactable by its sender, and the room
    /// version's rules to redact it by.
    pub redacts: Option<(ShortId, RoomVersionRules)>,
    pub txn: Option<TxnKey>,
    /// Whether other servers in the room are ours to tell (everyone but the sender's server).
    pub relay: Relay,
}

/// The room events are committed to.
pub(super) struct InRoom<'a> {
    pub room: ShortId,
    pub room_id: &'a RoomId,
}

impl Service {
    /// Adds the writes of `events`, in order, to `batch`; returns the other servers they were
    /// queued for. Without a room, only outliers can be committed (an auth chain is fetched
    /// before we know the room). The room's head (its `rooms` row) is the caller's: only it knows
    /// the new one.
    pub(super) fn commit_in(
        &self,
        batch: &mut Batch,
        in_room: Option<&InRoom<'_>>,
        events: &[EventCommit],
    ) -> Result<Vec<OwnedServerName>> {
        let mut servers: Vec<OwnedServerName> = Vec::new();
        for e in events {
            let short = e.short;
            let (pdu, room) = match (&e.pdu, &e.place, in_room) {
                (_, Place::Outlier(flags), _) => {
                    self.event_row_in(batch, short, &e.object)?;
                    self.tables.outliers.put_in(batch, short, flags);
                    continue;
                }
                (Some(pdu), Place::RemoteMembership, Some(r)) => {
                    self.event_row_in(batch, short, &e.object)?;
                    self.tables
                        .outliers
                        .put_in(batch, short, &super::remote::OUTLIER);
                    self.remote_membership_in(batch, r.room, short, pdu)?;
                    continue;
                }
                (Some(pdu), _, Some(r)) => (pdu, r),
                _ => {
                    return Err(Error::internal(
                        "an event placed in a room's DAG needs its room and its parsed form",
                    ))
                }
            };
            let room = room.room;
            self.event_row_in(batch, short, &e.object)?;
            let placed = match &e.place {
                Place::Outlier(_) | Place::RemoteMembership => {
                    unreachable!("outliers are written above")
                }
                Place::Timeline(p) | Place::History(p) => {
                    self.tables.timeline.put_in(batch, (room, short), &());
                    if matches!(e.place, Place::Timeline(_)) && super::timeline::bumps(&pdu.kind) {
                        self.tables.room_bump.put_in(batch, room, &short);
                    }
                    // An event we held as an outlier gains its place.
                    self.tables.outliers.delete_in(batch, short);
                    self.index_relation_in(batch, room, short, pdu)?;
                    p
                }
                Place::Hidden(p, flags) => {
                    self.tables.outliers.put_in(batch, short, flags);
                    p
                }
            };
            {
                let p = placed;
                let meta = EventMeta {
                    room,
                    depth: p.depth,
                    state_before: p.state_before,
                    state_after: p.state_after,
                    redacted: false,
                };
                self.tables.event_meta.put_in(batch, short, &meta.into());
            }
            if let Some((old, new)) = &e.current {
                if !Arc::ptr_eq(old, new) {
                    self.write_current_state_diff(batch, room, old, new, Some((short, pdu)))?;
                }
            }
            if let Some((target, rules)) = &e.redacts {
                self.redact_in(batch, rules, *target, &e.object)?;
            }
            if let Some((user, device, txn_id)) = &e.txn {
                self.tables.txn_ids.put_in(
                    batch,
                    (*user, device, room, txn_id),
                    &e.event_id.as_str().to_owned(),
                );
                // The way back, so the sending device sees its transaction ID on the event.
                self.tables
                    .event_txn
                    .put_in(batch, short, &(device.clone(), txn_id.clone()));
            }
            if let (Relay::ToRoom, Place::Timeline(_)) = (e.relay, &e.place) {
                let queued = self.queue_outgoing_in(
                    batch,
                    room,
                    short,
                    pdu,
                    Some(pdu.sender.server_name()),
                )?;
                for s in queued {
                    if !servers.contains(&s) {
                        servers.push(s);
                    }
                }
            }
        }
        let notify: Vec<(ShortId, &CanonicalJsonObject)> = events
            .iter()
            .filter(|e| matches!(e.place, Place::Timeline(_)))
            .map(|e| (e.short, &e.object))
            .collect();
        if let (false, Some(r)) = (notify.is_empty(), in_room) {
            self.outboxes_in(batch, r.room, r.room_id, &notify);
        }
        Ok(servers)
    }

    /// Commits one event with the room's new head (`head`) and writes the batch under its
    /// reservation; returns the other servers it was queued for.
    pub(super) async fn commit_one(
        &self,
        mut batch: Batch,
        reserved: Reservation,
        room: ShortId,
        head: &RoomMeta,
        commit: EventCommit,
    ) -> Result<Vec<OwnedServerName>> {
        let in_room = InRoom {
            room,
            room_id: &head.room_id,
        };
        let servers = self.commit_in(&mut batch, Some(&in_room), &[commit])?;
        self.tables.rooms.put_in(&mut batch, room, head);
        reserved.write(&self.db, batch).await?;
        Ok(servers)
    }

    /// The event row: the canonical JSON that signatures verify against, byte for byte. The only
    /// writer of new event rows (a redaction rewrites one, in `redact_in`).
    fn event_row_in(
        &self,
        batch: &mut Batch,
        short: ShortId,
        object: &CanonicalJsonObject,
    ) -> Result<()> {
        // Peers' unsigned data is theirs, not the event's; events built here have none, and are
        // written without a copy.
        let json = if object.contains_key("unsigned") {
            let mut stored = object.clone();
            stored.remove("unsigned");
            serde_json::to_vec(&stored)
        } else {
            serde_json::to_vec(object)
        };
        self.tables
            .pdus
            .put_in(batch, short, &json.map_err(Error::internal)?);
        Ok(())
    }

    /// The membership indexes of a `Place::RemoteMembership` event.
    fn remote_membership_in(
        &self,
        batch: &mut Batch,
        room: ShortId,
        short: ShortId,
        pdu: &Pdu,
    ) -> Result<()> {
        if pdu.kind != ruma::events::TimelineEventType::RoomMember {
            return Err(Error::bad_json("Not a membership event"));
        }
        let (Some(target), Some(membership)) = (
            pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok()),
            pdu.content_field("membership")
                .and_then(|m| m.as_str().map(MembershipState::from)),
        ) else {
            return Err(Error::bad_json(
                "A membership without a user or a membership",
            ));
        };
        let user = self.shortids.get_or_create(IdKind::User, target.as_str())?;
        self.index_membership_in(batch, room, user, &membership, short);
        Ok(())
    }

    /// The current-state rows (and membership indexes) that turn `old` into `new`; `extra` is an
    /// event of `new` not written yet.
    pub(super) fn write_current_state_diff(
        &self,
        batch: &mut Batch,
        room: ShortId,
        old: &StateMap,
        new: &StateMap,
        extra: Option<(ShortId, &Pdu)>,
    ) -> Result<()> {
        for sk in old.keys().filter(|k| !new.contains_key(k)) {
            self.tables.room_state.delete_in(batch, (room, *sk));
        }
        let mut members = Vec::new();
        for (sk, ev) in new {
            if old.get(sk) == Some(ev) {
                continue;
            }
            self.tables.room_state.put_in(batch, (room, *sk), ev);
            let (kind, state_key) = self.state.state_key_of(*sk)?;
            if kind != StateEventType::RoomMember {
                continue;
            }
            let pdu = match extra {
                Some((s, p)) if s == *ev => p.clone(),
                _ => match self.events.pdu(*ev)? {
                    Some(p) => p,
                    None => continue,
                },
            };
            let Some(membership) = pdu
                .content_field("membership")
                .and_then(|m| m.as_str().map(MembershipState::from))
            else {
                continue;
            };
            if UserId::parse(state_key.as_str()).is_err() {
                continue;
            }
            members.push((state_key, membership, *ev, pdu.content_value()));
        }
        // Interned together: adopting a remote room's state brings a user per member.
        let ids: Vec<&[u8]> = members.iter().map(|(u, ..)| u.as_bytes()).collect();
        let users = self.shortids.get_or_create_many(IdKind::User, &ids)?;
        for (user, (user_id, membership, event, content)) in users.into_iter().zip(&members) {
            self.index_membership_in(batch, room, user, membership, *event);
            self.outboxes_member_in(batch, user, user_id, membership, content);
        }
        Ok(())
    }

    /// The membership indexes (by user and by room) of `user` in `room`: the only writer of
    /// both. Any new membership brings a forgotten room back.
    pub(super) fn index_membership_in(
        &self,
        batch: &mut Batch,
        room: ShortId,
        user: ShortId,
        membership: &MembershipState,
        event: ShortId,
    ) {
        let m = Membership {
            state: membership_code(membership),
            event,
        };
        self.tables
            .memberships
            .put_in(batch, (user, room), &m.into());
        self.tables
            .room_members
            .put_in(batch, (room, user), &m.into());
        self.tables.forgotten.delete_in(batch, (user, room));
    }

    /// Replaces a stored event with its redacted form (the redaction being `because`).
    pub(super) fn redact_in(
        &self,
        batch: &mut Batch,
        rules: &RoomVersionRules,
        target: ShortId,
        because: &CanonicalJsonObject,
    ) -> Result<()> {
        let Some(object) = self.events.event_canonical(target)? else {
            return Ok(());
        };
        self.unindex_relation_in(batch, target)?;
        let redacted =
            hearth_federation::pdu::redacted(object, &rules.redaction, Some(because.clone()))
                .map_err(Error::internal)?;
        self.tables.pdus.put_in(
            batch,
            target,
            &serde_json::to_vec(&redacted).map_err(Error::internal)?,
        );
        if let Some(mut m) = self.events.event_meta(target)? {
            m.redacted = true;
            self.tables.event_meta.put_in(batch, target, &m.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The commit path through the rooms service, on a real database in a temporary folder.

    use std::sync::Arc;

    use ruma::{
        events::{room::member::MembershipState, StateEventType, TimelineEventType},
        CanonicalJsonValue, OwnedUserId, RoomVersionId,
    };
    use serde_json::json;

    use crate::{
        config::Config,
        service::{
            rooms::{remote::OUTLIER, NewEvent, Service},
            Services,
        },
        storage::{Db, IdKind, RocksDb},
    };

    fn services(dir: &std::path::Path) -> Services {
        let kv = Arc::new(RocksDb::open(&dir.join("db"), 1 << 20).unwrap());
        let mut config = Config::default();
        config.database.path = dir.to_owned();
        Services::build(Arc::new(config), Db::new(kv).unwrap(), "secret".into()).unwrap()
    }

    fn user(s: &Services, name: &str) -> (OwnedUserId, u64) {
        let id = OwnedUserId::try_from(format!("@{name}:{}", s.config.server_name)).unwrap();
        let short = s
            .rooms
            .shortids
            .get_or_create(IdKind::User, id.as_str())
            .unwrap();
        (id, short)
    }

    fn text(body: &str) -> NewEvent {
        NewEvent::message(
            TimelineEventType::RoomMessage,
            json!({ "msgtype": "m.text", "body": body }),
        )
    }

    #[tokio::test]
    async fn local_events_get_their_place_state_memberships_and_redactions() {
        let dir = tempfile::tempdir().unwrap();
        let s = services(dir.path());
        let rooms: &Service = &s.rooms;
        let (alice, alice_short) = user(&s, "alice");
        let room_id = rooms
            .create_room(
                &RoomVersionId::V12,
                &alice,
                json!({}),
                vec![NewEvent::state(
                    StateEventType::RoomMember,
                    alice.as_str(),
                    json!({ "membership": "join" }),
                )],
            )
            .await
            .unwrap();
        let (room, meta) = rooms.state.known_room(&room_id).unwrap();
        let hello = rooms
            .send(&room_id, &alice, text("hello"), None)
            .await
            .unwrap();

        // Both events are in the timeline, in order, with their meta; the join is current state
        // and indexed both ways.
        let timeline = rooms.timeline.timeline(room, 0, true, 10).unwrap();
        assert_eq!(timeline.len(), 3, "create, join, message");
        assert_eq!(timeline[2], hello.short);
        let join = timeline[1];
        assert!(rooms.events.event_meta(join).unwrap().is_some());
        let m = rooms
            .membership
            .membership(alice_short, room)
            .unwrap()
            .unwrap();
        assert_eq!((m.membership(), m.event), (MembershipState::Join, join));
        assert!(rooms
            .membership
            .members(room)
            .unwrap()
            .iter()
            .any(|(u, m)| *u == alice_short && m.event == join));
        assert_eq!(
            rooms
                .state
                .current_state_event(room, &StateEventType::RoomMember, alice.as_str())
                .unwrap(),
            Some(join)
        );
        let message_meta = rooms.events.event_meta(hello.short).unwrap().unwrap();
        assert_eq!(message_meta.room, room);
        assert_eq!(message_meta.state_before, message_meta.state_after);
        assert!(meta.depth < message_meta.depth);

        // A redaction rewrites its target's row in the same commit.
        let mut redaction = NewEvent::message(TimelineEventType::RoomRedaction, json!({}));
        redaction.redacts = Some(hello.event_id.clone());
        rooms.send(&room_id, &alice, redaction, None).await.unwrap();
        let target = rooms.events.event_json(hello.short).unwrap().unwrap();
        assert_eq!(target["content"], json!({}));
        assert!(
            rooms
                .events
                .event_meta(hello.short)
                .unwrap()
                .unwrap()
                .redacted
        );
    }

    #[tokio::test]
    async fn outliers_are_content_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = services(dir.path());
        let rooms: &Service = &s.rooms;
        let (alice, _) = user(&s, "alice");
        let room_id = rooms
            .create_room(&RoomVersionId::V12, &alice, json!({}), vec![])
            .await
            .unwrap();
        let (room, meta) = rooms.state.known_room(&room_id).unwrap();
        // Any well-formed event will do: outliers are stored for their content only.
        let create = rooms.events.event_canonical(
            rooms
                .events
                .event_short(&meta.create_event)
                .unwrap()
                .unwrap(),
        );
        let mut object = create.unwrap().unwrap();
        object.insert(
            "state_key".into(),
            CanonicalJsonValue::String("other".into()),
        );
        object.insert(
            "unsigned".into(),
            CanonicalJsonValue::String("theirs".into()),
        );
        let id = ruma::OwnedEventId::try_from("$outlier").unwrap();
        rooms
            .store_outliers(vec![(id.clone(), object, 0)])
            .await
            .unwrap();
        let short = rooms.events.event_short(&id).unwrap().unwrap();
        assert_eq!(rooms.events.event_flags(short).unwrap(), OUTLIER);
        assert!(
            rooms.events.event_meta(short).unwrap().is_none(),
            "not in the DAG"
        );
        assert!(!rooms
            .timeline
            .timeline(room, 0, true, 10)
            .unwrap()
            .contains(&short));
        let stored = rooms.events.event_json(short).unwrap().unwrap();
        assert!(
            stored.get("unsigned").is_none(),
            "a peer's unsigned data is not kept"
        );
    }
}
