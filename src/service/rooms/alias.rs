//! Room aliases and the public room directory. Owns the `aliases`, `room_aliases` and
//! `public_rooms` keyspaces.

use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use ruma::OwnedServerName;

use super::{events::Events, state::State};
use crate::{
    error::{Error, Result},
    storage::{tables, Batch, Db, ShortId, Table},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AliasRecord {
    pub room_id: OwnedRoomId,
    pub creator: OwnedUserId,
}

pub struct Aliases {
    db: Db,
    server_name: OwnedServerName,
    events: Arc<Events>,
    state: Arc<State>,
    aliases: Table<tables::Aliases<AliasRecord>>,
    room_aliases: Table<tables::RoomAliases>,
    public_rooms: Table<tables::PublicRooms>,
    network_rooms: Table<tables::NetworkRooms>,
    /// Serialises alias creation and deletion (check, then write).
    alias_lock: tokio::sync::Mutex<()>,
    /// Bumped by every alias change, so that what was derived from aliases can tell it is stale.
    generation: std::sync::atomic::AtomicU64,
}

impl Aliases {
    pub(super) fn new(
        db: &Db,
        server_name: OwnedServerName,
        events: Arc<Events>,
        state: Arc<State>,
    ) -> Self {
        Self {
            db: db.clone(),
            server_name,
            events,
            state,
            aliases: Table::new(db),
            room_aliases: Table::new(db),
            public_rooms: Table::new(db),
            network_rooms: Table::new(db),
            alias_lock: tokio::sync::Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn is_local_alias(&self, alias: &RoomAliasId) -> bool {
        alias.server_name() == self.server_name
    }

    pub fn resolve_alias(&self, alias: &RoomAliasId) -> Result<Option<AliasRecord>> {
        Ok(self.aliases.get(alias.as_str())?)
    }

    /// Points a local alias at a room. M_UNKNOWN (409) if it is taken.
    /// A counter that moves whenever an alias is created, deleted or moved.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub async fn create_alias(
        &self,
        alias: &RoomAliasId,
        room_id: &RoomId,
        creator: &ruma::UserId,
    ) -> Result<()> {
        if !self.is_local_alias(alias) {
            return Err(Error::invalid_param("Aliases must be on this server"));
        }
        let (room, _) = self.state.known_room(room_id)?;
        let _guard = self.alias_lock.lock().await;
        if self.resolve_alias(alias)?.is_some() {
            return Err(Error::conflict("Room alias already exists"));
        }
        let mut b = Batch::new();
        self.aliases.put_in(
            &mut b,
            alias.as_str(),
            &AliasRecord {
                room_id: room_id.to_owned(),
                creator: creator.to_owned(),
            },
        );
        self.room_aliases
            .put_in(&mut b, (room, alias.as_str()), &());
        self.db.write(b).await?;
        self.changed();
        Ok(())
    }

    pub async fn delete_alias(&self, alias: &RoomAliasId) -> Result<()> {
        let _guard = self.alias_lock.lock().await;
        let Some(record) = self.resolve_alias(alias)? else {
            return Err(Error::not_found("Room alias not found"));
        };
        let mut b = Batch::new();
        self.aliases.delete_in(&mut b, alias.as_str());
        if let Some(room) = self.events.room_short(&record.room_id)? {
            self.room_aliases.delete_in(&mut b, (room, alias.as_str()));
        }
        self.db.write(b).await?;
        self.changed();
        Ok(())
    }

    /// Repoints a local alias at another room in one write, keeping its creator.
    pub async fn move_alias(&self, alias: &RoomAliasId, to: &RoomId) -> Result<()> {
        let (new_room, _) = self.state.known_room(to)?;
        let _guard = self.alias_lock.lock().await;
        let Some(record) = self.resolve_alias(alias)? else {
            return Err(Error::not_found("Room alias not found"));
        };
        let mut b = Batch::new();
        if let Some(old) = self.events.room_short(&record.room_id)? {
            self.room_aliases.delete_in(&mut b, (old, alias.as_str()));
        }
        self.aliases.put_in(
            &mut b,
            alias.as_str(),
            &AliasRecord {
                room_id: to.to_owned(),
                creator: record.creator,
            },
        );
        self.room_aliases
            .put_in(&mut b, (new_room, alias.as_str()), &());
        self.db.write(b).await?;
        self.changed();
        Ok(())
    }

    /// Local aliases pointing at a room.
    pub fn room_aliases(&self, room: ShortId) -> Result<Vec<OwnedRoomAliasId>> {
        self.room_aliases
            .scan((room,))
            .keys()
            .map(|k| {
                let (_, alias) = k?;
                OwnedRoomAliasId::try_from(alias)
                    .map_err(|e| Error::internal(format!("stored alias: {e}")))
            })
            .collect()
    }

    pub fn is_public(&self, room: ShortId) -> Result<bool> {
        Ok(self.public_rooms.contains(room)?)
    }

    pub async fn set_public(&self, room: ShortId, public: bool) -> Result<()> {
        let mut b = Batch::new();
        if public {
            self.public_rooms.put_in(&mut b, room, &());
        } else {
            self.public_rooms.delete_in(&mut b, room);
        }
        self.db.write(b).await?;
        Ok(())
    }

    /// Rooms in the public directory.
    pub fn public_rooms(&self) -> Result<Vec<ShortId>> {
        Ok(self.public_rooms.iter().keys().collect::<Result<_, _>>()?)
    }

    /// Publishes a room in (or removes it from) the directory of a bridged network, named by
    /// its third-party instance ID.
    pub async fn set_network_public(
        &self,
        instance: &str,
        room: ShortId,
        public: bool,
    ) -> Result<()> {
        let mut b = Batch::new();
        if public {
            self.network_rooms.put_in(&mut b, (instance, room), &());
        } else {
            self.network_rooms.delete_in(&mut b, (instance, room));
        }
        self.db.write(b).await?;
        Ok(())
    }

    /// Rooms in the directory of one bridged network, or of all of them.
    pub fn network_rooms(&self, instance: Option<&str>) -> Result<Vec<ShortId>> {
        let rows = match instance {
            Some(i) => self.network_rooms.scan((i,)).keys().collect::<Vec<_>>(),
            None => self.network_rooms.iter().keys().collect(),
        };
        let mut out = Vec::new();
        for row in rows {
            out.push(row?.1);
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}
