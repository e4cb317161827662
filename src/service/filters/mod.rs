//! Stored /sync filters (POST /user/{userId}/filter), by user and a per-user counter.

use serde_json::Value as JsonValue;

use super::tables::service;
use crate::{
    error::Result,
    storage::{tables, Batch, ShortId},
};

service! {
    tables {
        filters: tables::Filters,
    }
    deps {}
    state {
        write: tokio::sync::Mutex<()> = tokio::sync::Mutex::new(()),
    }
}

impl Service {
    /// Stores a filter definition; returns its ID.
    pub async fn create(&self, user: ShortId, filter: &JsonValue) -> Result<String> {
        let _guard = self.write.lock().await;
        let last = self
            .tables
            .filters
            .scan_rev((user,))
            .keys()
            .next()
            .transpose()?
            .map_or(0, |(_, id)| id);
        let id = last + 1;
        let mut b = Batch::new();
        self.tables.filters.put_in(&mut b, (user, id), filter);
        self.db.write(b).await?;
        Ok(id.to_string())
    }

    pub fn get(&self, user: ShortId, id: &str) -> Result<Option<JsonValue>> {
        let Ok(id) = id.parse::<u64>() else {
            return Ok(None);
        };
        Ok(self.tables.filters.get((user, id))?)
    }
}
