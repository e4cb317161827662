//! Registration tokens (`m.login.registration_token`), managed through the admin API and CLI.
//! Owns the `registration_tokens` keyspace; uses pending in UIAA sessions are counted in memory.

use std::collections::HashMap;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::tables::service;
use crate::{
    error::Result,
    storage::{tables, Batch},
    util::now_ms,
};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RegistrationToken {
    pub token: String,
    pub uses_allowed: Option<u64>,
    pub completed: u64,
    pub expiry_time: Option<u64>,
}

service! {
    tables {
        tokens: tables::RegistrationTokens<RegistrationToken>,
    }
    deps {}
    state {
        pending: Mutex<HashMap<String, u64>> = Mutex::new(HashMap::new()),
        // Serialises the read-modify-write of a token's counters.
        update: tokio::sync::Mutex<()> = tokio::sync::Mutex::new(()),
    }
}

impl Service {
    pub fn get(&self, token: &str) -> Result<Option<RegistrationToken>> {
        Ok(self.tables.tokens.get(token)?)
    }

    pub fn pending(&self, token: &str) -> u64 {
        self.pending.lock().get(token).copied().unwrap_or(0)
    }

    pub fn list(&self) -> Result<Vec<RegistrationToken>> {
        Ok(self
            .tables
            .tokens
            .iter()
            .values()
            .collect::<Result<_, _>>()?)
    }

    /// Whether a registration may start with this token now.
    pub fn is_valid(&self, token: &str) -> Result<bool> {
        let Some(t) = self.get(token)? else {
            return Ok(false);
        };
        if t.expiry_time.is_some_and(|e| e <= now_ms()) {
            return Ok(false);
        }
        Ok(match t.uses_allowed {
            Some(allowed) => t.completed + self.pending(token) < allowed,
            None => true,
        })
    }

    /// Reserves one use of a token for a registration in progress.
    pub fn reserve(&self, token: &str) -> Result<bool> {
        let mut pending = self.pending.lock();
        let Some(t) = self.get(token)? else {
            return Ok(false);
        };
        let p = pending.get(token).copied().unwrap_or(0);
        let ok = t.expiry_time.is_none_or(|e| e > now_ms())
            && t.uses_allowed.is_none_or(|a| t.completed + p < a);
        if ok {
            pending.insert(token.to_owned(), p + 1);
        }
        Ok(ok)
    }

    /// Gives back a reservation whose registration was abandoned.
    pub fn release(&self, token: &str) {
        let mut pending = self.pending.lock();
        if let Some(p) = pending.get_mut(token) {
            *p = p.saturating_sub(1);
            if *p == 0 {
                pending.remove(token);
            }
        }
    }

    /// Turns a reservation into a completed use.
    pub async fn complete(&self, token: &str) -> Result<()> {
        let _guard = self.update.lock().await;
        // Count the use before giving the reservation back, so no other registration sees a
        // free use in between.
        if let Some(mut t) = self.get(token)? {
            t.completed += 1;
            self.put(&t).await?;
        }
        self.release(token);
        Ok(())
    }

    pub async fn put(&self, t: &RegistrationToken) -> Result<()> {
        let mut b = Batch::new();
        self.tables.tokens.put_in(&mut b, &t.token, t);
        self.db.write(b).await?;
        Ok(())
    }

    pub async fn delete(&self, token: &str) -> Result<bool> {
        if self.get(token)?.is_none() {
            return Ok(false);
        }
        let mut b = Batch::new();
        self.tables.tokens.delete_in(&mut b, token);
        self.db.write(b).await?;
        Ok(true)
    }

    /// The update lock, for admin edits that read and rewrite a token.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.update.lock().await
    }
}
