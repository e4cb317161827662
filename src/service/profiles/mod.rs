//! Profile fields of local users (displayname, avatar_url and the custom fields of Matrix 1.16).
//! Owns the `profiles` keyspace.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::Value as JsonValue;

use super::{tables::service, users};
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

    pub fn set_in(&self, batch: &mut Batch, user: ShortId, field: &str, value: &JsonValue) {
        self.tables.profiles.put_in(batch, (user, field), value);
    }

    /// Sets (or with `None` removes) one field, keeping the whole profile under the size limit.
    pub async fn set(&self, user: ShortId, field: &str, value: Option<JsonValue>) -> Result<()> {
        let mut b = Batch::new();
        match &value {
            Some(v) => {
                let mut all = self.all(user)?;
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
                self.set_in(&mut b, user, field, v);
            }
            None => self.tables.profiles.delete_in(&mut b, (user, field)),
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
}
