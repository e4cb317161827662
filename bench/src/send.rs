//! `send`: many users post into one room as fast as each one's previous message is acknowledged.

use std::{
    collections::{BTreeSet, HashSet},
    ops::Range,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::json;
use tokio::{sync::Barrier, task::JoinSet};

use crate::{
    client::{PageEvent, Server, User},
    common::{busy_room, message_body, parse_body, read_room, run_id},
    report::{Metric, Report},
    stats::{Failures, Latencies},
    Common,
};

#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// Concurrent senders, each its own account.
    #[arg(long, default_value_t = 50)]
    pub senders: usize,
    /// Messages in the measured phase, all senders together.
    #[arg(long, default_value_t = 5000)]
    pub messages: u64,
    /// Unmeasured messages per sender first (connections, caches, JIT-free but still warm).
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Skip reading the room back afterwards to check that every acknowledged message is there,
    /// once, in each sender's order.
    #[arg(long)]
    pub no_verify: bool,
}

/// Failures in a row after which a sender stops.
const GIVE_UP_AFTER: u32 = 10;

/// What one sender did in one phase.
#[derive(Default)]
struct StreamResult {
    latencies: Latencies,
    acknowledged: Vec<u64>,
    failed: Vec<u64>,
    failures: Failures,
}

/// Sends messages `seqs` of `stream` one after the other, each after the previous one's 200.
async fn send_stream(
    server: &Server,
    user: &User,
    room_id: &str,
    run: &str,
    stream: usize,
    seqs: Range<u64>,
    phase: &str,
) -> StreamResult {
    let mut result = StreamResult::default();
    let mut consecutive_failures = 0;
    let end = seqs.end;
    for seq in seqs {
        if consecutive_failures >= GIVE_UP_AFTER {
            // A dead or wedged server would otherwise cost one timeout per remaining message.
            result.failed.extend(seq..end);
            result.failures.add(
                format!("{phase}: not attempted"),
                format!(
                    "sender {stream} gave up after {GIVE_UP_AFTER} failures in a row, {} messages unsent",
                    end - seq
                ),
            );
            break;
        }
        // Unique per access token (the spec's scope for transaction IDs), and across runs.
        let txn = format!("{run}-{stream}-{seq}");
        let started = Instant::now();
        match server
            .send_text(user, room_id, &txn, &message_body(stream, seq))
            .await
        {
            Ok(_) => {
                consecutive_failures = 0;
                result.latencies.push(started.elapsed());
                result.acknowledged.push(seq);
            }
            Err(e) => {
                consecutive_failures += 1;
                result.failed.push(seq);
                result.failures.add(format!("{phase}: {}", e.category()), e);
            }
        }
    }
    result
}

/// Runs every sender's `ranges[stream]` at once and returns the results by stream and the wall
/// time from the common start to the last acknowledgement.
async fn run_phase(
    server: &Server,
    senders: &[User],
    room_id: &Arc<str>,
    run: &Arc<str>,
    ranges: Vec<Range<u64>>,
    phase: &'static str,
) -> Result<(Vec<StreamResult>, Duration), String> {
    // Every task waits here, so no sender gets a head start while the others are spawned.
    let barrier = Arc::new(Barrier::new(senders.len() + 1));
    let mut tasks = JoinSet::new();
    for (stream, (user, range)) in senders.iter().zip(ranges).enumerate() {
        let (server, user, room_id, run, barrier) = (
            server.clone(),
            user.clone(),
            room_id.clone(),
            run.clone(),
            barrier.clone(),
        );
        tasks.spawn(async move {
            barrier.wait().await;
            let result = send_stream(&server, &user, &room_id, &run, stream, range, phase).await;
            (stream, result)
        });
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut results: Vec<Option<StreamResult>> = (0..senders.len()).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (stream, result) = joined.map_err(|e| format!("sender task: {e}"))?;
        results[stream] = Some(result);
    }
    let elapsed = started.elapsed();
    Ok((results.into_iter().flatten().collect(), elapsed))
}

pub async fn run(server: &Server, common: &Common, args: &SendArgs) -> Result<Report, String> {
    if args.senders == 0 {
        return Err("--senders must be at least 1".into());
    }
    let run: Arc<str> = run_id().into();
    let (creator, senders, room_id) = busy_room(server, common, &run, args.senders).await?;
    let creator = &creator;

    let n = args.senders as u64;
    let warmup: Vec<Range<u64>> = (0..n).map(|_| 0..args.warmup).collect();
    // The measured total split as evenly as it goes; the first `rest` senders send one more.
    let (each, rest) = (args.messages / n, args.messages % n);
    let measured: Vec<Range<u64>> = (0..n)
        .map(|i| args.warmup..args.warmup + each + u64::from(i < rest))
        .collect();

    let (warm, _) = run_phase(server, &senders, &room_id, &run, warmup, "warm-up").await?;
    let (hot, elapsed) = run_phase(server, &senders, &room_id, &run, measured, "send").await?;

    let mut failures = Failures::default();
    let mut latencies = Latencies::default();
    let mut acknowledged: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); senders.len()];
    let mut unacknowledged: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); senders.len()];
    for (phase, results) in [("warm-up", warm), ("send", hot)] {
        for (stream, r) in results.into_iter().enumerate() {
            acknowledged[stream].extend(r.acknowledged);
            unacknowledged[stream].extend(r.failed);
            failures.merge(r.failures);
            if phase == "send" {
                latencies.extend(r.latencies);
            }
        }
    }
    let sent = latencies.len() as f64;

    if !args.no_verify {
        // Every message is one event, plus a dozen of room setup; twice that bounds a sane server.
        let expected_events = (args.warmup * n + args.messages + n) as usize + 20;
        let max_pages = 2 * expected_events / 100 + 10;
        match read_room(server, creator, &room_id, 100, max_pages).await {
            Ok(events) => verify(
                &events,
                &senders,
                &acknowledged,
                &unacknowledged,
                &mut failures,
            ),
            Err(e) => failures.add("verify: read back", e),
        }
    }

    Ok(Report {
        scenario: "send",
        metrics: vec![
            Metric::new(
                "messages_per_sec",
                "messages/s",
                sent / elapsed.as_secs_f64(),
                "msg/s",
            ),
            Metric::new(
                "latency_p50_ms",
                "send latency p50",
                latencies.percentile_ms(50.0),
                "ms",
            ),
            Metric::new(
                "latency_p99_ms",
                "send latency p99",
                latencies.percentile_ms(99.0),
                "ms",
            ),
            Metric::new(
                "latency_mean_ms",
                "send latency mean",
                latencies.mean_ms(),
                "ms",
            ),
            Metric::new("acknowledged", "messages acknowledged", sent, "msg").info(),
            Metric::new(
                "elapsed_s",
                "measured wall time",
                elapsed.as_secs_f64(),
                "s",
            )
            .info(),
        ],
        params: json!({
            "senders": args.senders,
            "messages": args.messages,
            "warmup_per_sender": args.warmup,
            "verified": !args.no_verify,
            "room_id": &*room_id,
        }),
        failures,
        notes: Vec::new(),
    })
}

/// Checks the room as read back (newest first) against what the senders were told: every
/// acknowledged message present exactly once, each sender's messages in the order it sent them
/// (it waited for each acknowledgement, so the server must order them), nothing invented.
fn verify(
    events: &[PageEvent],
    senders: &[User],
    acknowledged: &[BTreeSet<u64>],
    unacknowledged: &[BTreeSet<u64>],
    failures: &mut Failures,
) {
    let mut seen: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); acknowledged.len()];
    let mut last: Vec<Option<u64>> = vec![None; acknowledged.len()];
    let mut event_ids = HashSet::new();
    for event in events {
        if let Some(id) = &event.event_id {
            if !event_ids.insert(id.as_str()) {
                failures.add("verify: duplicate event", format!("{id} returned twice"));
            }
        }
        if !event.is_message() {
            continue;
        }
        let Some((stream, seq)) = parse_body(event).filter(|(s, _)| *s < acknowledged.len()) else {
            failures.add("verify: unknown message", format!("{event:?}"));
            continue;
        };
        if event.sender.as_deref() != Some(senders[stream].user_id.as_str()) {
            failures.add(
                "verify: wrong sender",
                format!("sender {stream} #{seq} attributed to {:?}", event.sender),
            );
        }
        // Paging backwards, each sender's numbers must strictly decrease.
        if let Some(prev) = last[stream] {
            if seq >= prev {
                failures.add(
                    "verify: out of order",
                    format!("sender {stream}: {seq} after {prev} paging backwards"),
                );
            }
        }
        last[stream] = Some(seq);
        if !seen[stream].insert(seq) {
            failures.add(
                "verify: duplicate message",
                format!("sender {stream} #{seq}"),
            );
        } else if !acknowledged[stream].contains(&seq) && !unacknowledged[stream].contains(&seq) {
            failures.add(
                "verify: message never sent",
                format!("sender {stream} #{seq}"),
            );
        }
    }
    for (stream, acked) in acknowledged.iter().enumerate() {
        for seq in acked.difference(&seen[stream]) {
            failures.add(
                "verify: acknowledged message missing",
                format!("sender {stream} #{seq}"),
            );
        }
    }
}
