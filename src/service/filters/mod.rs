//! Stored /sync filters (POST /user/{userId}/filter), by user and a per-user counter.

use serde_json::Value as JsonValue;

use crate::{
    error::{Error, Result},
    storage::{schema::key, Batch, Cf, Db, ShortId},
};

pub struct Service {
    db: Db,
    write: tokio::sync::Mutex<()>,
}

impl Service {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// Stores a filter definition; returns its ID.
    pub async fn create(&self, user: ShortId, filter: &JsonValue) -> Result<String> {
        let _guard = self.write.lock().await;
        let last = self
            .db
            .scan_range(
                Cf::Filters,
                &key::pair(user, u64::MAX),
                &key::u64_key(user),
                true,
            )
            .next()
            .transpose()?
            .and_then(|(k, _)| key::split_pair(&k).map(|(_, id)| id))
            .unwrap_or(0);
        let id = last + 1;
        let mut b = Batch::new();
        b.put(
            Cf::Filters,
            key::pair(user, id),
            serde_json::to_vec(filter).map_err(Error::internal)?,
        );
        self.db.write(b).await?;
        Ok(id.to_string())
    }

    pub fn get(&self, user: ShortId, id: &str) -> Result<Option<JsonValue>> {
        let Ok(id) = id.parse::<u64>() else {
            return Ok(None);
        };
        match self.db.get(Cf::Filters, &key::pair(user, id))? {
            Some(v) => {
                Ok(Some(serde_json::from_slice(&v).map_err(|e| {
                    Error::internal(format!("stored filter: {e}"))
                })?))
            }
            None => Ok(None),
        }
    }
}
