//! Application services: the registrations loaded at start, who they let act as whom, and the
//! delivery of events to them. Each appservice has a durable queue (`appservice_queue`) that the
//! commit of every timeline event fills in the event's own batch (see [`rooms::Outbox`]), and
//! that to-device messages for its devices (see [`keys::KeysListener`]) and ephemeral events
//! (typing, receipts, presence) fill likewise. One worker per appservice drains it in order, one
//! transaction in flight at a time, the same transaction ID (and content) on every retry, with
//! exponential backoff, resumed after a restart. Appservices that keep their users' devices
//! themselves (MSC3202) also get device-list changes and one-time key counts, computed when a
//! transaction is made and recorded with it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use hearth_appservice::{Client, ClientError, DeviceLists, Registration, Transaction};
use parking_lot::Mutex;
use ruma::{
    events::room::member::MembershipState, CanonicalJsonObject, OwnedServerName, RoomAliasId,
    RoomId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, value::RawValue, Value as JsonValue};
use tokio::sync::{watch, Notify};

use crate::{
    error::{Error, ErrorKind, Result},
    service::{
        keys, rooms,
        stream::{EphemeralListener, EphemeralScope, Stream},
        users,
    },
    storage::{tables, tables::QueuedItem, Batch, Db, ShortId, Table},
};

/// Events per transaction (Synapse sends up to 100 too).
const MAX_EVENTS: usize = 100;

/// Rooms whose interest per appservice is kept; beyond this the cache starts over.
const INTEREST_CACHE: usize = 10_000;

/// An appservice's delivery record.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Delivery {
    /// Transactions made so far: the next one's ID is this plus one.
    #[serde(default)]
    made: u64,
    /// The key-change position up to which the appservice has its device-list changes.
    #[serde(default)]
    keys_acked: u64,
    #[serde(default)]
    in_flight: Option<InFlight>,
}

/// The transaction being delivered. Fixed before the first attempt, so a retry (or a restart)
/// sends exactly the same content under the same ID: the queue rows in `rows` (inclusive; only
/// positions that were published when it was made, so no row can land in the range later), and
/// the device data computed then.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct InFlight {
    txn: u64,
    rows: Option<(u64, u64)>,
    keys_upto: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_lists: Option<DeviceLists>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    one_time_keys_count: Option<JsonValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unused_fallback_key_types: Option<JsonValue>,
}

/// A queued row that is not an event.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum QueuedEdu {
    /// A to-device message for one of the appservice's devices, as sent (with MSC4203's
    /// `to_user_id` and `to_device_id`).
    ToDevice {
        user: String,
        device: String,
        event: JsonValue,
    },
    /// Typing, a receipt or presence, as sent.
    Ephemeral(JsonValue),
}

/// The content of a transaction's queue rows, as sent.
#[derive(Default)]
struct Loaded {
    events: Vec<Box<RawValue>>,
    ephemeral: Vec<Box<RawValue>>,
    to_device: Vec<Box<RawValue>>,
    /// The devices the to-device messages are for.
    recipients: BTreeSet<(ShortId, String)>,
}

/// What a worker does next.
enum Next {
    Send(Box<(InFlight, Loaded)>),
    /// Nothing to send; `unpublished` when rows wait for the stream position to be published.
    Idle {
        unpublished: bool,
    },
}

/// A room's interest per appservice, with the state group and alias generation it was
/// computed at.
type Interest = (u64, u64, Arc<Vec<bool>>);

/// One appservice's delivery state, for the admin API.
#[derive(Debug, Serialize)]
pub struct QueueState {
    pub id: String,
    pub url: Option<String>,
    /// Events waiting, the in-flight transaction's included.
    pub queued: u64,
    /// Failed attempts in a row of the current transaction.
    pub failures: u32,
    /// The last error, while failing.
    pub last_error: Option<String>,
}

struct Worker {
    wake: Notify,
    failures: std::sync::atomic::AtomicU32,
    last_error: Mutex<Option<String>>,
    /// Devices whose one-time key counts changed (a claim) since the last transaction was made.
    claimed: Mutex<BTreeSet<(ShortId, String)>>,
}

pub struct Service {
    db: Db,
    server_name: OwnedServerName,
    registrations: Vec<Arc<Registration>>,
    by_token: HashMap<String, usize>,
    workers: Vec<Arc<Worker>>,
    client: Client,
    rooms: Arc<rooms::Service>,
    users: Arc<users::Service>,
    keys: Arc<keys::Service>,
    stream: Arc<Stream>,
    queue: Table<tables::AppserviceQueue>,
    delivery: Table<tables::AppserviceTxns<Delivery>>,
    /// Per room: the state group and alias generation its interest was computed at, and for
    /// each appservice whether a member, the room ID or an alias makes it interested.
    interest: Mutex<HashMap<ShortId, Interest>>,
    min_backoff: Duration,
    max_backoff: Duration,
}

/// What the service depends on besides its registrations.
pub struct Deps {
    pub rooms: Arc<rooms::Service>,
    pub users: Arc<users::Service>,
    pub keys: Arc<keys::Service>,
    pub stream: Arc<Stream>,
}

impl Service {
    pub fn new(
        db: Db,
        server_name: OwnedServerName,
        registrations: Vec<Registration>,
        deps: Deps,
        timeout: Duration,
        max_backoff: Duration,
    ) -> Result<Self> {
        let registrations: Vec<Arc<Registration>> =
            registrations.into_iter().map(Arc::new).collect();
        let by_token = registrations
            .iter()
            .enumerate()
            .map(|(i, r)| (r.as_token.clone(), i))
            .collect();
        let workers = registrations
            .iter()
            .map(|_| {
                Arc::new(Worker {
                    wake: Notify::new(),
                    failures: Default::default(),
                    last_error: Mutex::new(None),
                    claimed: Mutex::new(BTreeSet::new()),
                })
            })
            .collect();
        Ok(Self {
            queue: Table::new(&db),
            delivery: Table::new(&db),
            db,
            server_name,
            registrations,
            by_token,
            workers,
            client: Client::new(timeout).map_err(Error::internal)?,
            rooms: deps.rooms,
            users: deps.users,
            keys: deps.keys,
            stream: deps.stream,
            interest: Mutex::new(HashMap::new()),
            min_backoff: Duration::from_millis(250),
            max_backoff,
        })
    }

    pub fn registrations(&self) -> &[Arc<Registration>] {
        &self.registrations
    }

    /// The appservice whose `as_token` this is.
    pub fn by_as_token(&self, token: &str) -> Option<&Arc<Registration>> {
        self.by_token.get(token).map(|i| &self.registrations[*i])
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<Registration>> {
        self.registrations.iter().find(|r| r.id == id)
    }

    /// The appservice holding this user ID exclusively (its sender, or an exclusive namespace).
    pub fn exclusive_user(&self, user_id: &UserId) -> Option<&Arc<Registration>> {
        if user_id.server_name() != self.server_name {
            return None;
        }
        self.registrations.iter().find(|r| {
            user_id.localpart() == r.sender_localpart
                || r.users.is_exclusive_match(user_id.as_str())
        })
    }

    /// The appservice holding this alias exclusively.
    pub fn exclusive_alias(&self, alias: &RoomAliasId) -> Option<&Arc<Registration>> {
        self.registrations
            .iter()
            .find(|r| r.aliases.is_exclusive_match(alias.as_str()))
    }

    /// Refuses a user ID that an appservice other than `caller` holds exclusively.
    pub fn check_user_free(&self, user_id: &UserId, caller: Option<&Registration>) -> Result<()> {
        match self.exclusive_user(user_id) {
            Some(owner) if caller.is_none_or(|c| c.id != owner.id) => Err(Error::matrix(
                ErrorKind::Exclusive,
                "This user ID is reserved by an application service",
            )),
            _ => Ok(()),
        }
    }

    /// Whether `caller` may create or delete this alias: an appservice only in its namespaces,
    /// anyone else only outside the exclusive namespaces of appservices.
    pub fn check_alias(&self, alias: &RoomAliasId, caller: Option<&Registration>) -> Result<()> {
        let exclusive = |m: &str| Err(Error::matrix(ErrorKind::Exclusive, m.to_owned()));
        match caller {
            Some(reg) if !reg.aliases.is_match(alias.as_str()) => {
                exclusive("This alias is outside the application service's namespace")
            }
            Some(reg) if self.exclusive_alias(alias).is_some_and(|o| o.id != reg.id) => {
                exclusive("This alias is reserved by another application service")
            }
            Some(_) => Ok(()),
            None if self.exclusive_alias(alias).is_some() => {
                exclusive("This alias is reserved by an application service")
            }
            None => Ok(()),
        }
    }

    /// Whether a local user exists. One that does not yet but is in an appservice's namespace
    /// is asked of that appservice (`GET /_matrix/app/v1/users/{userId}`), which creates it
    /// before it answers yes.
    pub async fn user_exists(&self, user_id: &UserId) -> Result<bool> {
        if self.users.exists(user_id)? {
            return Ok(true);
        }
        if user_id.server_name() != self.server_name {
            return Ok(false);
        }
        for reg in &self.registrations {
            if reg.url.is_none() || !reg.users.is_match(user_id.as_str()) {
                continue;
            }
            match self.client.query_user(reg, user_id.as_str()).await {
                Ok(true) if self.users.exists(user_id)? => return Ok(true),
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(appservice = %reg.id, %user_id, "user query failed: {e}")
                }
            }
        }
        Ok(false)
    }

    /// The room a local alias points at. An alias not known yet but in an appservice's
    /// namespace is asked of that appservice (`GET /_matrix/app/v1/rooms/{roomAlias}`), which
    /// creates the room and the alias before it answers yes.
    pub async fn resolve_alias(
        &self,
        alias: &RoomAliasId,
    ) -> Result<Option<rooms::alias::AliasRecord>> {
        if let Some(record) = self.rooms.aliases.resolve_alias(alias)? {
            return Ok(Some(record));
        }
        if !self.rooms.aliases.is_local_alias(alias) {
            return Ok(None);
        }
        for reg in &self.registrations {
            if reg.url.is_none() || !reg.aliases.is_match(alias.as_str()) {
                continue;
            }
            match self.client.query_alias(reg, alias.as_str()).await {
                Ok(true) => {
                    if let Some(record) = self.rooms.aliases.resolve_alias(alias)? {
                        return Ok(Some(record));
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::info!(appservice = %reg.id, %alias, "alias query failed: {e}"),
            }
        }
        Ok(None)
    }

    /// The third-party protocols the appservices bridge to (`/thirdparty/protocols`), each as
    /// its appservices describe it, with the instances of all of them; each instance gets an
    /// `instance_id` (`appservice ID|network ID`) that `/publicRooms` accepts as
    /// `third_party_instance_id`.
    pub async fn protocols(&self, only: Option<&str>) -> Result<BTreeMap<String, JsonValue>> {
        let mut out: BTreeMap<String, JsonValue> = BTreeMap::new();
        for reg in &self.registrations {
            if reg.url.is_none() {
                continue;
            }
            for protocol in &reg.protocols {
                if only.is_some_and(|p| p != protocol) {
                    continue;
                }
                let path = format!("protocol/{}", encode(protocol));
                let mut info = match self.client.thirdparty(reg, &path, &[]).await {
                    Ok(JsonValue::Object(info)) => info,
                    Ok(_) | Err(_) => {
                        tracing::info!(appservice = %reg.id, %protocol, "no protocol description");
                        continue;
                    }
                };
                let mut instances = match info.remove("instances") {
                    Some(JsonValue::Array(i)) => i,
                    _ => Vec::new(),
                };
                for instance in &mut instances {
                    let network = instance.get("network_id").and_then(JsonValue::as_str);
                    if let Some(network) = network {
                        instance["instance_id"] = format!("{}|{network}", reg.id).into();
                    }
                }
                match out.get_mut(protocol) {
                    Some(existing) => {
                        if let Some(list) = existing["instances"].as_array_mut() {
                            list.extend(instances);
                        }
                    }
                    None => {
                        info.insert("instances".into(), instances.into());
                        out.insert(protocol.clone(), JsonValue::Object(info));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Third-party locations or users (`kind`: "location" | "user"), from every appservice
    /// that bridges `protocol` (or from all, for a look-up by alias or user ID), concatenated.
    /// An appservice that fails to answer is left out.
    pub async fn thirdparty_lookup(
        &self,
        kind: &str,
        protocol: Option<&str>,
        query: &[(String, String)],
    ) -> Result<Vec<JsonValue>> {
        let mut out = Vec::new();
        let path = match protocol {
            Some(p) => format!("{kind}/{}", encode(p)),
            None => kind.to_owned(),
        };
        for reg in &self.registrations {
            if reg.url.is_none() || protocol.is_some_and(|p| !reg.protocols.iter().any(|q| q == p))
            {
                continue;
            }
            match self.client.thirdparty(reg, &path, query).await {
                Ok(JsonValue::Array(found)) => out.extend(found),
                Ok(_) => tracing::info!(appservice = %reg.id, %path, "not a list"),
                Err(e) => tracing::info!(appservice = %reg.id, %path, "look-up failed: {e}"),
            }
        }
        Ok(out)
    }

    /// Whether a local user is in an appservice's namespace (and so its events are of interest).
    fn is_ours(&self, reg: &Registration, user: &str) -> bool {
        UserId::parse(user)
            .is_ok_and(|u| u.server_name() == self.server_name && reg.is_user_ours(&u))
    }

    /// For each appservice, whether the room itself interests it: a joined or invited member in
    /// its namespace, its room ID, or one of its aliases.
    fn room_interest(&self, room: ShortId, room_id: &RoomId) -> Result<Arc<Vec<bool>>> {
        let group = self
            .rooms
            .state
            .meta(room)?
            .map(|m| m.state_group)
            .unwrap_or_default();
        // Aliases change interest without a state change.
        let generation = self.rooms.aliases.generation();
        if let Some((g, a, cached)) = self.interest.lock().get(&room) {
            if *g == group && *a == generation {
                return Ok(cached.clone());
            }
        }
        let mut members = Vec::new();
        for (user, m) in self.rooms.membership.members(room)? {
            if matches!(
                m.membership(),
                MembershipState::Join | MembershipState::Invite
            ) {
                members.push(self.rooms.events.user_id_of(user)?);
            }
        }
        let aliases = self.rooms.aliases.room_aliases(room)?;
        let out: Vec<bool> = self
            .registrations
            .iter()
            .map(|r| {
                r.rooms.is_match(room_id.as_str())
                    || aliases.iter().any(|a| r.aliases.is_match(a.as_str()))
                    || members
                        .iter()
                        .any(|u| u.server_name() == self.server_name && r.is_user_ours(u))
            })
            .collect();
        let out = Arc::new(out);
        let mut cache = self.interest.lock();
        if cache.len() >= INTEREST_CACHE {
            cache.clear();
        }
        cache.insert(room, (group, generation, out.clone()));
        Ok(out)
    }

    /// Runs one worker per appservice with a URL until `stop`.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, reg) in self.registrations.iter().enumerate() {
            if reg.url.is_some() {
                tasks.spawn(self.clone().work(i, stop.clone()));
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn work(self: Arc<Self>, i: usize, mut stop: watch::Receiver<bool>) {
        let reg = self.registrations[i].clone();
        let worker = self.workers[i].clone();
        loop {
            // Registered before reading, so rows written meanwhile wake us.
            let woken = worker.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let mut published = self.stream.watch();
            published.mark_unchanged();
            let next = match self.next_transaction(i, &reg) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(appservice = %reg.id, "cannot read the appservice queue: {e}");
                    Next::Idle { unpublished: false }
                }
            };
            let (txn, loaded) = match next {
                Next::Send(send) => *send,
                Next::Idle { unpublished } => {
                    tokio::select! {
                        _ = &mut woken => {}
                        // Rows whose position is not published yet: a write below them is
                        // still landing.
                        Ok(()) = published.changed(), if unpublished => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    continue;
                }
            };
            let transaction = Transaction {
                events: refs(&loaded.events),
                ephemeral: refs(&loaded.ephemeral),
                msc2409_ephemeral: refs(&loaded.ephemeral),
                to_device: refs(&loaded.to_device),
                device_lists: txn.device_lists.clone(),
                one_time_keys_count: txn.one_time_keys_count.clone(),
                unused_fallback_key_types: txn.unused_fallback_key_types.clone(),
            };
            let txn_id = txn.txn.to_string();
            let sent = tokio::select! {
                r = self.client.push(&reg, &txn_id, &transaction) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match sent {
                Ok(()) => {
                    worker.failures.store(0, Ordering::SeqCst);
                    *worker.last_error.lock() = None;
                    if let Err(e) = self.acknowledged(&reg, &txn).await {
                        tracing::error!(appservice = %reg.id, "cannot clear delivered rows: {e}");
                    }
                }
                Err(e) => {
                    let failures = worker.failures.fetch_add(1, Ordering::SeqCst) + 1;
                    let wait = self
                        .min_backoff
                        .saturating_mul(1u32 << failures.min(20).saturating_sub(1))
                        .min(self.max_backoff);
                    tracing::info!(appservice = %reg.id, failures, ?wait, "transaction failed, backing off: {e}");
                    *worker.last_error.lock() = Some(e.to_string());
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }

    /// The transaction to deliver next: the one in flight, or a new one over the oldest
    /// published rows and the device data that changed (recorded as in flight before it is
    /// first sent).
    fn next_transaction(&self, i: usize, reg: &Registration) -> Result<Next> {
        let id = reg.id.as_str();
        let mut delivery = self.delivery.get(id)?.unwrap_or_default();
        if let Some(txn) = delivery.in_flight.clone() {
            let loaded = self.load_rows(reg, txn.rows)?;
            return Ok(Next::Send(Box::new((txn, loaded))));
        }
        let published = self.stream.current();
        let mut rows: Option<(u64, u64)> = None;
        let mut unpublished = false;
        for (count, row) in self.queue.scan((id,)).keys().enumerate() {
            let (_, pos) = row?;
            if pos > published {
                unpublished = true;
                break;
            }
            if count >= MAX_EVENTS {
                break;
            }
            rows = Some((rows.map_or(pos, |r| r.0), pos));
        }
        let mut loaded = self.load_rows(reg, rows)?;
        let mut txn = InFlight {
            txn: delivery.made + 1,
            rows,
            keys_upto: delivery.keys_acked,
            device_lists: None,
            one_time_keys_count: None,
            unused_fallback_key_types: None,
        };
        // Claims are forgotten only once the transaction carrying their counts is recorded.
        let claimed = self.workers[i].claimed.lock().clone();
        if reg.device_data {
            txn.keys_upto = published.max(delivery.keys_acked);
            let lists =
                self.device_lists(i, reg, delivery.keys_acked, published, &loaded.events)?;
            if !lists.changed.is_empty() || !lists.left.is_empty() {
                txn.device_lists = Some(lists);
            }
            let mut devices = claimed.clone();
            devices.append(&mut loaded.recipients);
            self.key_counts(&devices, &mut txn)?;
        }
        if rows.is_none() && txn.device_lists.is_none() && txn.one_time_keys_count.is_none() {
            if txn.keys_upto > delivery.keys_acked {
                // Key changes that concern none of the appservice's users: passed over.
                delivery.keys_acked = txn.keys_upto;
                let mut b = Batch::new();
                self.delivery.put_in(&mut b, id, &delivery);
                self.db.kv().write(b)?;
            }
            return Ok(Next::Idle { unpublished });
        }
        delivery.made = txn.txn;
        delivery.in_flight = Some(txn.clone());
        let mut b = Batch::new();
        self.delivery.put_in(&mut b, id, &delivery);
        self.db.kv().write(b)?;
        let mut left = self.workers[i].claimed.lock();
        for d in &claimed {
            left.remove(d);
        }
        drop(left);
        Ok(Next::Send(Box::new((txn, loaded))))
    }

    /// The queue rows in `rows`, as sent.
    fn load_rows(&self, reg: &Registration, rows: Option<(u64, u64)>) -> Result<Loaded> {
        let mut out = Loaded::default();
        let Some((first, last)) = rows else {
            return Ok(out);
        };
        let raw = |v: &JsonValue| serde_json::value::to_raw_value(v).map_err(Error::internal);
        for row in self.queue.range(
            (reg.id.as_str(), first),
            (reg.id.as_str(), last.saturating_add(1)),
        ) {
            let (_, item) = row?;
            match item {
                QueuedItem::Pdu(event) => {
                    if let Some(json) = self.client_event(event)? {
                        out.events.push(json);
                    }
                }
                QueuedItem::Edu(bytes) => match serde_json::from_slice::<QueuedEdu>(&bytes) {
                    Ok(QueuedEdu::Ephemeral(event)) => out.ephemeral.push(raw(&event)?),
                    Ok(QueuedEdu::ToDevice {
                        user,
                        device,
                        event,
                    }) => {
                        if let Some(short) = UserId::parse(user.as_str())
                            .ok()
                            .and_then(|u| self.users.short_id(&u).ok().flatten())
                        {
                            out.recipients.insert((short, device));
                        }
                        out.to_device.push(raw(&event)?);
                    }
                    Err(e) => tracing::error!(appservice = %reg.id, "unreadable queued row: {e}"),
                },
            }
        }
        Ok(out)
    }

    /// Device-list changes for an appservice: users whose keys changed in (since, upto] and who
    /// are its own or share a room it watches, users who joined such a room in `events`
    /// (`changed`), and users who left one in `events` and share none of them any more (`left`).
    fn device_lists(
        &self,
        i: usize,
        reg: &Registration,
        since: u64,
        upto: u64,
        events: &[Box<RawValue>],
    ) -> Result<DeviceLists> {
        let mut changed = BTreeSet::new();
        let mut left = BTreeSet::new();
        if upto > since {
            for user in self.keys.changed_users(since, upto)? {
                let user_id = self.rooms.events.user_id_of(user)?;
                if self.is_ours(reg, user_id.as_str()) || self.shares_watched_room(i, user)? {
                    changed.insert(user_id.to_string());
                }
            }
        }
        #[derive(Deserialize)]
        struct Member<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            #[serde(default)]
            state_key: Option<&'a str>,
            #[serde(default)]
            content: Option<MemberContent<'a>>,
        }
        #[derive(Deserialize)]
        struct MemberContent<'a> {
            #[serde(default)]
            membership: Option<&'a str>,
        }
        for event in events {
            let Ok(m) = serde_json::from_str::<Member>(event.get()) else {
                continue;
            };
            let (Some(user), Some(membership)) =
                (m.state_key, m.content.and_then(|c| c.membership))
            else {
                continue;
            };
            if m.kind != "m.room.member" || self.is_ours(reg, user) {
                continue;
            }
            match membership {
                "join" => {
                    left.remove(user);
                    changed.insert(user.to_owned());
                }
                "leave" | "ban" => {
                    let Some(short) = UserId::parse(user)
                        .ok()
                        .and_then(|u| self.users.short_id(&u).ok().flatten())
                    else {
                        continue;
                    };
                    if !self.shares_watched_room(i, short)? {
                        changed.remove(user);
                        left.insert(user.to_owned());
                    }
                }
                _ => {}
            }
        }
        Ok(DeviceLists {
            changed: changed.into_iter().collect(),
            left: left.into_iter().collect(),
        })
    }

    /// Whether a user is joined to a room that interests appservice `i`.
    fn shares_watched_room(&self, i: usize, user: ShortId) -> Result<bool> {
        for (room, m) in self.rooms.membership.memberships(user)? {
            if m.membership() != MembershipState::Join {
                continue;
            }
            let room_id = self.rooms.events.room_id_of(room)?;
            if self.room_interest(room, &room_id)?[i] {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One-time key counts and unused fallback key types of these devices, in `txn`.
    fn key_counts(&self, devices: &BTreeSet<(ShortId, String)>, txn: &mut InFlight) -> Result<()> {
        if devices.is_empty() {
            return Ok(());
        }
        let mut counts: BTreeMap<String, BTreeMap<String, JsonValue>> = BTreeMap::new();
        let mut fallbacks: BTreeMap<String, BTreeMap<String, JsonValue>> = BTreeMap::new();
        for (user, device) in devices {
            let user_id = self.rooms.events.user_id_of(*user)?.to_string();
            let c = self.keys.one_time_key_counts(*user, device)?;
            let f = self.keys.unused_fallback_types(*user, device)?;
            counts
                .entry(user_id.clone())
                .or_default()
                .insert(device.clone(), json!(c));
            fallbacks
                .entry(user_id)
                .or_default()
                .insert(device.clone(), json!(f));
        }
        txn.one_time_keys_count = Some(json!(counts));
        txn.unused_fallback_key_types = Some(json!(fallbacks));
        Ok(())
    }

    fn client_event(&self, event: ShortId) -> Result<Option<Box<RawValue>>> {
        let Some(meta) = self.rooms.events.event_meta(event)? else {
            return Ok(None);
        };
        let room_id = self.rooms.events.room_id_of(meta.room)?;
        let Some(json) = self.rooms.timeline.client_event(event, &room_id)? else {
            return Ok(None);
        };
        Ok(Some(
            serde_json::value::to_raw_value(&json).map_err(Error::internal)?,
        ))
    }

    /// Deletes a delivered transaction's rows and clears it from the delivery record, in one
    /// write.
    async fn acknowledged(&self, reg: &Registration, txn: &InFlight) -> Result<()> {
        let id = reg.id.as_str();
        let mut b = Batch::new();
        if let Some((first, last)) = txn.rows {
            for row in self
                .queue
                .range((id, first), (id, last.saturating_add(1)))
                .keys()
            {
                let (_, pos) = row?;
                self.queue.delete_in(&mut b, (id, pos));
            }
        }
        let mut delivery = self.delivery.get(id)?.unwrap_or_default();
        delivery.keys_acked = delivery.keys_acked.max(txn.keys_upto);
        delivery.in_flight = None;
        self.delivery.put_in(&mut b, id, &delivery);
        self.db.write(b).await?;
        Ok(())
    }

    /// Wakes every worker: rows were written.
    pub fn wake(&self) {
        for w in &self.workers {
            w.wake.notify_one();
        }
    }

    /// Each appservice's delivery state.
    pub fn queue_states(&self) -> Result<Vec<QueueState>> {
        let mut out = Vec::new();
        for (reg, worker) in self.registrations.iter().zip(&self.workers) {
            let queued = self.queue.scan((reg.id.as_str(),)).count() as u64;
            out.push(QueueState {
                id: reg.id.clone(),
                url: reg.url.clone(),
                queued,
                failures: worker.failures.load(Ordering::SeqCst),
                last_error: worker.last_error.lock().clone(),
            });
        }
        Ok(out)
    }

    /// Pings an appservice (`POST /_matrix/app/v1/ping`), as its client asked.
    pub async fn ping(&self, reg: &Registration, transaction_id: Option<&str>) -> Result<u64> {
        if reg.url.is_none() {
            return Err(Error::matrix(
                ErrorKind::UrlNotSet,
                "The application service has no URL",
            ));
        }
        let started = std::time::Instant::now();
        match self.client.ping(reg, transaction_id).await {
            Ok(()) => Ok(started.elapsed().as_millis() as u64),
            Err(ClientError::Timeout) => Err(Error::upstream_timeout_kind(
                ErrorKind::ConnectionTimeout,
                "The application service did not answer in time",
            )),
            Err(ClientError::Status {
                status,
                errcode,
                body,
            }) => Err(Error::upstream_bad_status(
                status,
                body,
                format!(
                    "The application service answered {status}{}",
                    errcode.map(|c| format!(" {c}")).unwrap_or_default()
                ),
            )),
            Err(e) => Err(Error::upstream_kind(
                ErrorKind::ConnectionFailed,
                e.to_string(),
            )),
        }
    }
}

impl rooms::Outbox for Service {
    fn queue_in(
        &self,
        batch: &mut Batch,
        room: ShortId,
        room_id: &RoomId,
        events: &[(ShortId, &CanonicalJsonObject)],
    ) -> Result<()> {
        if self.registrations.is_empty() {
            return Ok(());
        }
        let interest = self.room_interest(room, room_id)?;
        for (event, object) in events {
            let str_field = |name: &str| object.get(name).and_then(|v| v.as_str());
            for (i, reg) in self.registrations.iter().enumerate() {
                if reg.url.is_none() {
                    continue;
                }
                let interested = interest[i]
                    || str_field("sender").is_some_and(|s| self.is_ours(reg, s))
                    || str_field("state_key").is_some_and(|s| self.is_ours(reg, s));
                if interested {
                    self.queue
                        .put_in(batch, (reg.id.as_str(), *event), &QueuedItem::Pdu(*event));
                }
            }
        }
        Ok(())
    }

    fn written(&self, _room: ShortId) {
        self.wake();
    }
}

impl EphemeralListener for Service {
    /// Queues typing or a receipt for every appservice that receives ephemeral events and
    /// watches the room, a private receipt for the one owning its user, presence for those
    /// owning the user or watching a room they are in.
    fn ephemeral_in(
        &self,
        batch: &mut Batch,
        pos: u64,
        scope: EphemeralScope<'_>,
        event: &JsonValue,
    ) -> Result<bool> {
        if !self
            .registrations
            .iter()
            .any(|r| r.receive_ephemeral && r.url.is_some())
        {
            return Ok(false);
        }
        let interest = match scope {
            EphemeralScope::Room(room, room_id) => Some(self.room_interest(room, room_id)?),
            _ => None,
        };
        let mut event = event.clone();
        let user_id = match scope {
            EphemeralScope::Private(user) | EphemeralScope::Presence(user) => {
                Some(self.rooms.events.user_id_of(user)?)
            }
            EphemeralScope::Room(..) => None,
        };
        if let (EphemeralScope::Presence(_), Some(u)) = (&scope, &user_id) {
            event["sender"] = u.as_str().into();
        }
        let row = serde_json::to_vec(&QueuedEdu::Ephemeral(event)).map_err(Error::internal)?;
        let mut queued = false;
        for (i, reg) in self.registrations.iter().enumerate() {
            if reg.url.is_none() || !reg.receive_ephemeral {
                continue;
            }
            let wanted = match (&scope, &interest, &user_id) {
                (EphemeralScope::Room(..), Some(interest), _) => interest[i],
                (EphemeralScope::Private(_), _, Some(u)) => self.is_ours(reg, u.as_str()),
                (EphemeralScope::Presence(user), _, Some(u)) => {
                    self.is_ours(reg, u.as_str()) || self.shares_watched_room(i, *user)?
                }
                _ => false,
            };
            if wanted {
                self.queue
                    .put_in(batch, (reg.id.as_str(), pos), &QueuedItem::Edu(row.clone()));
                queued = true;
            }
        }
        Ok(queued)
    }

    fn written(&self) {
        self.wake();
    }
}

impl keys::KeysListener for Service {
    fn to_device_in(
        &self,
        batch: &mut Batch,
        pos: u64,
        user: ShortId,
        device: &str,
        message: &keys::ToDeviceMessage,
    ) -> Result<bool> {
        if !self
            .registrations
            .iter()
            .any(|r| r.device_data && r.receive_ephemeral)
        {
            return Ok(false);
        }
        let user_id = self.rooms.events.user_id_of(user)?;
        // Only the appservice that holds the user exclusively (its sender or an exclusive
        // namespace) takes the message from the inbox: a user a shared namespace merely matches
        // may be a person whose own clients read it.
        let Some(owner) = self.exclusive_user(&user_id) else {
            return Ok(false);
        };
        let mut taken = false;
        for reg in &self.registrations {
            if reg.id != owner.id
                || reg.url.is_none()
                || !(reg.device_data && reg.receive_ephemeral)
            {
                continue;
            }
            let row = QueuedEdu::ToDevice {
                user: user_id.to_string(),
                device: device.to_owned(),
                event: json!({
                    "type": message.kind,
                    "sender": message.sender,
                    "content": message.content,
                    "to_user_id": user_id,
                    "to_device_id": device,
                }),
            };
            let row = serde_json::to_vec(&row).map_err(Error::internal)?;
            self.queue
                .put_in(batch, (reg.id.as_str(), pos), &QueuedItem::Edu(row));
            taken = true;
        }
        Ok(taken)
    }

    fn written(&self) {
        self.wake();
    }

    fn keys_claimed(&self, user: ShortId, device: &str) {
        let Ok(user_id) = self.rooms.events.user_id_of(user) else {
            return;
        };
        for (reg, worker) in self.registrations.iter().zip(&self.workers) {
            if reg.url.is_some() && reg.device_data && self.is_ours(reg, user_id.as_str()) {
                worker.claimed.lock().insert((user, device.to_owned()));
                worker.wake.notify_one();
            }
        }
    }
}

fn refs(v: &[Box<RawValue>]) -> Vec<&RawValue> {
    v.iter().map(AsRef::as_ref).collect()
}

/// Percent-encodes one path segment.
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
