//! Profile fields of local users (displayname, avatar_url and the custom fields of Matrix 1.16).
//! Owns the `profiles` keyspace.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::Value as JsonValue;

use super::{
    tables::service,
    user_directory::{self, DirEntry},
    users,
};
use crate::{
    error::{Error, Result},
    storage::{tables, Batch, ShortId},
};

/// Largest profile (all fields, serialised) a user may keep, as the spec's 64 KiB limit.
pub const MAX_PROFILE_BYTES: usize = 65536;

service! {
    tables {
        profiles: tables::Profiles,
    }
    deps {
        users: Arc<users::Service>,
        directory: Arc<user_directory::Service>,
    }
    state {}
}

impl Service {
    pub fn users(&self) -> &users::Service {
        &self.users
    }

    pub fn all(&self, user: ShortId) -> Result<BTreeMap<String, JsonValue>> {
        self.tables
            .profiles
            .scan((user,))
            .map(|r| Ok(r.map(|((_, field), value)| (field, value))?))
            .collect()
    }

    pub fn get(&self, user: ShortId, field: &str) -> Result<Option<JsonValue>> {
        Ok(self.tables.profiles.get((user, field))?)
    }

    /// Sets one field of a new account's profile (its directory entry follows).
    pub fn set_in(
        &self,
        batch: &mut Batch,
        user: ShortId,
        user_id: &ruma::UserId,
        field: &str,
        value: &JsonValue,
    ) -> Result<()> {
        self.tables.profiles.put_in(batch, (user, field), value);
        let mut all = self.all(user)?;
        all.insert(field.to_owned(), value.clone());
        self.directory_in(batch, user, user_id, &all)
    }

    /// The user's directory entry from their whole profile, in `batch`.
    fn directory_in(
        &self,
        batch: &mut Batch,
        user: ShortId,
        user_id: &ruma::UserId,
        all: &BTreeMap<String, JsonValue>,
    ) -> Result<()> {
        let content = serde_json::to_value(all).map_err(Error::internal)?;
        self.directory.set_in(
            batch,
            user,
            user_id.as_str(),
            &DirEntry::from_content(&content),
        )
    }

    /// Sets (or with `None` removes) one field, keeping the whole profile under the size limit;
    /// the user's directory entry changes in the same write.
    pub async fn set(&self, user: ShortId, field: &str, value: Option<JsonValue>) -> Result<()> {
        let mut b = Batch::new();
        let mut all = self.all(user)?;
        match &value {
            Some(v) => {
                all.insert(field.to_owned(), v.clone());
                if serde_json::to_vec(&all)
                    .map(|b| b.len())
                    .unwrap_or(usize::MAX)
                    > MAX_PROFILE_BYTES
                {
                    return Err(Error::matrix(
                        crate::error::custom_kind("M_PROFILE_TOO_LARGE"),
                        "Profile would exceed 64 KiB",
                    ));
                }
                self.tables.profiles.put_in(&mut b, (user, field), v);
            }
            None => {
                all.remove(field);
                self.tables.profiles.delete_in(&mut b, (user, field));
            }
        }
        if matches!(field, "displayname" | "avatar_url") {
            let user_id = self.users.user_id_of(user)?;
            self.directory_in(&mut b, user, &user_id, &all)?;
        }
        self.db.write(b).await?;
        Ok(())
    }

    /// Removes every field; used when an account is deactivated with `erase`.
    pub async fn erase(&self, user: ShortId) -> Result<()> {
        let mut b = Batch::new();
        self.tables.profiles.delete_prefix_in(&mut b, (user,))?;
        self.db.write(b).await?;
        Ok(())
    }

    /// Takes a deactivated user out of the directory.
    pub async fn unlist(&self, user: ShortId) -> Result<()> {
        let user_id = self.users.user_id_of(user)?;
        let mut b = Batch::new();
        self.directory.remove_in(&mut b, user, user_id.as_str())?;
        self.db.write(b).await?;
        Ok(())
    }

    /// Local users with their directory entries (for building the directory once).
    pub fn directory_entries(&self) -> Result<Vec<(ShortId, ruma::OwnedUserId, DirEntry)>> {
        let mut out = Vec::new();
        for (user, record) in self.users.list()? {
            if record.deactivated {
                continue;
            }
            let content = serde_json::to_value(self.all(user)?).map_err(Error::internal)?;
            out.push((user, record.user_id, DirEntry::from_content(&content)));
        }
        Ok(out)
    }
}
