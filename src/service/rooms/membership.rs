//! Who is in which room: the `memberships` (user → rooms) and `room_members` (room → users)
//! indexes the commit maintains, forgotten rooms, invite state, and the servers in a room.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{events::room::member::MembershipState, OwnedServerName, UserId};

use super::{events::Events, membership_code, Membership};
use crate::{
    error::Result,
    storage::{tables, Db, IdKind, ShortId, ShortIds, Table},
};

pub struct Members {
    db: Db,
    shortids: Arc<ShortIds>,
    events: Arc<Events>,
    server_name: OwnedServerName,
    memberships: Table<tables::Memberships>,
    room_members: Table<tables::RoomMembers>,
    forgotten: Table<tables::Forgotten>,
    invite_state: Table<tables::InviteState<Vec<serde_json::Value>>>,
    /// Servers with joined members per room, dropped when a member event lands.
    servers_cache: Mutex<HashMap<ShortId, Arc<Vec<OwnedServerName>>>>,
}

impl Members {
    pub(super) fn new(
        db: &Db,
        shortids: Arc<ShortIds>,
        events: Arc<Events>,
        server_name: OwnedServerName,
    ) -> Self {
        Self {
            db: db.clone(),
            shortids,
            events,
            server_name,
            memberships: Table::new(db),
            room_members: Table::new(db),
            forgotten: Table::new(db),
            invite_state: Table::new(db),
            servers_cache: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets the servers of a room after one of its member events landed.
    pub(super) fn servers_changed(&self, room: ShortId) {
        self.servers_cache.lock().remove(&room);
    }

    pub fn membership(&self, user: ShortId, room: ShortId) -> Result<Option<Membership>> {
        Ok(self.memberships.get((user, room))?.map(Membership::from))
    }

    /// The membership of a user (by ID) in a room; `None` when the user never appeared in it.
    pub fn membership_of(
        &self,
        user_id: &UserId,
        room: ShortId,
    ) -> Result<Option<MembershipState>> {
        let Some(user) = self.shortids.get(IdKind::User, user_id.as_str())? else {
            return Ok(None);
        };
        Ok(self.membership(user, room)?.map(|m| m.membership()))
    }

    /// Forgets a room the user left: its history and state are no longer theirs to read.
    pub async fn forget(&self, user: ShortId, room: ShortId) -> Result<()> {
        let mut b = crate::storage::Batch::new();
        self.forgotten.put_in(&mut b, (user, room), &());
        self.db.write(b).await?;
        Ok(())
    }

    pub fn is_forgotten(&self, user: ShortId, room: ShortId) -> Result<bool> {
        Ok(self.forgotten.contains((user, room))?)
    }

    /// The membership index entry of a user (by ID) in a room.
    pub fn membership_of_full(
        &self,
        user_id: &UserId,
        room: ShortId,
    ) -> Result<Option<Membership>> {
        let Some(user) = self.shortids.get(IdKind::User, user_id.as_str())? else {
            return Ok(None);
        };
        self.membership(user, room)
    }

    pub fn is_joined(&self, user_id: &UserId, room: ShortId) -> Result<bool> {
        Ok(self.membership_of(user_id, room)? == Some(MembershipState::Join))
    }

    /// Rooms a user has the given membership in.
    pub fn rooms_of(&self, user: ShortId, want: &MembershipState) -> Result<Vec<ShortId>> {
        let code = membership_code(want);
        let mut out = Vec::new();
        for r in self.memberships.scan((user,)) {
            let ((_, room), (state, _)) = r?;
            if state == code {
                out.push(room);
            }
        }
        Ok(out)
    }

    /// Every room a user has a membership in, with it.
    pub fn memberships(&self, user: ShortId) -> Result<Vec<(ShortId, Membership)>> {
        let mut out = Vec::new();
        for r in self.memberships.scan((user,)) {
            let ((_, room), m) = r?;
            out.push((room, m.into()));
        }
        Ok(out)
    }

    /// The user and everyone sharing a joined room with them: who sees their presence and keys.
    pub fn peers(&self, user: ShortId) -> Result<std::collections::BTreeSet<ShortId>> {
        let mut out = std::collections::BTreeSet::from([user]);
        for (room, m) in self.memberships(user)? {
            if m.membership() != MembershipState::Join {
                continue;
            }
            for (member, mm) in self.members(room)? {
                if mm.membership() == MembershipState::Join {
                    out.insert(member);
                }
            }
        }
        Ok(out)
    }

    /// Members of a room: (user short, membership).
    pub fn members(&self, room: ShortId) -> Result<Vec<(ShortId, Membership)>> {
        let mut out = Vec::new();
        for r in self.room_members.scan((room,)) {
            let ((_, user), m) = r?;
            out.push((user, m.into()));
        }
        Ok(out)
    }

    /// The servers with joined members in a room, ours excluded.
    pub fn remote_servers(&self, room: ShortId) -> Result<Vec<OwnedServerName>> {
        if let Some(s) = self.servers_cache.lock().get(&room) {
            return Ok((**s).clone());
        }
        let mut out: Vec<OwnedServerName> = Vec::new();
        for (user, m) in self.members(room)? {
            if m.membership() != MembershipState::Join {
                continue;
            }
            let user_id = self.events.user_id_of(user)?;
            let server = user_id.server_name();
            if server != self.server_name && !out.iter().any(|s| s == server) {
                out.push(server.to_owned());
            }
        }
        let mut cache = self.servers_cache.lock();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(room, Arc::new(out.clone()));
        Ok(out)
    }

    /// Whether any of our users is joined (so we are resident and build events ourselves).
    pub fn has_local_members(&self, room: ShortId) -> Result<bool> {
        for (user, m) in self.members(room)? {
            if m.membership() == MembershipState::Join
                && self.events.user_id_of(user)?.server_name() == self.server_name
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The stripped state another server sent with an invite of `user` to `room`.
    pub fn invite_state(
        &self,
        user: ShortId,
        room: ShortId,
    ) -> Result<Option<Vec<serde_json::Value>>> {
        Ok(self.invite_state.get((user, room))?)
    }
}
