//! The outgoing federation queue. Every destination has its rows in RocksDB (PDUs by event
//! short ID, written in the event's own batch; EDUs as JSON), sent in order as transactions of
//! at most 50 PDUs and 100 EDUs, one transaction in flight per destination. A destination that
//! fails is retried with exponential backoff, cut short when it talks to us again; the rows
//! survive restarts and are resumed at start.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use parking_lot::Mutex;
use ruma::{OwnedServerName, ServerName};
use serde_json::{json, Value as JsonValue};
use tokio::{
    sync::{mpsc::UnboundedReceiver, watch, Notify},
    task::JoinSet,
};

use crate::{
    error::{Error, Result},
    service::{federation, rooms, stream::Stream},
    storage::{
        tables::{self, QueuedItem},
        Batch, Db, Table,
    },
    util::now_ms,
};

/// The spec's limits on one transaction.
pub const MAX_PDUS: usize = 50;
pub const MAX_EDUS: usize = 100;

#[derive(Default)]
struct Destination {
    running: AtomicBool,
    /// Rung when the destination contacts us: a sleeping retry starts at once.
    back: Notify,
}

pub struct Service {
    db: Db,
    queue: Table<tables::FedQueue>,
    rooms: Arc<rooms::Service>,
    federation: Arc<federation::Service>,
    stream: Arc<Stream>,
    destinations: Mutex<HashMap<OwnedServerName, Arc<Destination>>>,
    min_backoff: Duration,
    max_backoff: Duration,
}

/// One transaction's worth of queued rows.
struct Pending {
    /// Sequence numbers of the rows.
    seqs: Vec<u64>,
    pdus: Vec<JsonValue>,
    edus: Vec<JsonValue>,
    first: u64,
    last: u64,
}

impl Service {
    pub fn new(
        db: Db,
        rooms: Arc<rooms::Service>,
        federation: Arc<federation::Service>,
        stream: Arc<Stream>,
        max_backoff: Duration,
    ) -> Self {
        Self {
            queue: Table::new(&db),
            db,
            rooms,
            federation,
            stream,
            destinations: Mutex::new(HashMap::new()),
            min_backoff: Duration::from_millis(500),
            max_backoff,
        }
    }

    fn destination(&self, server: &ServerName) -> Arc<Destination> {
        let mut d = self.destinations.lock();
        if d.len() > 100_000 {
            d.retain(|_, v| v.running.load(Ordering::SeqCst));
        }
        d.entry(server.to_owned()).or_default().clone()
    }

    /// A destination talked to us: if we are waiting to retry it, retry now.
    pub fn peer_is_back(&self, server: &ServerName) {
        let d = self.destinations.lock().get(server).cloned();
        if let Some(d) = d {
            if d.running.load(Ordering::SeqCst) {
                d.back.notify_one();
            }
        }
    }

    /// Queues an EDU for each destination (durably); the sender picks it up.
    pub async fn queue_edu(&self, destinations: &[OwnedServerName], edu: JsonValue) -> Result<()> {
        if destinations.is_empty() {
            return Ok(());
        }
        let value = QueuedItem::Edu(serde_json::to_vec(&edu).map_err(Error::internal)?);
        let mut batch = Batch::new();
        let mut reserved = self.stream.reserve();
        let pos = reserved.position_in(&mut batch);
        for d in destinations {
            self.queue.put_in(&mut batch, (d.as_str(), pos), &value);
        }
        reserved.write(&self.db, batch).await?;
        self.rooms_wake(destinations.to_vec());
        Ok(())
    }

    /// Queues an EDU for every other server in a room.
    pub async fn edu_to_room(&self, room: crate::storage::ShortId, edu: JsonValue) -> Result<()> {
        let servers = self.rooms.membership.remote_servers(room)?;
        self.queue_edu(&servers, edu).await
    }

    /// Queues an EDU for every server sharing a room with the user.
    pub async fn edu_to_peers_of(
        &self,
        user: crate::storage::ShortId,
        edu: JsonValue,
    ) -> Result<()> {
        let mut servers: Vec<OwnedServerName> = Vec::new();
        for (room, m) in self.rooms.membership.memberships(user)? {
            if m.membership() != ruma::events::room::member::MembershipState::Join {
                continue;
            }
            for s in self.rooms.membership.remote_servers(room)? {
                if !servers.contains(&s) {
                    servers.push(s);
                }
            }
        }
        self.queue_edu(&servers, edu).await
    }

    fn rooms_wake(&self, servers: Vec<OwnedServerName>) {
        // The same channel the event pipeline announces on.
        self.rooms.announce_destinations(servers);
    }

    /// Destinations with rows waiting (at start, to resume them).
    fn queued_destinations(&self) -> Vec<OwnedServerName> {
        let destinations = self.queue.destinations().unwrap_or_else(|e| {
            tracing::error!("cannot read the federation queue: {e}");
            Vec::new()
        });
        destinations
            .into_iter()
            .filter_map(|d| OwnedServerName::try_from(d).ok())
            .collect()
    }

    /// Runs the queue until `stop`: a worker per destination with rows, started when rows
    /// are announced on `rx`.
    pub async fn run(
        self: Arc<Self>,
        mut rx: UnboundedReceiver<Vec<OwnedServerName>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut workers = JoinSet::new();
        for dest in self.queued_destinations() {
            self.clone().ensure(&mut workers, dest);
        }
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Some(dests) => for d in dests {
                        self.clone().ensure(&mut workers, d);
                    },
                    None => break,
                },
                Some(_) = workers.join_next(), if !workers.is_empty() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        workers.abort_all();
        while workers.join_next().await.is_some() {}
    }

    fn ensure(self: Arc<Self>, workers: &mut JoinSet<()>, dest: OwnedServerName) {
        if dest == *self.federation.server_name() {
            return;
        }
        let d = self.destination(&dest);
        if d.running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            workers.spawn(self.work(dest, d));
        }
    }

    async fn work(self: Arc<Self>, dest: OwnedServerName, d: Arc<Destination>) {
        let mut failures: u32 = 0;
        loop {
            let pending = match self.next_transaction(&dest) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(%dest, "cannot read the federation queue: {e}");
                    None
                }
            };
            let Some(pending) = pending else {
                d.running.store(false, Ordering::SeqCst);
                // Rows queued after our read but before the flag dropped would wait for the
                // next announcement: look once more.
                let more = self.next_transaction(&dest).ok().flatten().is_some();
                if more
                    && d.running
                        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    continue;
                }
                return;
            };
            match self.send(&dest, &pending).await {
                Ok(()) => {
                    failures = 0;
                    let mut batch = Batch::new();
                    for seq in &pending.seqs {
                        self.queue.delete_in(&mut batch, (dest.as_str(), *seq));
                    }
                    if let Err(e) = self.db.write(batch).await {
                        tracing::error!(%dest, "cannot clear sent rows: {e}");
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = self
                        .min_backoff
                        .saturating_mul(1u32 << failures.min(20).saturating_sub(1))
                        .min(self.max_backoff);
                    tracing::info!(%dest, failures, ?wait, "transaction failed, backing off: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = d.back.notified() => {}
                    }
                }
            }
        }
    }

    /// The oldest rows of a destination, up to the spec's limits.
    fn next_transaction(&self, dest: &ServerName) -> Result<Option<Pending>> {
        let mut p = Pending {
            seqs: Vec::new(),
            pdus: Vec::new(),
            edus: Vec::new(),
            first: 0,
            last: 0,
        };
        for row in self.queue.scan((dest.as_str(),)) {
            let ((_, seq), item) = row?;
            match item {
                QueuedItem::Pdu(short) if p.pdus.len() < MAX_PDUS => {
                    // An event that is gone (purged) is simply skipped.
                    if let Some(json) = self.rooms.events.event_json(short)? {
                        p.pdus.push(JsonValue::Object(json));
                    }
                }
                QueuedItem::Edu(json) if p.edus.len() < MAX_EDUS => {
                    match serde_json::from_slice::<JsonValue>(&json) {
                        Ok(edu) => p.edus.push(edu),
                        Err(e) => tracing::warn!("dropping an unreadable queued EDU: {e}"),
                    }
                }
                QueuedItem::Pdu(_) | QueuedItem::Edu(_) => {
                    if p.pdus.len() >= MAX_PDUS && p.edus.len() >= MAX_EDUS {
                        break;
                    }
                    // Full of this kind: keep order by stopping at the first overflow.
                    break;
                }
            }
            if p.seqs.is_empty() {
                p.first = seq;
            }
            p.last = seq;
            p.seqs.push(seq);
        }
        Ok((!p.seqs.is_empty()).then_some(p))
    }

    async fn send(&self, dest: &ServerName, p: &Pending) -> Result<()> {
        // The same rows give the same transaction ID, so a retry the peer already processed is
        // answered from its cache instead of processed twice; new rows give a new ID.
        let txn = format!("{}-{}-{}", p.first, p.last, p.seqs.len());
        let body = json!({
            "origin": self.federation.server_name().as_str(),
            "origin_server_ts": now_ms(),
            "pdus": p.pdus,
            "edus": p.edus,
        });
        let (status, answer) = self
            .federation
            .request(
                dest,
                http::Method::PUT,
                &format!("/_matrix/federation/v1/send/{txn}"),
                Some(&body),
            )
            .await?;
        if status.is_refusal() {
            // Sending the same transaction again would get the same refusal: drop it.
            tracing::warn!(%dest, %status, "peer refused a transaction: {answer}");
            return Ok(());
        }
        if !status.is_success() {
            return Err(Error::internal(format!("{dest} answered {status}")));
        }
        if let Some(results) = answer.get("pdus").and_then(JsonValue::as_object) {
            for (event_id, r) in results {
                if let Some(err) = r.get("error") {
                    tracing::info!(%dest, %event_id, "peer refused our event: {err}");
                }
            }
        }
        tracing::debug!(%dest, pdus = p.pdus.len(), edus = p.edus.len(), "transaction sent");
        Ok(())
    }
}
