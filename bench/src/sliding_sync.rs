//! `sliding-sync`: simplified sliding sync (MSC4186) as Element X uses it.
//!
//! 1. First response: one user in many named rooms asks for its room list's first window (the
//!    request matrix-sdk-ui's `RoomListService` sends first: `[[0,19]]`, timeline 1, its 17
//!    `required_state` entries), from a new login each time; checked for the count and the
//!    window's rooms with their names.
//! 2. Idle connections: other users hold sliding sync long-polls open (each re-issued with its
//!    new `pos`, like a client); the server's resident memory before and with them gives the
//!    memory per open connection (needs `--pid`).
//! 3. Wake: with those connections open, a receiver long-polls its own connection while a
//!    sender posts one message at a time; the time from the send to the response that carries it.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::{json, Value};

use crate::{
    client::{Failure, Server, User},
    common::{join_all, message_body, note, password_for, register_all, run_concurrently, run_id},
    initial_sync::{create_rooms, room_name},
    procfs,
    report::{Metric, Report},
    stats::{Failures, Latencies},
    Common,
};

#[derive(Args, Debug, Clone)]
pub struct SlidingSyncArgs {
    /// Rooms of the user whose first response is timed.
    #[arg(long, default_value_t = 500)]
    pub rooms: usize,
    /// The first window's size (`ranges: [[0, window-1]]`).
    #[arg(long, default_value_t = 20)]
    pub window: usize,
    /// Timed first responses, each from a new login.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Idle sliding sync connections held open while the wake-ups are measured.
    #[arg(long, default_value_t = 1000)]
    pub idle: usize,
    /// Accounts the idle connections are spread over (each gets idle/idle_users connections,
    /// under distinct `conn_id`s).
    #[arg(long, default_value_t = 100)]
    pub idle_users: usize,
    /// Messages whose wake-up is measured, sent one at a time.
    #[arg(long, default_value_t = 100)]
    pub messages: u64,
    /// The `timeout` of every long-poll, in seconds.
    #[arg(long, default_value_t = 30)]
    pub poll_timeout: u64,
    /// Milliseconds between starting the receiver's long-poll and sending.
    #[arg(long, default_value_t = 50)]
    pub settle_ms: u64,
}

/// The `required_state` of matrix-sdk-ui 0.18's room list.
fn room_list_required_state() -> Value {
    json!([
        ["m.room.name", ""],
        ["m.room.encryption", ""],
        ["m.room.member", "$LAZY"],
        ["m.room.member", "$ME"],
        ["m.room.topic", ""],
        ["m.room.avatar", ""],
        ["m.room.canonical_alias", ""],
        ["m.room.power_levels", ""],
        ["org.matrix.msc3401.call.member", "*"],
        ["m.room.join_rules", ""],
        ["m.room.tombstone", ""],
        ["m.room.create", ""],
        ["m.room.history_visibility", ""],
        ["io.element.functional_members", ""],
        ["m.space.parent", "*"],
        ["m.space.child", "*"],
        ["org.matrix.msc3672.beacon_info", "*"]
    ])
}

fn room_list_request(conn_id: &str, window: usize) -> Value {
    json!({
        "conn_id": conn_id,
        "lists": { "all_rooms": {
            "ranges": [[0, window.saturating_sub(1)]],
            "timeline_limit": 1,
            "required_state": room_list_required_state(),
            "filters": {},
        }},
        "extensions": {
            "account_data": { "enabled": true },
            "receipts": { "enabled": true, "rooms": ["*"] },
            "typing": { "enabled": true },
        },
    })
}

fn pos_of(body: &Value) -> String {
    body["pos"].as_str().unwrap_or_default().to_owned()
}

/// Checks a first response: the list's count, the window's rooms, each with its name.
fn check_first(body: &Value, rooms: &[String], window: usize, failures: &mut Failures) {
    let count = body
        .pointer("/lists/all_rooms/count")
        .and_then(Value::as_u64);
    if count != Some(rooms.len() as u64) {
        failures.add(
            "first response: list count",
            format!("{count:?}, {} rooms joined", rooms.len()),
        );
    }
    let Some(sent) = body.get("rooms").and_then(Value::as_object) else {
        failures.add("first response: no rooms", "");
        return;
    };
    if sent.len() != window.min(rooms.len()) {
        failures.add(
            "first response: rooms in the window",
            format!("{} rooms, window of {window}", sent.len()),
        );
    }
    for (id, room) in sent {
        let Some(i) = rooms.iter().position(|r| r == id) else {
            failures.add("first response: unknown room", id);
            continue;
        };
        let named = room["required_state"].as_array().is_some_and(|s| {
            s.iter().any(|e| {
                e["type"] == "m.room.name" && e["content"]["name"] == room_name(i).as_str()
            })
        });
        if !named {
            failures.add("first response: room without its name", id);
        }
    }
}

/// Idle connections: each keeps long-polling with its latest `pos` until told to stop.
struct Idle {
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
    failed: Arc<AtomicU64>,
    opened: Arc<AtomicU64>,
}

impl Idle {
    fn open(
        server: &Server,
        users: &[User],
        per_user: usize,
        timeout: Duration,
        grace: Duration,
    ) -> Idle {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let opened = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for user in users {
            for c in 0..per_user {
                let (server, user, stop, failed, opened) = (
                    server.clone(),
                    user.clone(),
                    stop.clone(),
                    failed.clone(),
                    opened.clone(),
                );
                tasks.spawn(async move {
                    let body = json!({
                        "conn_id": format!("idle{c}"),
                        "lists": { "all_rooms": { "ranges": [[0, 9]], "timeline_limit": 1,
                            "required_state": [["m.room.name", ""]] } },
                    });
                    let mut pos: Option<String> = None;
                    let mut counted = false;
                    while !stop.load(Ordering::Relaxed) {
                        let wait = if pos.is_some() {
                            timeout.as_millis() as u64
                        } else {
                            0
                        };
                        if pos.is_some() && !counted {
                            counted = true;
                            opened.fetch_add(1, Ordering::Relaxed);
                        }
                        match server
                            .sliding_sync(&user, pos.as_deref(), wait, &body, timeout + grace)
                            .await
                        {
                            Ok((resp, _)) => pos = Some(pos_of(&resp)),
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                pos = None;
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                });
            }
        }
        Idle {
            stop,
            tasks,
            failed,
            opened,
        }
    }

    async fn close(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Long-polls the receiver's connection from `pos` until a response carries `body` in `room`.
async fn receive(
    server: Server,
    user: User,
    room: Arc<str>,
    mut pos: String,
    body: String,
    timeout: Duration,
    grace: Duration,
) -> Result<(Instant, String, Option<String>), Failure> {
    let request = json!({
        "conn_id": "receiver",
        "lists": { "all_rooms": { "ranges": [[0, 9]], "timeline_limit": 5,
            "required_state": [["m.room.name", ""]] } },
    });
    let deadline = Instant::now() + timeout + grace;
    while Instant::now() < deadline {
        let (resp, received) = server
            .sliding_sync(
                &user,
                Some(&pos),
                timeout.as_millis() as u64,
                &request,
                timeout + grace,
            )
            .await?;
        pos = pos_of(&resp);
        let found = resp["rooms"][&*room]["timeline"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["content"]["body"] == body.as_str())
            .map(|e| e["event_id"].as_str().unwrap_or_default().to_owned());
        if let Some(event_id) = found {
            return Ok((received, pos, Some(event_id)));
        }
    }
    Err(Failure::Malformed(format!("no response carried `{body}`")))
}

pub async fn run(
    server: &Server,
    common: &Common,
    args: &SlidingSyncArgs,
) -> Result<Report, String> {
    const NAME: &str = "sliding-sync";
    if args.rooms == 0 || args.repeat == 0 || args.window == 0 {
        return Err("--rooms, --window and --repeat must be at least 1".into());
    }
    if args.idle > 0 && args.idle_users == 0 {
        return Err("--idle-users must be at least 1".into());
    }
    let t = Instant::now();
    let grace = Duration::from_secs_f64(common.timeout);
    let poll_timeout = Duration::from_secs(args.poll_timeout);
    if let Some(pid) = server.pid {
        procfs::wait_quiet(pid, 0.05, 2, Duration::from_secs(300)).await?;
    }
    let setup = server.fresh_pool_with_timeout(grace.max(Duration::from_secs(300)))?;
    let run = run_id();
    let conc = common.setup_concurrency;
    let mut failures = Failures::default();
    let mut notes = Vec::new();

    // 1. The first response of a user in many rooms.
    let username = format!("hb{run}s");
    let user = register_all(&setup, vec![username.clone()], 1)
        .await?
        .remove(0);
    let (rooms, _merged) = create_rooms(&setup, common, &user, args.rooms, &mut failures).await?;
    let (s, u, r) = (setup.clone(), user.clone(), run.clone());
    let indexed: Vec<(usize, String)> = rooms.iter().cloned().enumerate().collect();
    run_concurrently(indexed, conc, move |(i, room): (usize, String)| {
        let (s, u, r) = (s.clone(), u.clone(), r.clone());
        async move {
            s.send_text(&u, &room, &format!("{r}-{i}"), &message_body(i, 0))
                .await
                .map(drop)
                .map_err(|e| format!("message into room #{i}: {e}"))
        }
    })
    .await?;
    note(
        NAME,
        t,
        format!("{} rooms made; timing first responses", rooms.len()),
    );
    let mut first = Latencies::default();
    let mut bytes = 0usize;
    for rep in 0..args.repeat {
        let device = setup
            .login(&username, &password_for(&username))
            .await
            .map_err(|e| format!("login #{rep}: {e}"))?;
        let request = room_list_request("room-list", args.window);
        let started = Instant::now();
        match setup.sliding_sync(&device, None, 0, &request, grace).await {
            Ok((body, received)) => {
                first.push(received.saturating_duration_since(started));
                bytes = body.to_string().len();
                check_first(&body, &rooms, args.window, &mut failures);
            }
            Err(e) => failures.add(format!("first response: {}", e.category()), e),
        }
    }

    // 2. Idle connections, and the memory they take.
    let mut names = vec![format!("hb{run}a"), format!("hb{run}b")];
    names.extend((0..args.idle_users).map(|i| format!("hb{run}i{i}")));
    let mut users = register_all(&setup, names, conc).await?;
    let idle_users = users.split_off(2);
    let (alice, bob) = (users[0].clone(), users[1].clone());
    let room: Arc<str> = setup
        .create_room(&alice, common.room_version.as_deref())
        .await
        .map_err(|e| format!("createRoom: {e}"))?
        .into();
    join_all(&setup, std::slice::from_ref(&bob), &room, conc).await?;
    let rss_before = match server.pid {
        Some(pid) => {
            procfs::wait_quiet(pid, 0.05, 2, Duration::from_secs(120)).await?;
            Some(
                procfs::wait_rss_stable(pid, 5, Duration::from_secs(60))
                    .await?
                    .0,
            )
        }
        None => None,
    };
    let per_user = if args.idle == 0 {
        0
    } else {
        args.idle.div_ceil(args.idle_users)
    };
    let idle_pool = server.fresh_pool()?;
    let idle = Idle::open(&idle_pool, &idle_users, per_user, poll_timeout, grace);
    let want = (per_user * idle_users.len()) as u64;
    let open_deadline = Instant::now() + Duration::from_secs(300);
    while idle.opened.load(Ordering::Relaxed) < want && Instant::now() < open_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let open = idle.opened.load(Ordering::Relaxed);
    if open < want {
        failures.add(
            "idle connections: not all opened",
            format!("{open} of {want}"),
        );
    }
    note(NAME, t, format!("{open} idle connections open"));
    let rss_open = match server.pid {
        Some(pid) => {
            procfs::wait_quiet(pid, 0.05, 2, Duration::from_secs(120)).await?;
            Some(
                procfs::wait_rss_stable(pid, 5, Duration::from_secs(60))
                    .await?
                    .0,
            )
        }
        None => None,
    };

    // 3. Wake-ups of a waiting connection.
    let live = server.fresh_pool()?;
    let receiver_request = json!({
        "conn_id": "receiver",
        "lists": { "all_rooms": { "ranges": [[0, 9]], "timeline_limit": 5,
            "required_state": [["m.room.name", ""]] } },
    });
    let mut pos = match live
        .sliding_sync(&bob, None, 0, &receiver_request, grace)
        .await
    {
        Ok((body, _)) => pos_of(&body),
        Err(e) => return Err(format!("the receiver's first request: {e}")),
    };
    let mut wake = Latencies::default();
    for seq in 0..args.messages + 3 {
        let measured = seq >= 3;
        let body = message_body(0, seq);
        let receiver = tokio::spawn(receive(
            live.clone(),
            bob.clone(),
            room.clone(),
            pos.clone(),
            body.clone(),
            poll_timeout,
            grace,
        ));
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
        let started = Instant::now();
        let sent = live
            .send_text(&alice, &room, &format!("{run}-w{seq}"), &body)
            .await;
        let received = receiver.await.map_err(|e| format!("receiver task: {e}"))?;
        match (sent, received) {
            (Ok(event_id), Ok((at, next, seen))) => {
                pos = next;
                if seen.as_deref() != Some(event_id.as_str()) {
                    failures.add(
                        "wake: another event",
                        format!("sent {event_id}, got {seen:?}"),
                    );
                } else if measured {
                    wake.push(at.saturating_duration_since(started));
                }
            }
            (sent, received) => {
                if let Err(e) = sent {
                    failures.add(format!("wake: send {}", e.category()), e);
                }
                if let Err(e) = received {
                    failures.add(format!("wake: sliding sync {}", e.category()), e);
                }
                match live
                    .sliding_sync(&bob, None, 0, &receiver_request, grace)
                    .await
                {
                    Ok((b, _)) => pos = pos_of(&b),
                    Err(e) => failures.add("wake: restart", e),
                }
            }
        }
    }
    let idle_failed = idle.failed.load(Ordering::Relaxed);
    idle.close().await;
    drop(idle_pool);
    if idle_failed > 0 {
        notes.push(format!(
            "{idle_failed} idle request(s) failed and were restarted"
        ));
    }
    let per_conn_kib = match (rss_before, rss_open) {
        (Some(b), Some(o)) if open > 0 => o.saturating_sub(b) as f64 / open as f64,
        _ => f64::NAN,
    };
    Ok(Report {
        scenario: "sliding-sync",
        metrics: vec![
            Metric::new(
                "first_median_ms",
                "first response, median",
                first.percentile_ms(50.0),
                "ms",
            ),
            Metric::new(
                "first_best_ms",
                "first response, best",
                first.min_ms(),
                "ms",
            ),
            Metric::new("wake_p50_ms", "wake-up p50", wake.percentile_ms(50.0), "ms"),
            Metric::new("wake_p99_ms", "wake-up p99", wake.percentile_ms(99.0), "ms"),
            Metric::new(
                "conn_kib",
                "memory per open connection",
                per_conn_kib,
                "KiB",
            ),
            Metric::new(
                "first_kib",
                "first response size",
                bytes as f64 / 1024.0,
                "KiB",
            )
            .info(),
            Metric::new("idle_open", "idle connections open", open as f64, "conns").info(),
            Metric::new("woken", "wake-ups measured", wake.len() as f64, "msg").info(),
        ],
        params: json!({
            "rooms": args.rooms,
            "window": args.window,
            "repeat": args.repeat,
            "idle": args.idle,
            "idle_users": args.idle_users,
            "messages": args.messages,
            "room_id": &*room,
        }),
        failures,
        notes,
    })
}
