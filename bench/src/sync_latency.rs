//! `sync-latency`: how long a message takes to reach a long-polling /sync client while many
//! other clients sit idle in long-polls of their own.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::json;

use crate::{
    client::{Failure, Server, User},
    common::{initial_syncs, join_all, message_body, note, register_all, run_concurrently, run_id},
    longpoll::{self, LongPolls},
    procfs,
    report::{Metric, Report},
    stats::{Failures, Latencies},
    Common,
};

#[derive(Args, Debug, Clone)]
pub struct SyncLatencyArgs {
    /// Idle long-polls held open (by other users) while the messages are delivered.
    #[arg(long, default_value_t = 1000)]
    pub idle: usize,
    /// Accounts the idle long-polls are spread over, round-robin. Every other one has a room of
    /// its own, the rest are in no room.
    #[arg(long, default_value_t = 100)]
    pub idle_users: usize,
    /// Messages in the measured phase, sent one at a time.
    #[arg(long, default_value_t = 200)]
    pub messages: u64,
    /// Unmeasured messages first.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// The `timeout` of every long-poll, in seconds.
    #[arg(long, default_value_t = 60)]
    pub poll_timeout: u64,
    /// Milliseconds between starting the receiver's long-poll and sending, so that the poll is
    /// waiting on the server when the message arrives.
    #[arg(long, default_value_t = 50)]
    pub settle_ms: u64,
    /// Idle long-polls opened at once (see `sync-memory --open-batch`).
    #[arg(long, default_value_t = 50)]
    pub open_batch: usize,
    /// Do not wait, after closing the idle polls, until they would have timed out (see
    /// `sync-memory --no-drain`).
    #[arg(long)]
    pub no_drain: bool,
}

/// What the receiver saw of one message.
struct Delivery {
    received: Instant,
    event_id: Option<String>,
    next_batch: String,
    /// Responses that came back before the one with the message (presence, receipts, ...):
    /// what they carried, and an excerpt.
    extra: Vec<(String, String)>,
}

/// The receiver's timing: each poll's `timeout`, our extra allowance on top of it, and the pause
/// between starting to poll and sending.
#[derive(Clone, Copy)]
struct Timing {
    timeout: Duration,
    grace: Duration,
    settle: Duration,
}

/// Long-polls from `since` until a response carries the message with `body` in `room_id`.
async fn receive(
    server: Server,
    user: User,
    room_id: Arc<str>,
    mut since: String,
    body: String,
    timing: Timing,
) -> Result<Delivery, Failure> {
    let Timing {
        timeout,
        grace,
        settle,
    } = timing;
    let started = Instant::now();
    let deadline = started + timeout + grace;
    let mut polls = 0;
    let mut extra = Vec::new();
    while Instant::now() < deadline {
        let resp = server
            .sync(
                &user,
                Some(&since),
                timeout.as_millis() as u64,
                timeout + grace,
            )
            .await?;
        polls += 1;
        let next_batch = resp.next_batch()?;
        if let Some(event) = resp
            .timeline(&room_id)
            .into_iter()
            .find(|e| e.is_message() && e.body.as_deref() == Some(body.as_str()))
        {
            return Ok(Delivery {
                received: resp.received,
                event_id: event.event_id,
                next_batch,
                extra,
            });
        }
        let sections = resp.non_empty_sections();
        let mut kind = if sections.is_empty() {
            "nothing".to_owned()
        } else {
            sections.join("+")
        };
        // Before the send, the response can only be about something earlier.
        let after = resp.received.saturating_duration_since(started);
        kind.push_str(if after < settle {
            " (before the send)"
        } else {
            " (after the send)"
        });
        let excerpt: String = resp.body.to_string().chars().take(300).collect();
        extra.push((
            kind,
            format!(
                "{:.1} ms into the poll: {excerpt}",
                after.as_secs_f64() * 1000.0
            ),
        ));
        since = next_batch;
    }
    Err(Failure::Malformed(format!(
        "no /sync response carried `{body}` within {} s ({polls} responses)",
        (timeout + grace).as_secs()
    )))
}

pub async fn run(
    server: &Server,
    common: &Common,
    args: &SyncLatencyArgs,
) -> Result<Report, String> {
    if args.idle_users == 0 && args.idle > 0 {
        return Err("--idle-users must be at least 1".into());
    }
    longpoll::check_fd_limit(args.idle + 50)?;
    const NAME: &str = "sync-latency";
    let t = Instant::now();
    let grace = Duration::from_secs_f64(common.timeout);
    let poll_timeout = Duration::from_secs(args.poll_timeout);
    let conc = common.setup_concurrency;
    if let Some(pid) = server.pid {
        // Whatever the previous scenario left the server doing is not this one's business.
        procfs::wait_quiet(pid, 0.05, 2, Duration::from_secs(300)).await?;
    }
    let setup = server.fresh_pool_with_timeout(grace.max(Duration::from_secs(300)))?;

    let run = run_id();
    let mut names = vec![format!("hb{run}a"), format!("hb{run}b")];
    names.extend((0..args.idle_users).map(|i| format!("hb{run}i{i}")));
    let mut users = register_all(&setup, names, conc).await?;
    let idle_users = users.split_off(2);
    let (alice, bob) = (users[0].clone(), users[1].clone());
    note(
        NAME,
        t,
        format!("registered {} users", idle_users.len() + 2),
    );
    let room_id: Arc<str> = setup
        .create_room(&alice, common.room_version.as_deref())
        .await
        .map_err(|e| format!("createRoom: {e}"))?
        .into();
    join_all(&setup, std::slice::from_ref(&bob), &room_id, conc).await?;
    let with_room: Vec<User> = idle_users.iter().step_by(2).cloned().collect();
    let rv = common.room_version.clone();
    let s = setup.clone();
    run_concurrently(with_room, conc, move |u: User| {
        let (s, rv) = (s.clone(), rv.clone());
        async move {
            s.create_room(&u, rv.as_deref())
                .await
                .map_err(|e| format!("createRoom for {}: {e}", u.user_id))
        }
    })
    .await?;
    let sinces = initial_syncs(&setup, &idle_users, conc, poll_timeout + grace).await?;
    let mut bob_since = initial_syncs(&setup, std::slice::from_ref(&bob), 1, grace)
        .await?
        .remove(0);
    note(NAME, t, "rooms created, initial syncs done");
    // Setup's connections must not count among the idle polls' descriptors.
    drop(setup);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let spec = longpoll::Spec {
        polls: args.idle,
        timeout: poll_timeout,
        batch: args.open_batch,
        grace,
    };
    let pollers: Vec<(User, String)> = idle_users.into_iter().zip(sinces).collect();
    let idle_pool = server.fresh_pool()?;
    let (idle, opened) = if args.idle > 0 {
        let (p, o) = LongPolls::open(&idle_pool, &pollers, &spec).await?;
        (Some(p), Some(o))
    } else {
        (None, None)
    };
    let mut notes = Vec::new();
    if let Some(o) = &opened {
        note(
            NAME,
            t,
            format!(
                "{} idle long-polls opened in {:.1} s",
                args.idle,
                o.elapsed.as_secs_f64()
            ),
        );
    }
    // Let the server work through the polls before anything is measured.
    match server.pid {
        Some(pid) => {
            if procfs::wait_quiet(pid, 0.05, 2, Duration::from_secs(120))
                .await?
                .is_none()
            {
                notes.push("the server was still busy 120 s after the idle polls were opened; measured anyway".into());
            }
        }
        None => tokio::time::sleep(Duration::from_secs(3)).await,
    }
    let fds_idle_open = server.pid.map(procfs::open_fds).transpose()?;
    let before = idle.as_ref().map(LongPolls::counts).unwrap_or_default();
    note(NAME, t, "idle polls settled; sending");

    let live = server.fresh_pool()?;
    let mut failures = Failures::default();
    let mut delivery = Latencies::default();
    let mut send = Latencies::default();
    let mut extra_polls = 0u64;
    let mut extra_kinds = Failures::default();
    let mut idle_open_min = usize::MAX;
    let mut measure_started = Instant::now();
    for seq in 0..args.warmup + args.messages {
        let measured = seq >= args.warmup;
        if seq == args.warmup {
            measure_started = Instant::now();
        }
        let phase = if measured { "measure" } else { "warm-up" };
        let body = message_body(0, seq);
        let receiver = tokio::spawn(receive(
            live.clone(),
            bob.clone(),
            room_id.clone(),
            bob_since.clone(),
            body.clone(),
            Timing {
                timeout: poll_timeout,
                grace,
                settle: Duration::from_millis(args.settle_ms),
            },
        ));
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
        if let Some(idle) = &idle {
            idle_open_min = idle_open_min.min(idle.counts().in_flight);
        }
        let started = Instant::now();
        let sent = live
            .send_text(&alice, &room_id, &format!("{run}-l{seq}"), &body)
            .await;
        let send_time = started.elapsed();
        let received = receiver.await.map_err(|e| format!("receiver task: {e}"))?;
        match (sent, received) {
            (Ok(event_id), Ok(d)) => {
                bob_since = d.next_batch;
                if d.event_id.as_deref() != Some(event_id.as_str()) {
                    failures.add(
                        format!("{phase}: delivered event ID differs"),
                        format!("sent {event_id}, /sync carried {:?}", d.event_id),
                    );
                } else if measured {
                    delivery.push(d.received.saturating_duration_since(started));
                    send.push(send_time);
                    extra_polls += d.extra.len() as u64;
                    for (kind, excerpt) in d.extra {
                        extra_kinds.add(kind, excerpt);
                    }
                }
            }
            (sent, received) => {
                if let Err(e) = sent {
                    failures.add(format!("{phase}: send {}", e.category()), e);
                }
                if let Err(e) = received {
                    failures.add(format!("{phase}: /sync {}", e.category()), e);
                }
                // Start the next message from now rather than from a stale token.
                match live
                    .sync(&bob, None, 0, grace)
                    .await
                    .and_then(|r| r.next_batch())
                {
                    Ok(next) => bob_since = next,
                    Err(e) => failures.add(format!("{phase}: resync {}", e.category()), e),
                }
            }
        }
    }
    let measure_elapsed = measure_started.elapsed();
    let after = idle.as_ref().map(LongPolls::counts).unwrap_or_default();
    // A poll that has just timed out is briefly not in flight while it is re-issued: the most
    // seen over a second is what was open.
    let mut idle_open_end = after.in_flight;
    if let Some(idle) = &idle {
        for _ in 0..10 {
            idle_open_end = idle_open_end.max(idle.counts().in_flight);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let fds_end = server.pid.map(procfs::open_fds).transpose()?;
    let mut drained = None;
    if let Some(idle) = idle {
        let (idle_failures, early, deadline) = idle.close().await;
        failures.merge(idle_failures);
        if let (Some(pid), false) = (server.pid, args.no_drain) {
            note(
                NAME,
                t,
                "idle polls closed; waiting until they would have timed out",
            );
            drained = Some(longpoll::drain(pid, deadline).await?);
        }
        for (kind, count, example) in early.top() {
            notes.push(format!(
                "{count} idle long-poll(s) returned early with {kind} (before the measured phase or during it), e.g. {example}"
            ));
        }
    }
    drop(idle_pool);
    if args.idle > 0 && idle_open_end < args.idle {
        failures.add(
            "idle polls: not all open at the end",
            format!("{idle_open_end} of {} in flight", args.idle),
        );
    }
    for (kind, count, example) in extra_kinds.top() {
        notes.push(format!(
            "{count} receiver response(s) before the message's carried {kind}, e.g. {example}"
        ));
    }
    if let Some(o) = &opened {
        if !o.all_accepted {
            notes.push(format!(
                "the server's descriptor count did not grow by one per idle poll while opening ({:?} before, {:?} after)",
                o.fds_before, o.fds_after
            ));
        }
    }

    let n = |v: usize| v as f64;
    Ok(Report {
        scenario: "sync-latency",
        metrics: vec![
            Metric::new(
                "delivery_p50_ms",
                "delivery latency p50",
                delivery.percentile_ms(50.0),
                "ms",
            ),
            Metric::new(
                "delivery_p99_ms",
                "delivery latency p99",
                delivery.percentile_ms(99.0),
                "ms",
            ),
            Metric::new(
                "delivery_mean_ms",
                "delivery latency mean",
                delivery.mean_ms(),
                "ms",
            ),
            Metric::new(
                "delivery_max_ms",
                "delivery latency max",
                delivery.max_ms(),
                "ms",
            )
            .info(),
            Metric::new(
                "send_p50_ms",
                "send latency p50 (sender's 200)",
                send.percentile_ms(50.0),
                "ms",
            ),
            Metric::new("delivered", "messages delivered", n(delivery.len()), "msg").info(),
            Metric::new(
                "extra_responses",
                "receiver responses without the message",
                extra_polls as f64,
                "resp",
            )
            .info(),
            Metric::new("idle_polls", "idle long-polls", n(args.idle), "polls").info(),
            Metric::new(
                "idle_open_min",
                "idle polls in flight, lowest seen",
                if idle_open_min == usize::MAX {
                    0.0
                } else {
                    n(idle_open_min)
                },
                "polls",
            )
            .info(),
            Metric::new(
                "idle_open_end",
                "idle polls in flight at the end",
                n(idle_open_end),
                "polls",
            )
            .info(),
            Metric::new(
                "idle_early_measured",
                "idle polls returned early (measured)",
                (after.early - before.early) as f64,
                "polls",
            )
            .info(),
            Metric::new(
                "idle_early_total",
                "idle polls returned early (all)",
                after.early as f64,
                "polls",
            )
            .info(),
            Metric::new(
                "idle_failed",
                "idle polls that failed",
                after.failed as f64,
                "polls",
            )
            .info(),
            Metric::new(
                "idle_timeouts",
                "idle polls that ran to their timeout",
                after.on_time as f64,
                "polls",
            )
            .info(),
            Metric::new(
                "server_fds",
                "server descriptors, idle polls open",
                fds_idle_open.map_or(f64::NAN, n),
                "fds",
            )
            .info(),
            Metric::new(
                "server_fds_end",
                "server descriptors at the end",
                fds_end.map_or(f64::NAN, n),
                "fds",
            )
            .info(),
            Metric::new(
                "open_s",
                "time to open the idle polls",
                opened.as_ref().map_or(0.0, |o| o.elapsed.as_secs_f64()),
                "s",
            )
            .info(),
            Metric::new(
                "cpu_after_close_s",
                "server CPU for the closed idle polls",
                drained.map_or(f64::NAN, |(cpu, _)| cpu),
                "s",
            ),
            Metric::new(
                "elapsed_s",
                "measured wall time",
                measure_elapsed.as_secs_f64(),
                "s",
            )
            .info(),
        ],
        params: json!({
            "idle": args.idle,
            "idle_users": args.idle_users,
            "messages": args.messages,
            "warmup": args.warmup,
            "poll_timeout_s": args.poll_timeout,
            "settle_ms": args.settle_ms,
            "room_id": &*room_id,
        }),
        failures,
        notes,
    })
}
