//! `messages`: readers page backwards through a whole room, over and over, checking every pass.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::json;
use tokio::{sync::Barrier, task::JoinSet};

use crate::{
    client::{Page, Server, User},
    common::{join_all, message_body, parse_body, register_all, run_id},
    report::{Metric, Report},
    stats::{Failures, Latencies},
    Common,
};

#[derive(Args, Debug, Clone)]
pub struct MessagesArgs {
    /// Messages in the room, sent one after the other by one user before reading starts.
    #[arg(long, default_value_t = 2000)]
    pub fill: u64,
    /// The `limit` of each /messages request.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Concurrent readers, each its own account.
    #[arg(long, default_value_t = 4)]
    pub readers: usize,
    /// Seconds of reading; passes under way when it ends are finished and counted.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Passes per reader instead of a duration.
    #[arg(long)]
    pub passes: Option<u64>,
    /// Unmeasured (but checked) passes per reader first.
    #[arg(long, default_value_t = 1)]
    pub warmup_passes: u64,
}

/// Checks one backwards pass as its pages arrive: the filled messages `fill-1, ..., 0`, each
/// exactly once and in that order, then only the room's setup events (which precede them).
struct PassCheck {
    /// The sequence number the next message must carry; `None` once #0 has been seen.
    expected: Option<u64>,
    fill: u64,
    event_ids: HashSet<String>,
}

impl PassCheck {
    fn new(fill: u64) -> PassCheck {
        PassCheck {
            expected: fill.checked_sub(1),
            fill,
            event_ids: HashSet::new(),
        }
    }

    /// `Err((category, detail))` at the first event that breaks the pass.
    fn page(&mut self, page: &Page) -> Result<(), (&'static str, String)> {
        for event in &page.events {
            let id = event.event_id.clone().unwrap_or_default();
            if !self.event_ids.insert(id.clone()) {
                return Err(("pass: duplicate event", format!("{id} twice in one pass")));
            }
            let kind = event.kind.as_deref().unwrap_or("?");
            let Some(expected) = self.expected else {
                // Past #0 only the room's creation and joins remain.
                if event.is_message() {
                    return Err((
                        "pass: message after #0",
                        format!("{id} ({:?}) after the oldest message", event.body),
                    ));
                }
                continue;
            };
            if !event.is_message() {
                return Err((
                    "pass: event interleaved",
                    format!("{kind} {id} where message #{expected} belongs"),
                ));
            }
            match parse_body(event) {
                Some((0, seq)) if seq == expected => self.expected = seq.checked_sub(1),
                Some((0, seq)) if seq < expected => {
                    return Err((
                        "pass: gap (messages lost or reordered)",
                        format!(
                            "#{seq} where #{expected} belongs ({} skipped)",
                            expected - seq
                        ),
                    ))
                }
                Some((0, seq)) => {
                    return Err((
                        "pass: out of order (newer after older)",
                        format!("#{seq} where #{expected} belongs (paging backwards)"),
                    ))
                }
                _ => return Err(("pass: unknown message", format!("{id}: {:?}", event.body))),
            }
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), (&'static str, String)> {
        match self.expected {
            None => Ok(()),
            Some(e) => Err((
                "pass: incomplete",
                format!(
                    "the room ended after {} of {} messages (next expected #{e})",
                    self.fill - e - 1,
                    self.fill
                ),
            )),
        }
    }
}

#[derive(Default)]
struct ReaderResult {
    pages: u64,
    events: u64,
    passes_ok: u64,
    passes_failed: u64,
    latencies: Latencies,
    failures: Failures,
}

/// One full pass from the newest event to the start of the room; failures end the pass.
async fn pass(
    server: &Server,
    user: &User,
    room_id: &str,
    args: &MessagesArgs,
    out: &mut ReaderResult,
) -> bool {
    let mut check = PassCheck::new(args.fill);
    let mut from: Option<String> = None;
    // Room setup adds a handful of events; anything far beyond the expected page count is a loop.
    let max_pages = 2 * (args.fill as usize + 100) / args.limit.max(1) as usize + 10;
    for _ in 0..max_pages {
        let started = Instant::now();
        let page = match server
            .messages_back(user, room_id, from.as_deref(), args.limit)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                out.failures.add(format!("/messages: {}", e.category()), e);
                return false;
            }
        };
        out.latencies.push(started.elapsed());
        out.pages += 1;
        out.events += page.events.len() as u64;
        if let Err((category, detail)) = check.page(&page) {
            out.failures.add(category, detail);
            return false;
        }
        match page.end {
            Some(end) if from.as_deref() != Some(end.as_str()) => from = Some(end),
            _ => {
                return match check.finish() {
                    Ok(()) => true,
                    Err((category, detail)) => {
                        out.failures.add(category, detail);
                        false
                    }
                }
            }
        }
    }
    out.failures.add(
        "pass: endless pagination",
        format!("no end of the room after {max_pages} pages"),
    );
    false
}

async fn reader(
    server: Server,
    user: User,
    room_id: Arc<str>,
    args: Arc<MessagesArgs>,
    passes: Option<u64>,
    deadline: Option<Instant>,
) -> ReaderResult {
    let mut out = ReaderResult::default();
    loop {
        let done = out.passes_ok + out.passes_failed;
        if passes.is_some_and(|p| done >= p) || deadline.is_some_and(|d| Instant::now() >= d) {
            return out;
        }
        if pass(&server, &user, &room_id, &args, &mut out).await {
            out.passes_ok += 1;
        } else {
            out.passes_failed += 1;
        }
    }
}

/// All readers at once from a common start; the results and the wall time until the last one.
async fn read_phase(
    server: &Server,
    readers: &[User],
    room_id: &Arc<str>,
    args: &Arc<MessagesArgs>,
    passes: Option<u64>,
    duration: Option<Duration>,
) -> Result<(ReaderResult, Duration), String> {
    let barrier = Arc::new(Barrier::new(readers.len() + 1));
    let mut tasks = JoinSet::new();
    for user in readers.iter().cloned() {
        let (server, room_id, args, barrier) = (
            server.clone(),
            room_id.clone(),
            args.clone(),
            barrier.clone(),
        );
        tasks.spawn(async move {
            barrier.wait().await;
            let deadline = duration.map(|d| Instant::now() + d);
            reader(server, user, room_id, args, passes, deadline).await
        });
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut total = ReaderResult::default();
    while let Some(joined) = tasks.join_next().await {
        let r = joined.map_err(|e| format!("reader task: {e}"))?;
        total.pages += r.pages;
        total.events += r.events;
        total.passes_ok += r.passes_ok;
        total.passes_failed += r.passes_failed;
        total.latencies.extend(r.latencies);
        total.failures.merge(r.failures);
    }
    Ok((total, started.elapsed()))
}

pub async fn run(server: &Server, common: &Common, args: &MessagesArgs) -> Result<Report, String> {
    if args.readers == 0 || args.limit == 0 {
        return Err("--readers and --limit must be at least 1".into());
    }
    if args.passes.is_none() && !(args.duration.is_finite() && args.duration > 0.0) {
        return Err("--duration must be a positive number of seconds".into());
    }
    let run = run_id();
    let mut names = vec![format!("hb{run}w")];
    names.extend((0..args.readers).map(|i| format!("hb{run}r{i}")));
    let mut users = register_all(server, names, common.setup_concurrency).await?;
    let readers = users.split_off(1);
    let writer = &users[0];
    let room_id: Arc<str> = server
        .create_room(writer, common.room_version.as_deref())
        .await
        .map_err(|e| format!("createRoom: {e}"))?
        .into();
    // Readers join before the fill, so every message lies after every state event.
    join_all(server, &readers, &room_id, common.setup_concurrency).await?;

    // One sender waiting for each 200: the order of acknowledgement is the room's order.
    let mut fill_latencies = Latencies::default();
    let fill_started = Instant::now();
    for seq in 0..args.fill {
        let started = Instant::now();
        server
            .send_text(
                writer,
                &room_id,
                &format!("{run}-f{seq}"),
                &message_body(0, seq),
            )
            .await
            .map_err(|e| format!("filling the room, message #{seq}: {e}"))?;
        fill_latencies.push(started.elapsed());
    }
    let fill_elapsed = fill_started.elapsed();

    let args = Arc::new(args.clone());
    let (warm, _) = read_phase(
        server,
        &readers,
        &room_id,
        &args,
        Some(args.warmup_passes),
        None,
    )
    .await?;
    let duration = Duration::from_secs_f64(args.duration);
    let (hot, elapsed) = match args.passes {
        Some(p) => read_phase(server, &readers, &room_id, &args, Some(p), None).await?,
        None => read_phase(server, &readers, &room_id, &args, None, Some(duration)).await?,
    };

    let mut failures = Failures::default();
    failures.merge(warm.failures);
    failures.merge(hot.failures);
    let secs = elapsed.as_secs_f64();
    Ok(Report {
        scenario: "messages",
        metrics: vec![
            Metric::new(
                "pages_per_sec",
                "pages/s",
                hot.pages as f64 / secs,
                "pages/s",
            ),
            Metric::new(
                "events_per_sec",
                "events/s",
                hot.events as f64 / secs,
                "events/s",
            ),
            Metric::new(
                "page_p50_ms",
                "page latency p50",
                hot.latencies.percentile_ms(50.0),
                "ms",
            ),
            Metric::new(
                "page_p99_ms",
                "page latency p99",
                hot.latencies.percentile_ms(99.0),
                "ms",
            ),
            Metric::new(
                "passes_ok",
                "complete checked passes",
                hot.passes_ok as f64,
                "passes",
            )
            .info(),
            Metric::new(
                "passes_failed",
                "failed passes",
                (warm.passes_failed + hot.passes_failed) as f64,
                "passes",
            )
            .info(),
            Metric::new(
                "fill_per_sec",
                "fill rate (1 sender, sequential)",
                args.fill as f64 / fill_elapsed.as_secs_f64(),
                "msg/s",
            ),
            Metric::new(
                "fill_p50_ms",
                "fill latency p50",
                fill_latencies.percentile_ms(50.0),
                "ms",
            ),
            Metric::new("elapsed_s", "measured wall time", secs, "s").info(),
        ],
        params: json!({
            "fill": args.fill,
            "limit": args.limit,
            "readers": args.readers,
            "duration_s": args.passes.map_or(Some(args.duration), |_| None),
            "passes_per_reader": args.passes,
            "warmup_passes": args.warmup_passes,
            "room_id": &*room_id,
        }),
        failures,
        notes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::PageEvent;

    fn msg(id: &str, seq: u64) -> PageEvent {
        PageEvent {
            event_id: Some(id.into()),
            kind: Some("m.room.message".into()),
            sender: None,
            body: Some(message_body(0, seq)),
        }
    }

    fn state(id: &str) -> PageEvent {
        PageEvent {
            event_id: Some(id.into()),
            kind: Some("m.room.member".into()),
            sender: None,
            body: None,
        }
    }

    fn page(events: Vec<PageEvent>) -> Page {
        Page { events, end: None }
    }

    #[test]
    fn accepts_a_complete_pass() {
        let mut c = PassCheck::new(3);
        assert!(c.page(&page(vec![msg("$2", 2), msg("$1", 1)])).is_ok());
        assert!(c
            .page(&page(vec![msg("$0", 0), state("$m"), state("$c")]))
            .is_ok());
        assert!(c.finish().is_ok());
    }

    #[test]
    fn rejects_loss_reorder_duplicates_and_short_passes() {
        let mut c = PassCheck::new(3);
        assert_eq!(
            c.page(&page(vec![msg("$2", 2), msg("$0", 0)]))
                .unwrap_err()
                .0,
            "pass: gap (messages lost or reordered)"
        );
        let mut c = PassCheck::new(3);
        assert_eq!(
            c.page(&page(vec![msg("$2", 2), msg("$1", 1), msg("$2b", 2)]))
                .unwrap_err()
                .0,
            "pass: out of order (newer after older)"
        );
        let mut c = PassCheck::new(3);
        assert_eq!(
            c.page(&page(vec![msg("$2", 2), msg("$2", 2)]))
                .unwrap_err()
                .0,
            "pass: duplicate event"
        );
        let mut c = PassCheck::new(3);
        assert_eq!(
            c.page(&page(vec![msg("$2", 2), state("$m")]))
                .unwrap_err()
                .0,
            "pass: event interleaved"
        );
        let mut c = PassCheck::new(3);
        assert!(c.page(&page(vec![msg("$2", 2)])).is_ok());
        assert_eq!(c.finish().unwrap_err().0, "pass: incomplete");
    }
}
