//! Pushers: where a user's phones want their notifications sent (`/pushers/set`). Every pusher
//! is kept in memory as well as in `pushers` (a handful per user, read at start), so the commit of
//! each event can tell at once whose notifications must also be queued for a gateway.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ruma::{
    api::client::push::{Pusher, PusherIds, PusherKind},
    push::PushFormat,
    serde::JsonObject,
    OwnedUserId,
};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::Service;
use crate::{
    error::{Error, Result},
    service::media::preview::AddressPolicy,
    storage::{Batch, ShortId},
};

/// The path every push gateway answers on (Push Gateway API).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// The longest `app_id` (characters) and `pushkey` (bytes) the spec allows.
const MAX_APP_ID: usize = 64;
const MAX_PUSHKEY: usize = 512;

/// A pusher as stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredPusher {
    /// A stream position taken when the pusher was first set: the key of its queue.
    pub id: u64,
    /// The pusher as the client set it, as /pushers lists it.
    pub pusher: JsonValue,
    /// The device whose access token set it: the pusher goes when that device does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// When it was last set (ms since the epoch).
    pub ts: u64,
}

/// An HTTP pusher, ready to deliver to.
pub struct Active {
    pub id: u64,
    pub user: ShortId,
    pub user_id: OwnedUserId,
    pub app_id: String,
    pub pushkey: String,
    pub url: reqwest::Url,
    pub event_id_only: bool,
    /// The pusher's `data` without `url`, as gateways get it.
    pub data: JsonObject,
    /// Seconds since the epoch.
    pub pushkey_ts: u64,
}

/// Every pusher, by ID and by user.
#[derive(Default)]
pub struct Index {
    by_id: HashMap<u64, Arc<Active>>,
    by_user: HashMap<ShortId, Vec<u64>>,
}

impl Index {
    pub fn get(&self, id: u64) -> Option<Arc<Active>> {
        self.by_id.get(&id).cloned()
    }

    pub fn of_user(&self, user: ShortId) -> &[u64] {
        self.by_user.get(&user).map_or(&[], Vec::as_slice)
    }

    fn insert(&mut self, active: Active) {
        let (id, user) = (active.id, active.user);
        self.by_id.insert(id, Arc::new(active));
        let ids = self.by_user.entry(user).or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(a) = self.by_id.remove(&id) {
            if let Some(ids) = self.by_user.get_mut(&a.user) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_user.remove(&a.user);
                }
            }
        }
    }
}

/// The deliverable form of a stored pusher; `None` for kinds Hearth does not deliver.
fn activate(user: ShortId, user_id: OwnedUserId, stored: &StoredPusher) -> Option<Active> {
    let pusher: Pusher = serde_json::from_value(stored.pusher.clone()).ok()?;
    let PusherKind::Http(http) = pusher.kind else {
        return None;
    };
    let url = reqwest::Url::parse(&http.url).ok()?;
    Some(Active {
        id: stored.id,
        user,
        user_id,
        app_id: pusher.ids.app_id,
        pushkey: pusher.ids.pushkey,
        url,
        event_id_only: http.format == Some(PushFormat::EventIdOnly),
        data: http.data,
        pushkey_ts: stored.ts / 1000,
    })
}

/// Checks an HTTP pusher's URL: http(s), the notify path, an address the server may reach.
async fn check_url(policy: &AddressPolicy, url: &str) -> Result<()> {
    let url = reqwest::Url::parse(url)
        .map_err(|e| Error::invalid_param(format!("data.url is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::invalid_param(
            "data.url must be an http or https URL",
        ));
    }
    if url.path() != NOTIFY_PATH {
        return Err(Error::invalid_param(format!(
            "data.url must end in {NOTIFY_PATH}"
        )));
    }
    let refused = || {
        Error::invalid_param(
            "data.url points at an address this server may not contact (see push.ip_range_allow)",
        )
    };
    let ips: Vec<IpAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
        Some(url::Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
        Some(url::Host::Domain(domain)) => {
            let port = url.port_or_known_default().unwrap_or(443);
            // A name that does not resolve now may later; every delivery checks again.
            match tokio::net::lookup_host((domain, port)).await {
                Ok(addrs) => addrs.map(|a: SocketAddr| a.ip()).collect(),
                Err(_) => Vec::new(),
            }
        }
        None => return Err(Error::invalid_param("data.url has no host")),
    };
    if ips.iter().any(|ip| !policy.permits(*ip)) {
        return Err(refused());
    }
    Ok(())
}

impl Service {
    /// Reads every stored pusher into memory (at start).
    pub(super) fn load_pushers(&self) -> Result<()> {
        let mut index = Index::default();
        for row in self.pushers.iter() {
            let ((user, _, _), stored) = row?;
            let user_id = self.rooms.events.user_id_of(user)?;
            if let Some(active) = activate(user, user_id, &stored) {
                index.insert(active);
            }
        }
        *self.index.write() = index;
        Ok(())
    }

    /// A user's pushers, as /pushers lists them.
    pub fn pushers(&self, user: ShortId) -> Result<Vec<Pusher>> {
        let mut out = Vec::new();
        for row in self.pushers.scan((user,)) {
            let (_, stored) = row?;
            match serde_json::from_value(stored.pusher) {
                Ok(p) => out.push(p),
                Err(e) => tracing::warn!("stored pusher unreadable: {e}"),
            }
        }
        Ok(out)
    }

    /// Creates or replaces a pusher (`/pushers/set`). Without `append`, the same app and
    /// pushkey registered by other users go: a phone now signed in as this user must not keep
    /// receiving someone else's notifications.
    pub async fn set_pusher(
        &self,
        user: ShortId,
        user_id: &ruma::UserId,
        device: Option<&str>,
        pusher: Pusher,
        append: bool,
    ) -> Result<()> {
        let ids = &pusher.ids;
        if ids.app_id.is_empty() || ids.app_id.chars().count() > MAX_APP_ID {
            return Err(Error::invalid_param(format!(
                "app_id must be 1 to {MAX_APP_ID} characters"
            )));
        }
        if ids.pushkey.is_empty() || ids.pushkey.len() > MAX_PUSHKEY {
            return Err(Error::invalid_param(format!(
                "pushkey must be 1 to {MAX_PUSHKEY} bytes"
            )));
        }
        match &pusher.kind {
            PusherKind::Http(http) => check_url(&self.policy, &http.url).await?,
            PusherKind::Email(_) => {
                return Err(Error::invalid_param(
                    "Email pushers are not supported: this server sends no email",
                ))
            }
            _ => {
                return Err(Error::invalid_param(
                    "kind must be \"http\" (or null to delete)",
                ))
            }
        }
        let _guard = self.pushers_write.lock().await;
        let key = (user, ids.app_id.as_str(), ids.pushkey.as_str());
        let mut batch = Batch::new();
        let mut reserved = self.stream.reserve();
        // A pusher set again keeps its queue: what was waiting goes to the new settings.
        let id = match self.pushers.get(key)? {
            Some(old) => old.id,
            None => reserved.position_in(&mut batch),
        };
        let stored = StoredPusher {
            id,
            pusher: serde_json::to_value(&pusher).map_err(Error::internal)?,
            device: device.map(str::to_owned),
            ts: now_ms(),
        };
        self.pushers.put_in(&mut batch, key, &stored);
        let mut gone = Vec::new();
        if !append {
            let index = self.index.read();
            for other in index.by_id.values() {
                if other.user != user && other.app_id == ids.app_id && other.pushkey == ids.pushkey
                {
                    gone.push((other.user, other.id));
                }
            }
        }
        for (other, other_id) in &gone {
            self.pushers.delete_in(
                &mut batch,
                (*other, ids.app_id.as_str(), ids.pushkey.as_str()),
            );
            self.queue.delete_prefix_in(&mut batch, (*other_id,))?;
        }
        reserved.write(&self.db, batch).await?;
        let mut index = self.index.write();
        for (_, other_id) in gone {
            index.remove(other_id);
        }
        index.remove(id);
        if let Some(active) = activate(user, user_id.to_owned(), &stored) {
            index.insert(active);
        }
        Ok(())
    }

    /// Deletes a user's pusher and whatever it had queued; deleting one that does not exist
    /// changes nothing.
    pub async fn delete_pusher(&self, user: ShortId, ids: &PusherIds) -> Result<()> {
        let _guard = self.pushers_write.lock().await;
        self.delete_locked(user, &[(ids.app_id.clone(), ids.pushkey.clone())])
            .await
    }

    /// Deletes the pushers that the given devices of a user set (their tokens are gone).
    pub async fn delete_pushers_of_devices(&self, user: ShortId, devices: &[&str]) -> Result<()> {
        let _guard = self.pushers_write.lock().await;
        let mut keys = Vec::new();
        for row in self.pushers.scan((user,)) {
            let ((_, app_id, pushkey), stored) = row?;
            if stored
                .device
                .as_deref()
                .is_some_and(|d| devices.contains(&d))
            {
                keys.push((app_id, pushkey));
            }
        }
        self.delete_locked(user, &keys).await
    }

    /// A pushkey the gateway rejected: its pusher goes, as the Push Gateway API says.
    pub(super) async fn reject(&self, active: &Active) -> Result<()> {
        let _guard = self.pushers_write.lock().await;
        // Only if it is still the pusher that was rejected, not one set again since.
        let key = (active.user, active.app_id.as_str(), active.pushkey.as_str());
        if self.pushers.get(key)?.is_some_and(|s| s.id == active.id) {
            tracing::info!(user = %active.user_id, app_id = %active.app_id, "push gateway rejected a pushkey: pusher removed");
            self.delete_locked(
                active.user,
                &[(active.app_id.clone(), active.pushkey.clone())],
            )
            .await?;
        }
        Ok(())
    }

    /// Deletes pushers and their queues; the caller holds `pushers_write`.
    async fn delete_locked(&self, user: ShortId, keys: &[(String, String)]) -> Result<()> {
        let mut batch = Batch::new();
        let mut ids = Vec::new();
        for (app_id, pushkey) in keys {
            let key = (user, app_id.as_str(), pushkey.as_str());
            if let Some(stored) = self.pushers.get(key)? {
                self.pushers.delete_in(&mut batch, key);
                self.queue.delete_prefix_in(&mut batch, (stored.id,))?;
                ids.push(stored.id);
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        self.db.write(batch).await?;
        let mut index = self.index.write();
        for id in ids {
            index.remove(id);
        }
        Ok(())
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
