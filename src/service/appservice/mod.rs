//! Application services: the registrations loaded at start, who they let act as whom, and the
//! delivery of events to them. Each appservice has a durable queue (`appservice_queue`) that the
//! commit of every timeline event fills in the event's own batch (see [`rooms::Outbox`]); one
//! worker per appservice drains it in order, one transaction in flight at a time, the same
//! transaction ID (and content) on every retry, with exponential backoff, resumed after a
//! restart.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use hearth_appservice::{Client, ClientError, Registration, Transaction};
use parking_lot::Mutex;
use ruma::{
    events::room::member::MembershipState, CanonicalJsonObject, OwnedServerName, RoomAliasId,
    RoomId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{watch, Notify};

use crate::{
    error::{Error, ErrorKind, Result},
    service::rooms,
    storage::{tables, Batch, Db, ShortId, Table},
};

/// Events per transaction (Synapse sends up to 100 too).
const MAX_EVENTS: usize = 100;

/// Rooms whose interest per appservice is kept; beyond this the cache starts over.
const INTEREST_CACHE: usize = 10_000;

/// The transaction being delivered to an appservice: the queue positions it covers, inclusive.
/// Fixed before the first attempt, so a retry (or a restart) sends exactly the same events.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct InFlight {
    first: u64,
    last: u64,
}

impl InFlight {
    fn txn_id(&self) -> String {
        format!("{}-{}", self.first, self.last)
    }
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
}

pub struct Service {
    db: Db,
    server_name: OwnedServerName,
    registrations: Vec<Arc<Registration>>,
    by_token: HashMap<String, usize>,
    workers: Vec<Arc<Worker>>,
    client: Client,
    rooms: Arc<rooms::Service>,
    queue: Table<tables::AppserviceQueue>,
    in_flight: Table<tables::AppserviceTxns<InFlight>>,
    /// Per room: the state group and alias generation its interest was computed at, and for
    /// each appservice whether a member, the room ID or an alias makes it interested.
    interest: Mutex<HashMap<ShortId, Interest>>,
    min_backoff: Duration,
    max_backoff: Duration,
}

impl Service {
    pub fn new(
        db: Db,
        server_name: OwnedServerName,
        registrations: Vec<Registration>,
        rooms: Arc<rooms::Service>,
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
                })
            })
            .collect();
        Ok(Self {
            queue: Table::new(&db),
            in_flight: Table::new(&db),
            db,
            server_name,
            registrations,
            by_token,
            workers,
            client: Client::new(timeout).map_err(Error::internal)?,
            rooms,
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
            Some(_) => Ok(()),
            None if self.exclusive_alias(alias).is_some() => {
                exclusive("This alias is reserved by an application service")
            }
            None => Ok(()),
        }
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
            let next = match self.next_transaction(&reg) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(appservice = %reg.id, "cannot read the appservice queue: {e}");
                    None
                }
            };
            let Some((range, events)) = next else {
                tokio::select! {
                    _ = &mut woken => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            };
            let raw: Vec<&RawValue> = events.iter().map(AsRef::as_ref).collect();
            let transaction = Transaction {
                events: raw,
                ..Default::default()
            };
            let txn_id = range.txn_id();
            let sent = tokio::select! {
                r = self.client.push(&reg, &txn_id, &transaction) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match sent {
                Ok(()) => {
                    worker.failures.store(0, Ordering::SeqCst);
                    *worker.last_error.lock() = None;
                    if let Err(e) = self.acknowledged(&reg, range).await {
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

    /// The transaction to deliver next: the one in flight, or a new one over the oldest rows
    /// (recorded as in flight before it is first sent).
    #[allow(clippy::type_complexity)]
    fn next_transaction(
        &self,
        reg: &Registration,
    ) -> Result<Option<(InFlight, Vec<Box<RawValue>>)>> {
        let fixed = self.in_flight.get(reg.id.as_str())?;
        let mut range: Option<InFlight> = None;
        let mut events = Vec::new();
        for row in self.queue.scan((reg.id.as_str(),)) {
            let ((_, pos), event) = row?;
            if let Some(f) = fixed {
                if pos < f.first {
                    continue;
                }
                if pos > f.last {
                    break;
                }
            } else if events.len() >= MAX_EVENTS {
                break;
            }
            range = Some(InFlight {
                first: range.map_or(pos, |r| r.first),
                last: pos,
            });
            if let Some(json) = self.client_event(event)? {
                events.push(json);
            }
        }
        let Some(mut range) = range else {
            if fixed.is_some() {
                // Nothing left of the recorded transaction (its rows went with a purge): forget
                // it, or newer rows would wait behind it forever.
                let mut b = Batch::new();
                self.in_flight.delete_in(&mut b, reg.id.as_str());
                self.db.kv().write(b)?;
                return self.next_transaction(reg);
            }
            return Ok(None);
        };
        match fixed {
            // The same bounds as first recorded, whatever is left of them.
            Some(f) => range = f,
            None => {
                let mut b = Batch::new();
                self.in_flight.put_in(&mut b, reg.id.as_str(), &range);
                self.db.kv().write(b)?;
            }
        }
        Ok(Some((range, events)))
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

    /// Deletes a delivered transaction's rows and its in-flight record, in one write.
    async fn acknowledged(&self, reg: &Registration, range: InFlight) -> Result<()> {
        let mut b = Batch::new();
        for row in self.queue.range(
            (reg.id.as_str(), range.first),
            (reg.id.as_str(), range.last.saturating_add(1)),
        ) {
            let ((_, pos), _) = row?;
            self.queue.delete_in(&mut b, (reg.id.as_str(), pos));
        }
        self.in_flight.delete_in(&mut b, reg.id.as_str());
        self.db.write(b).await?;
        Ok(())
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
                    self.queue.put_in(batch, (reg.id.as_str(), *event), event);
                }
            }
        }
        Ok(())
    }

    fn written(&self, _room: ShortId) {
        for w in &self.workers {
            w.wake.notify_one();
        }
    }
}
