//! `sync-memory`: the server's resident memory idle, and with thousands of /sync long-polls
//! waiting on it. Reads /proc, so the server must run on this machine and its PID be given.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::{
    client::{Server, User},
    common::{initial_syncs, note, register_all, run_concurrently, run_id},
    longpoll::{self, LongPolls},
    procfs,
    report::{Metric, Report},
    stats::Failures,
    Common,
};

#[derive(Args, Debug, Clone)]
pub struct SyncMemoryArgs {
    /// Long-polls held open at once.
    #[arg(long, default_value_t = 10_000)]
    pub polls: usize,
    /// Accounts the long-polls are spread over, round-robin. Every other one has a room of its
    /// own, the rest are in no room.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// The `timeout` of every long-poll, in seconds: longer than opening them all takes, so the
    /// memory is read while none is being re-issued (Hearth caps timeouts at 300 s).
    #[arg(long, default_value_t = 240)]
    pub poll_timeout: u64,
    /// Long-polls opened at once, each batch after the server has accepted the previous one.
    #[arg(long, default_value_t = 50)]
    pub open_batch: usize,
    /// Seconds to wait for the server to go quiet (under 5% of a core) after a step.
    #[arg(long, default_value_t = 180)]
    pub quiet_limit: u64,
    /// Do not wait, after closing the long-polls, until they would have timed out. The wait
    /// measures the CPU the server still spends on closed polls, and keeps a server that answers
    /// them anyway from doing so during the next scenario.
    #[arg(long)]
    pub no_drain: bool,
}

/// MiB from KiB.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Waits for the server to go quiet and its RSS to stop moving for 12 s, then reads the RSS
/// (KiB); what did not settle within `limit` is said in `notes`. Twelve seconds outlast tokio's
/// 10 s keep-alive of idle blocking threads, whose exit can hand back tens of MiB (Hearth's
/// password hashing runs on them).
async fn settle(
    pid: u32,
    limit: Duration,
    what: &str,
    notes: &mut Vec<String>,
) -> Result<u64, String> {
    if procfs::wait_quiet(pid, 0.05, 2, limit).await?.is_none() {
        notes.push(format!(
            "the server was still busy {} s {what}; memory read anyway",
            limit.as_secs()
        ));
    }
    let (rss, stable) = procfs::wait_rss_stable(pid, 12, Duration::from_secs(90)).await?;
    if !stable {
        notes.push(format!(
            "the server's RSS was still moving 90 s {what} (read {:.0} MiB)",
            mib(rss)
        ));
    }
    Ok(rss)
}

pub async fn run(
    server: &Server,
    common: &Common,
    args: &SyncMemoryArgs,
) -> Result<Report, String> {
    const NAME: &str = "sync-memory";
    let pid = server.pid.ok_or(
        "sync-memory reads the server's memory from /proc: give its PID with --pid \
         (or --hearth-pid / --synapse-pid with compare)",
    )?;
    if args.users == 0 || args.polls == 0 {
        return Err("--users and --polls must be at least 1".into());
    }
    longpoll::check_fd_limit(args.polls + 50)?;
    let t = Instant::now();
    let grace = Duration::from_secs_f64(common.timeout);
    let poll_timeout = Duration::from_secs(args.poll_timeout);
    let quiet_limit = Duration::from_secs(args.quiet_limit);
    let conc = common.setup_concurrency;
    let mut notes = Vec::new();
    let mut failures = Failures::default();
    // Idle: whatever earlier scenarios left, before this one adds anything.
    let rss_idle = settle(pid, quiet_limit, "before the scenario", &mut notes).await?;

    let setup = server.fresh_pool_with_timeout(grace.max(Duration::from_secs(300)))?;
    let run = run_id();
    let names = (0..args.users).map(|i| format!("hb{run}m{i}")).collect();
    let users = register_all(&setup, names, conc).await?;
    let with_room: Vec<User> = users.iter().step_by(2).cloned().collect();
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
    let sinces = initial_syncs(&setup, &users, conc, poll_timeout + grace).await?;
    note(
        NAME,
        t,
        format!(
            "registered {} users, rooms and initial syncs done",
            users.len()
        ),
    );
    drop(setup);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = settle(pid, quiet_limit, "after setup", &mut notes).await?;

    let pool = server.fresh_pool()?;
    let pollers: Vec<(User, String)> = users.into_iter().zip(sinces).collect();
    let spec = longpoll::Spec {
        polls: args.polls,
        timeout: poll_timeout,
        batch: args.open_batch,
        grace,
    };
    let (polls, opened) = LongPolls::open(&pool, &pollers, &spec).await?;
    note(
        NAME,
        t,
        format!(
            "{} long-polls opened in {:.1} s; waiting for the server to settle",
            args.polls,
            opened.elapsed.as_secs_f64()
        ),
    );
    let quiet = procfs::wait_quiet(pid, 0.05, 2, quiet_limit).await?;
    let settled = opened.elapsed + quiet.unwrap_or(quiet_limit);
    let rss_open = settle(
        pid,
        quiet_limit,
        "after the long-polls were opened",
        &mut notes,
    )
    .await?;
    let hwm = procfs::hwm_kib(pid)?;
    let fds_open = procfs::open_fds(pid)?;
    let counts = polls.counts();
    let fds_before = opened.fds_before.unwrap_or(0);
    let server_conns = fds_open.saturating_sub(fds_before);
    if server_conns < args.polls {
        failures.add(
            "long-polls: not all held by the server",
            format!(
                "the server's descriptors grew by {server_conns} for {} long-polls",
                args.polls
            ),
        );
    }
    if counts.in_flight < args.polls {
        failures.add(
            "long-polls: not all open",
            format!(
                "{} of {} in flight when the memory was read",
                counts.in_flight, args.polls
            ),
        );
    }
    if counts.early > 0 {
        notes.push(format!(
            "{} long-poll(s) returned before their timeout (re-issued)",
            counts.early
        ));
    }
    note(NAME, t, "memory read; closing the long-polls");

    // Closing: the server should let go of the connections (and whatever waits on them) at once.
    let close_started = Instant::now();
    let (poll_failures, early, deadline) = polls.close().await;
    drop(pool);
    failures.merge(poll_failures);
    for (kind, count, example) in early.top() {
        notes.push(format!(
            "{count} long-poll(s) returned early with {kind}, e.g. {example}"
        ));
    }
    let release_limit = Duration::from_secs(30);
    let (fds_left, released) =
        procfs::wait_fds_at_most(pid, fds_before + args.polls / 100, release_limit).await?;
    let release_s = close_started.elapsed().as_secs_f64();
    if !released {
        notes.push(format!(
            "{} s after the client closed {} long-polls the server still had {} more descriptors \
             than before them ({fds_left} vs {fds_before}): closed connections are held until \
             their poll times out",
            release_limit.as_secs(),
            args.polls,
            fds_left.saturating_sub(fds_before)
        ));
    }
    let drained = if args.no_drain {
        None
    } else {
        note(
            NAME,
            t,
            "long-polls closed; waiting until they would have timed out",
        );
        Some(longpoll::drain(pid, deadline).await?)
    };
    let rss_after = settle(
        pid,
        quiet_limit,
        "after the long-polls were closed",
        &mut notes,
    )
    .await?;

    let per_poll_kib = rss_open.saturating_sub(rss_before) as f64 / args.polls as f64;
    Ok(Report {
        scenario: "sync-memory",
        metrics: vec![
            Metric::new(
                "rss_open_mib",
                "RSS with the long-polls open",
                mib(rss_open),
                "MiB",
            ),
            Metric::new(
                "rss_per_poll_kib",
                "RSS growth per long-poll",
                per_poll_kib,
                "KiB",
            ),
            Metric::new(
                "rss_idle_mib",
                "RSS idle (scenario start)",
                mib(rss_idle),
                "MiB",
            ),
            Metric::new(
                "rss_before_mib",
                "RSS after setup, no polls",
                mib(rss_before),
                "MiB",
            ),
            Metric::new(
                "rss_after_mib",
                "RSS after closing the polls",
                mib(rss_after),
                "MiB",
            ),
            Metric::new(
                "cpu_after_close_s",
                "server CPU for the closed polls",
                drained.map_or(f64::NAN, |(cpu, _)| cpu),
                "s",
            ),
            Metric::new("hwm_mib", "peak RSS so far (VmHWM)", mib(hwm), "MiB").info(),
            Metric::new(
                "open_s",
                "time to open all and settle",
                settled.as_secs_f64(),
                "s",
            ),
            Metric::new(
                "polls_in_flight",
                "long-polls in flight at the reading",
                counts.in_flight as f64,
                "polls",
            )
            .info(),
            Metric::new(
                "server_connections",
                "server descriptors added by them",
                server_conns as f64,
                "fds",
            )
            .info(),
            Metric::new(
                "release_s",
                "time until the server let go",
                if released { release_s } else { f64::NAN },
                "s",
            )
            .info(),
        ],
        params: json!({
            "polls": args.polls,
            "users": args.users,
            "poll_timeout_s": args.poll_timeout,
            "open_batch": args.open_batch,
            "pid": pid,
            "fds_before": fds_before,
            "fds_open": fds_open,
            "fds_after_close": fds_left,
        }),
        failures,
        notes,
    })
}
