//! Devices and the access and refresh tokens bound to them. Owns the `devices`, `access_tokens` and
//! `refresh_tokens` keyspaces. Tokens are random and stored only as their SHA-256 hash.

use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::Mutex;

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{tables::service, users};
use crate::{
    error::{unknown_token_kind, Error, Result},
    storage::{tables, Batch, ShortId},
    util::{now_ms, random_string},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub device_id: OwnedDeviceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub created_ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ip: Option<String>,
    /// Hashes of the device's live tokens, so deleting the device revokes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The refresh token just traded in, still honoured until the new pair is first used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_refresh: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user_id: OwnedUserId,
    pub user: ShortId,
    pub device_id: OwnedDeviceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The refresh token this pair replaced; it stays usable (in case our answer was lost) until
    /// the new pair is first used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces_refresh: Option<String>,
    /// For a refresh token: the access token minted with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
}

/// The identity behind an access token.
#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub user: ShortId,
    /// Empty for an appservice acting without `device_id=`: it has no device then.
    pub device_id: OwnedDeviceId,
    pub token_hash: String,
    /// The appservice behind the request, when it used its `as_token`.
    pub appservice: Option<Arc<hearth_appservice::Registration>>,
}

impl Session {
    /// Whether the session acts with a device (every client session; an appservice only with
    /// `device_id=`).
    pub fn has_device(&self) -> bool {
        !self.device_id.as_str().is_empty()
    }
}

/// What a client gets back when it logs in, registers or refreshes.
pub struct IssuedTokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<Duration>,
}

service! {
    tables {
        devices: tables::Devices<DeviceRecord>,
        access_tokens: tables::AccessTokens<TokenRecord>,
        refresh_tokens: tables::RefreshTokens<TokenRecord>,
    }
    deps {
        users: Arc<users::Service>,
        refreshable_lifetime: Duration,
    }
    state {
        last_seen: Mutex<HashMap<(ShortId, OwnedDeviceId), (u64, String)>> =
            Mutex::new(HashMap::new()),
        /// Refresh tokens already revoked by the first use of their successor (bounded).
        spent_refresh: Mutex<std::collections::HashSet<String>> = Mutex::new(Default::default()),
        /// Serialises read-modify-writes of one user's devices and tokens.
        user_locks: Mutex<HashMap<ShortId, Arc<tokio::sync::Mutex<()>>>> =
            Mutex::new(HashMap::new()),
    }
}

const LAST_SEEN_CAPACITY: usize = 100_000;

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn token_key(hash: &str) -> [u8; 32] {
    let mut raw = [0u8; 32];
    // Hashes are produced by `hash_token`; a malformed one simply finds nothing.
    let _ = hex::decode_to_slice(hash, &mut raw);
    raw
}

fn unknown_token(soft_logout: bool) -> Error {
    Error::matrix(
        unknown_token_kind(soft_logout),
        if soft_logout {
            "Access token has expired"
        } else {
            "Unknown access token"
        },
    )
}

impl Service {
    /// Holds off other changes to this user's devices and tokens until the guard drops.
    pub async fn lock_user(&self, user: ShortId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.user_locks.lock();
            if locks.len() > 10_000 {
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks.entry(user).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Resolves an access token to its session.
    pub fn authenticate(&self, token: &str) -> Result<Session> {
        let hash = hash_token(token);
        let Some(record) = self.tables.access_tokens.get(&token_key(&hash))? else {
            return Err(unknown_token(false));
        };
        if record.expires_at.is_some_and(|t| t <= now_ms()) {
            return Err(unknown_token(true));
        }
        // A token is live only while its device points at it and its account is active: this
        // shuts out tokens orphaned by a race with logout, deletion or deactivation.
        let device = self.get_device(record.user, &record.device_id)?;
        if device.and_then(|d| d.access_token) != Some(hash.clone()) {
            return Err(unknown_token(false));
        }
        match self.users.get(&record.user_id)? {
            Some((_, u)) if !u.deactivated => {}
            _ => return Err(unknown_token(false)),
        }
        if let Some(old) = &record.replaces_refresh {
            // First use of a refreshed pair: the refresh token it replaced is now spent. Only the
            // delete is written (idempotent), so this cannot bring back a revoked row.
            if self.spent_refresh.lock().insert(old.clone()) {
                let mut b = Batch::new();
                self.tables
                    .refresh_tokens
                    .delete_in(&mut b, &token_key(old));
                self.db.kv().write(b)?;
            }
        }
        Ok(Session {
            user_id: record.user_id,
            user: record.user,
            device_id: record.device_id,
            token_hash: hash,
            appservice: None,
        })
    }

    /// The session of a request made with an appservice's `as_token`: as `user_id` (the
    /// appservice's sender when absent), which must be its own and registered, and with
    /// `device_id` when given, which must be that user's.
    pub fn as_appservice(
        &self,
        reg: &Arc<hearth_appservice::Registration>,
        user_id: Option<&str>,
        device_id: Option<&str>,
    ) -> Result<Session> {
        let server = self.users.server_name();
        let user_id = match user_id {
            Some(u) => UserId::parse(u)
                .map_err(|_| Error::invalid_param("user_id is not a valid user ID"))?,
            None => reg.sender(server).ok_or_else(|| {
                Error::internal("the appservice's sender_localpart is not a valid user ID")
            })?,
        };
        if user_id.server_name() != server || !reg.is_user_ours(&user_id) {
            return Err(Error::forbidden(
                "The application service may not act as this user",
            ));
        }
        let user = match self.users.get(&user_id)? {
            Some((user, record)) if !record.deactivated => user,
            Some(_) => return Err(Error::forbidden("This user is deactivated")),
            None => {
                return Err(Error::forbidden(
                    "The application service has not registered this user",
                ))
            }
        };
        let device_id = match device_id {
            Some(d) => {
                if self.get_device(user, <&DeviceId>::from(d))?.is_none() {
                    return Err(Error::matrix(
                        crate::error::custom_kind("M_UNKNOWN_DEVICE"),
                        "No such device for this user",
                    ));
                }
                OwnedDeviceId::from(d)
            }
            None => OwnedDeviceId::from(""),
        };
        Ok(Session {
            user_id,
            user,
            device_id,
            token_hash: String::new(),
            appservice: Some(reg.clone()),
        })
    }

    fn new_tokens(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        user: ShortId,
        device: &mut DeviceRecord,
        want_refresh: bool,
        replaces_refresh: Option<String>,
    ) -> IssuedTokens {
        // Revoke what the device held before.
        if let Some(old) = device.access_token.take() {
            self.tables.access_tokens.delete_in(batch, &token_key(&old));
        }
        if let Some(old) = device.pending_refresh.take() {
            self.tables
                .refresh_tokens
                .delete_in(batch, &token_key(&old));
        }
        if let Some(old) = device.refresh_token.take() {
            if Some(&old) != replaces_refresh.as_ref() {
                self.tables
                    .refresh_tokens
                    .delete_in(batch, &token_key(&old));
            }
        }
        let access_token = format!("hat_{}", random_string(40));
        let access_hash = hash_token(&access_token);
        let expires_in = want_refresh.then_some(self.refreshable_lifetime);
        let access = TokenRecord {
            user_id: user_id.to_owned(),
            user,
            device_id: device.device_id.clone(),
            expires_at: expires_in.map(|d| now_ms() + d.as_millis() as u64),
            replaces_refresh: replaces_refresh.clone(),
            access_token: None,
        };
        self.tables
            .access_tokens
            .put_in(batch, &token_key(&access_hash), &access);
        let refresh_token = want_refresh.then(|| {
            let token = format!("hrt_{}", random_string(40));
            let hash = hash_token(&token);
            let record = TokenRecord {
                expires_at: None,
                access_token: Some(access_hash.clone()),
                ..access.clone()
            };
            self.tables
                .refresh_tokens
                .put_in(batch, &token_key(&hash), &record);
            device.refresh_token = Some(hash);
            token
        });
        device.access_token = Some(access_hash);
        IssuedTokens {
            access_token,
            refresh_token,
            expires_in,
        }
    }

    /// Creates the device (or reuses it, revoking its old tokens) and issues tokens for it, adding
    /// the rows to `batch`.
    #[allow(clippy::too_many_arguments)]
    pub fn login_in(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        user: ShortId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        want_refresh: bool,
        client_ip: Option<String>,
    ) -> Result<(OwnedDeviceId, IssuedTokens)> {
        let existing = match &device_id {
            Some(id) => self.get_device(user, id)?,
            None => None,
        };
        let now = now_ms();
        let mut device = existing.unwrap_or_else(|| DeviceRecord {
            device_id: device_id.unwrap_or_else(|| random_string(10).to_uppercase().into()),
            display_name,
            created_ts: now,
            last_seen_ts: None,
            last_seen_ip: None,
            access_token: None,
            refresh_token: None,
            pending_refresh: None,
        });
        device.last_seen_ts = Some(now);
        device.last_seen_ip = client_ip;
        let tokens = self.new_tokens(batch, user_id, user, &mut device, want_refresh, None);
        self.tables
            .devices
            .put_in(batch, (user, device.device_id.as_str()), &device);
        Ok((device.device_id, tokens))
    }

    /// Trades a refresh token for a new token pair.
    pub async fn refresh(&self, refresh_token: &str) -> Result<IssuedTokens> {
        let hash = hash_token(refresh_token);
        let Some(record) = self.tables.refresh_tokens.get(&token_key(&hash))? else {
            return Err(unknown_token(false));
        };
        let _guard = self.lock_user(record.user).await;
        let Some(mut device) = self.get_device(record.user, &record.device_id)? else {
            return Err(unknown_token(false));
        };
        // Only the device's current refresh token, or the one it just traded in, is accepted.
        let current = device.refresh_token.as_deref() == Some(hash.as_str());
        let pending = device.pending_refresh.as_deref() == Some(hash.as_str());
        if !current && !pending {
            return Err(unknown_token(false));
        }
        let mut batch = Batch::new();
        if let Some(old) = &record.replaces_refresh {
            self.tables
                .refresh_tokens
                .delete_in(&mut batch, &token_key(old));
        }
        if current {
            // Keep the traded-in token for a retry whose answer was lost.
            if let Some(older) = device.pending_refresh.take() {
                self.tables
                    .refresh_tokens
                    .delete_in(&mut batch, &token_key(&older));
            }
        }
        let tokens = self.new_tokens(
            &mut batch,
            &record.user_id,
            record.user,
            &mut device,
            true,
            Some(hash.clone()),
        );
        device.pending_refresh = Some(hash);
        self.tables.devices.put_in(
            &mut batch,
            (record.user, device.device_id.as_str()),
            &device,
        );
        self.db.write(batch).await?;
        Ok(tokens)
    }

    pub fn get_device(&self, user: ShortId, device_id: &DeviceId) -> Result<Option<DeviceRecord>> {
        Ok(self.tables.devices.get((user, device_id.as_str()))?)
    }

    pub fn devices(&self, user: ShortId) -> Result<Vec<DeviceRecord>> {
        Ok(self
            .tables
            .devices
            .scan((user,))
            .values()
            .collect::<Result<_, _>>()?)
    }

    /// Renames a device; with `create`, makes it first when it does not exist (appservices
    /// manage their users' devices that way, without logging in).
    pub async fn set_display_name(
        &self,
        user: ShortId,
        device_id: &DeviceId,
        display_name: Option<String>,
        create: bool,
    ) -> Result<()> {
        let _guard = self.lock_user(user).await;
        let mut device = match self.get_device(user, device_id)? {
            Some(d) => d,
            None if create => DeviceRecord {
                device_id: device_id.to_owned(),
                display_name: None,
                created_ts: now_ms(),
                last_seen_ts: None,
                last_seen_ip: None,
                access_token: None,
                refresh_token: None,
                pending_refresh: None,
            },
            None => return Err(Error::not_found("Unknown device")),
        };
        device.display_name = display_name;
        let mut b = Batch::new();
        self.tables
            .devices
            .put_in(&mut b, (user, device_id.as_str()), &device);
        self.db.write(b).await?;
        Ok(())
    }

    /// Adds the removal of a device and its tokens to `batch`.
    pub fn delete_device_in(&self, batch: &mut Batch, user: ShortId, device: &DeviceRecord) {
        if let Some(h) = &device.access_token {
            self.tables.access_tokens.delete_in(batch, &token_key(h));
        }
        for h in [&device.refresh_token, &device.pending_refresh]
            .into_iter()
            .flatten()
        {
            self.tables.refresh_tokens.delete_in(batch, &token_key(h));
        }
        self.tables
            .devices
            .delete_in(batch, (user, device.device_id.as_str()));
    }

    /// Deletes the given devices (unknown ones are ignored, as the spec asks).
    pub async fn delete_devices(&self, user: ShortId, device_ids: &[OwnedDeviceId]) -> Result<()> {
        let _guard = self.lock_user(user).await;
        let mut b = Batch::new();
        for id in device_ids {
            if let Some(device) = self.get_device(user, id)? {
                self.delete_device_in(&mut b, user, &device);
            }
        }
        self.db.write(b).await?;
        Ok(())
    }

    /// Ends the session behind an access token: its device and every token of it.
    pub async fn logout(&self, session: &Session) -> Result<()> {
        let _guard = self.lock_user(session.user).await;
        let mut b = Batch::new();
        self.tables
            .access_tokens
            .delete_in(&mut b, &token_key(&session.token_hash));
        if let Some(device) = self.get_device(session.user, &session.device_id)? {
            self.delete_device_in(&mut b, session.user, &device);
        }
        self.db.write(b).await?;
        Ok(())
    }

    /// Deletes every device of a user except `keep`.
    pub async fn delete_all_devices(&self, user: ShortId, keep: Option<&DeviceId>) -> Result<()> {
        let _guard = self.lock_user(user).await;
        let mut b = Batch::new();
        for device in self.devices(user)? {
            if Some(device.device_id.as_ref()) != keep {
                self.delete_device_in(&mut b, user, &device);
            }
        }
        self.db.write(b).await?;
        Ok(())
    }

    /// Records that a device was seen. Kept in memory (bounded) rather than written per request:
    /// a read-modify-write here could race a logout and bring a deleted device back.
    pub fn touch(&self, session: &Session, ip: String) {
        let mut spent = self.spent_refresh.lock();
        if spent.len() > LAST_SEEN_CAPACITY {
            spent.clear();
        }
        drop(spent);
        let mut seen = self.last_seen.lock();
        if seen.len() >= LAST_SEEN_CAPACITY {
            seen.clear();
        }
        seen.insert((session.user, session.device_id.clone()), (now_ms(), ip));
    }

    /// The most recent sighting of a device: in memory if seen since start, else as stored.
    pub fn last_seen(&self, user: ShortId, device: &DeviceRecord) -> (Option<u64>, Option<String>) {
        match self.last_seen.lock().get(&(user, device.device_id.clone())) {
            Some((ts, ip)) => (Some(*ts), Some(ip.clone())),
            None => (device.last_seen_ts, device.last_seen_ip.clone()),
        }
    }

    pub fn users(&self) -> &users::Service {
        &self.users
    }
}
