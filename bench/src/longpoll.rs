//! Idle `/sync` long-polls, held open in the background while a scenario measures something else
//! (`sync-latency`) or the server's memory (`sync-memory`). Each one re-issues itself with the
//! new `next_batch` whenever it returns, like a real client.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::task::JoinSet;

use crate::{
    client::{Server, User},
    procfs,
    stats::Failures,
};

/// How the long-polls are opened.
pub struct Spec {
    /// Long-polls in all, spread round-robin over the users.
    pub polls: usize,
    /// The `timeout` of each poll; see [`LongPolls::open`] for the per-poll offset.
    pub timeout: Duration,
    /// Polls started at once before waiting for the server to have accepted them.
    pub batch: usize,
    /// Added to `timeout` for our side's limit on each request.
    pub grace: Duration,
}

#[derive(Default)]
struct Shared {
    in_flight: AtomicUsize,
    returned_on_time: AtomicU64,
    returned_early: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Failures>,
    /// When the server may answer the last poll issued, had its client stayed: its issue time
    /// plus its timeout.
    last_deadline: Mutex<Option<Instant>>,
    /// Early returns grouped by what the response carried (`nothing`, `presence`, ...).
    early: Mutex<Failures>,
}

/// Counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Requests sent and not yet answered.
    pub in_flight: usize,
    /// Polls that ran to (about) their timeout.
    pub on_time: u64,
    /// Polls answered well before their timeout.
    pub early: u64,
    /// Polls that failed (transport or HTTP error).
    pub failed: u64,
}

/// How the opening went.
pub struct Opened {
    pub elapsed: Duration,
    /// The server's descriptor count before the first poll and after the last batch, when its
    /// PID is known.
    pub fds_before: Option<usize>,
    pub fds_after: Option<usize>,
    /// Whether the server accepted every connection (by its descriptor count) before we went on.
    pub all_accepted: bool,
}

/// The running long-polls; dropping or [`LongPolls::close`] closes their connections.
pub struct LongPolls {
    tasks: JoinSet<()>,
    shared: Arc<Shared>,
}

impl LongPolls {
    /// Opens `spec.polls` long-polls over `server`'s pool (give it a fresh one, so that every
    /// poll is a new connection the server's descriptor count shows), `users[i % n]` with its
    /// `since` for poll `i`.
    ///
    /// Polls sharing an access token get timeouts a few milliseconds apart: Synapse merges
    /// identical concurrent /sync requests (same user, device, since, filter and timeout) into
    /// one, which would turn ten simulated clients into one.
    ///
    /// With the server's PID the polls are opened `batch` at a time, each batch once the server
    /// has accepted the previous one (Synapse listens with a backlog of 50; a burst of thousands
    /// of connects overflows it and stalls in SYN retransmits); without, 20 ms apart.
    pub async fn open(
        server: &Server,
        users: &[(User, String)],
        spec: &Spec,
    ) -> Result<(LongPolls, Opened), String> {
        if users.is_empty() {
            return Err("long-polls need at least one user".into());
        }
        let shared = Arc::new(Shared::default());
        let mut tasks = JoinSet::new();
        let started = Instant::now();
        let fds_before = server.pid.map(procfs::open_fds).transpose()?;
        let mut all_accepted = true;
        let mut fds_after = fds_before;
        let mut opened = 0;
        while opened < spec.polls {
            let batch_end = (opened + spec.batch.max(1)).min(spec.polls);
            for i in opened..batch_end {
                let (user, since) = users[i % users.len()].clone();
                let offset = Duration::from_millis((i / users.len()) as u64);
                tasks.spawn(poll_loop(
                    server.clone(),
                    user,
                    since,
                    spec.timeout + offset,
                    spec.grace,
                    shared.clone(),
                ));
            }
            opened = batch_end;
            match (server.pid, fds_before) {
                (Some(pid), Some(base)) => {
                    let (n, reached) =
                        procfs::wait_fds_at_least(pid, base + opened, Duration::from_secs(15))
                            .await?;
                    fds_after = Some(n);
                    all_accepted &= reached;
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let polls = LongPolls { tasks, shared };
        Ok((
            polls,
            Opened {
                elapsed: started.elapsed(),
                fds_before,
                fds_after,
                all_accepted,
            },
        ))
    }

    pub fn counts(&self) -> Counts {
        Counts {
            in_flight: self.shared.in_flight.load(Ordering::Relaxed),
            on_time: self.shared.returned_on_time.load(Ordering::Relaxed),
            early: self.shared.returned_early.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
        }
    }

    /// Aborts every poll (closing its connection) and returns the failures and the early
    /// returns, grouped by what they carried.
    pub async fn close(mut self) -> (Failures, Failures, Option<Instant>) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let deadline = *self
            .shared
            .last_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let take =
            |m: &Mutex<Failures>| std::mem::take(&mut *m.lock().unwrap_or_else(|e| e.into_inner()));
        (
            take(&self.shared.failures),
            take(&self.shared.early),
            deadline,
        )
    }
}

/// A poll returning before this share of its timeout counts as early.
const EARLY: f64 = 0.9;

async fn poll_loop(
    server: Server,
    user: User,
    mut since: String,
    timeout: Duration,
    grace: Duration,
    shared: Arc<Shared>,
) {
    let timeout_ms = timeout.as_millis() as u64;
    loop {
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        {
            let mut last = shared
                .last_deadline
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *last = (*last).max(Some(started + timeout));
        }
        let result = server
            .sync(&user, Some(&since), timeout_ms, timeout + grace)
            .await;
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        let elapsed = started.elapsed();
        match result.and_then(|r| r.next_batch().map(|next| (r, next))) {
            Ok((resp, next)) => {
                if elapsed.as_secs_f64() < EARLY * timeout.as_secs_f64() {
                    shared.returned_early.fetch_add(1, Ordering::Relaxed);
                    let sections = resp.non_empty_sections();
                    let kind = if sections.is_empty() {
                        "nothing".to_owned()
                    } else {
                        sections.join("+")
                    };
                    let body: String = resp.body.to_string().chars().take(300).collect();
                    lock(&shared.early).add(
                        kind,
                        format!(
                            "{} after {:.2} s of {} s: {body}",
                            user.user_id,
                            elapsed.as_secs_f64(),
                            timeout.as_secs()
                        ),
                    );
                } else {
                    shared.returned_on_time.fetch_add(1, Ordering::Relaxed);
                }
                since = next;
            }
            Err(e) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                lock(&shared.failures).add(
                    format!("idle long-poll: {}", e.category()),
                    format!("{} after {:.2} s: {e}", user.user_id, elapsed.as_secs_f64()),
                );
                // A server refusing polls outright must not be hammered in a tight loop.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn lock(m: &Mutex<Failures>) -> std::sync::MutexGuard<'_, Failures> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Errors out early when this process may not open `needed` more connections.
pub fn check_fd_limit(needed: usize) -> Result<(), String> {
    match procfs::own_open_file_limit() {
        Some(limit) if limit < needed as u64 + 100 => Err(format!(
            "{needed} connections need more open files than this process may have ({limit}); raise `ulimit -n`"
        )),
        _ => Ok(()),
    }
}

/// After the client has closed its long-polls: waits until the last of them would have timed out
/// (plus a few seconds) and returns the CPU seconds the server used meanwhile. A server that drops
/// a poll's work when its connection closes uses next to none; one that keeps waiting and then
/// computes a response nobody reads pays for every closed poll, later, in the middle of whatever
/// comes next. Waiting it out keeps that bill inside the scenario that ran them up.
pub async fn drain(pid: u32, deadline: Option<Instant>) -> Result<(f64, Duration), String> {
    let started = Instant::now();
    let before = procfs::cpu_ticks(pid)?;
    if let Some(deadline) = deadline {
        tokio::time::sleep_until((deadline + Duration::from_secs(5)).into()).await;
    }
    let used = procfs::cpu_ticks(pid)?.saturating_sub(before) as f64 / 100.0;
    Ok((used, started.elapsed()))
}
