//! `initial-sync`: one user in many rooms, each with a name and a few messages, times a full
//! initial /sync (no `since`, default filter) and checks every room is in it.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::{json, Value};

use crate::{
    client::{Server, User},
    common::{message_body, note, password_for, register_all, run_concurrently, run_id},
    procfs,
    report::{Metric, Report},
    stats::{Failures, Latencies},
    Common,
};

#[derive(Args, Debug, Clone)]
pub struct InitialSyncArgs {
    /// Rooms the user is joined to, each created by it with its own name.
    #[arg(long, default_value_t = 500)]
    pub rooms: usize,
    /// Messages the user sends into each room after creating it.
    #[arg(long, default_value_t = 3)]
    pub messages_per_room: u64,
    /// Timed initial syncs, each from a new login (device), so that no server can answer from a
    /// cache of the previous identical request (Synapse keeps /sync responses for 2 minutes).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Our side's limit on each initial /sync, in seconds.
    #[arg(long, default_value_t = 300.0)]
    pub sync_timeout: f64,
}

pub fn room_name(i: usize) -> String {
    format!("hearth-bench room {i}")
}

/// The events of a joined room's `state` and `timeline` in a /sync response.
fn room_events(room: &Value) -> impl Iterator<Item = &Value> {
    ["/state/events", "/timeline/events"]
        .into_iter()
        .filter_map(|p| room.pointer(p).and_then(Value::as_array))
        .flatten()
}

/// Checks one initial sync against the rooms made: each in `rooms.join` with its name and
/// latest message, nothing else there. Returns how many rooms the response had.
fn check(
    body: &Value,
    rooms: &[String],
    merged: &HashSet<String>,
    messages_per_room: u64,
    failures: &mut Failures,
) -> usize {
    let Some(join) = body.pointer("/rooms/join").and_then(Value::as_object) else {
        failures.add(
            "initial sync: no rooms.join",
            "the response has no joined rooms",
        );
        return 0;
    };
    let ours: HashSet<&str> = rooms.iter().map(String::as_str).collect();
    for id in join.keys().filter(|id| !ours.contains(id.as_str())) {
        failures.add("initial sync: unknown room", id);
    }
    for (i, id) in rooms.iter().enumerate() {
        let Some(room) = join.get(id) else {
            failures.add("initial sync: room missing", id);
            continue;
        };
        if merged.contains(id) {
            // Two creations went into it; which name and messages won is anyone's guess.
            continue;
        }
        let name = room_name(i);
        let named = room_events(room).any(|e| {
            e.get("type").and_then(Value::as_str) == Some("m.room.name")
                && e.pointer("/content/name").and_then(Value::as_str) == Some(name.as_str())
        });
        if !named {
            failures.add("initial sync: room without its name", id);
        }
        if let Some(last) = messages_per_room.checked_sub(1) {
            let body = message_body(i, last);
            let latest = room
                .pointer("/timeline/events")
                .and_then(Value::as_array)
                .is_some_and(|t| {
                    t.iter().any(|e| {
                        e.pointer("/content/body").and_then(Value::as_str) == Some(body.as_str())
                    })
                });
            if !latest {
                failures.add(
                    "initial sync: latest message not in the timeline",
                    format!("{id}: `{body}`"),
                );
            }
        }
    }
    join.len()
}

/// Creates `count` rooms named `room_name(i)`, `--setup-concurrency` at a time. A server that
/// answers two createRoom requests with the same room ID (Hearth did for identical v12 create
/// events in the same millisecond) gets a failure per duplicate, and the room is made again one
/// at a time, so that the user still ends up in `count` distinct rooms. Returns them and the IDs
/// that were handed out twice (whose contents the checks then skip).
pub async fn create_rooms(
    server: &Server,
    common: &Common,
    user: &User,
    count: usize,
    failures: &mut Failures,
) -> Result<(Vec<String>, HashSet<String>), String> {
    let (s, u, rv) = (server.clone(), user.clone(), common.room_version.clone());
    let mut rooms = run_concurrently(
        (0..count).collect(),
        common.setup_concurrency,
        move |i: usize| {
            let (s, u, rv) = (s.clone(), u.clone(), rv.clone());
            async move {
                s.create_named_room(&u, rv.as_deref(), &room_name(i))
                    .await
                    .map_err(|e| format!("createRoom #{i}: {e}"))
            }
        },
    )
    .await?;
    let mut seen = HashSet::new();
    let mut merged = HashSet::new();
    for (i, room) in rooms.iter_mut().enumerate() {
        // A retry can collide again, if only with a room of ours from this very run.
        for attempt in 0.. {
            if seen.insert(room.clone()) {
                break;
            }
            if attempt >= 5 {
                return Err(format!(
                    "createRoom #{i} keeps returning rooms it already made"
                ));
            }
            failures.add(
                "setup: createRoom returned a room ID it had already returned",
                format!(
                    "{room} for room #{i}: concurrent creations by one user went into one room"
                ),
            );
            merged.insert(room.clone());
            *room = server
                .create_named_room(user, common.room_version.as_deref(), &room_name(i))
                .await
                .map_err(|e| format!("createRoom #{i} (again): {e}"))?;
        }
    }
    Ok((rooms, merged))
}

pub async fn run(
    server: &Server,
    common: &Common,
    args: &InitialSyncArgs,
) -> Result<Report, String> {
    const NAME: &str = "initial-sync";
    if args.rooms == 0 || args.repeat == 0 {
        return Err("--rooms and --repeat must be at least 1".into());
    }
    if !(args.sync_timeout.is_finite() && args.sync_timeout > 0.0) {
        return Err("--sync-timeout must be a positive number of seconds".into());
    }
    let sync_timeout = Duration::from_secs_f64(args.sync_timeout);
    if let Some(pid) = server.pid {
        // Whatever the previous scenario left the server doing is not this one's business.
        procfs::wait_quiet(pid, 0.05, 2, Duration::from_secs(300)).await?;
    }
    // Setup is not measured, and room creation may queue on a busy server: a generous limit.
    let server = &server.fresh_pool_with_timeout(sync_timeout)?;
    let t = Instant::now();
    let conc = common.setup_concurrency;
    let run = run_id();
    let username = format!("hb{run}u");
    let user = register_all(server, vec![username.clone()], 1)
        .await?
        .remove(0);

    let mut failures = Failures::default();
    let (rooms, merged) = create_rooms(server, common, &user, args.rooms, &mut failures).await?;
    note(NAME, t, format!("{} rooms created", rooms.len()));
    let (s, u, r, mpr) = (
        server.clone(),
        user.clone(),
        run.clone(),
        args.messages_per_room,
    );
    let indexed: Vec<(usize, String)> = rooms.iter().cloned().enumerate().collect();
    run_concurrently(indexed, conc, move |(i, room): (usize, String)| {
        let (s, u, r) = (s.clone(), u.clone(), r.clone());
        async move {
            for seq in 0..mpr {
                s.send_text(&u, &room, &format!("{r}-{i}-{seq}"), &message_body(i, seq))
                    .await
                    .map_err(|e| format!("message #{seq} into room #{i}: {e}"))?;
            }
            Ok(())
        }
    })
    .await?;
    let setup_s = t.elapsed().as_secs_f64();
    note(
        NAME,
        t,
        format!(
            "{} messages sent; timing initial syncs",
            args.rooms as u64 * mpr
        ),
    );

    let mut times = Latencies::default();
    let mut first_ms = f64::NAN;
    let mut rooms_seen = Vec::new();
    let mut bytes = 0;
    for rep in 0..args.repeat {
        let device: User = server
            .login(&username, &password_for(&username))
            .await
            .map_err(|e| format!("login #{rep}: {e}"))?;
        let started = Instant::now();
        match server.sync(&device, None, 0, sync_timeout).await {
            Ok(resp) => {
                let elapsed = resp.received.saturating_duration_since(started);
                if rep == 0 {
                    first_ms = elapsed.as_secs_f64() * 1000.0;
                }
                times.push(elapsed);
                bytes = resp.bytes;
                let n = check(
                    &resp.body,
                    &rooms,
                    &merged,
                    args.messages_per_room,
                    &mut failures,
                );
                if n != args.rooms {
                    failures.add(
                        "initial sync: room count",
                        format!("{n} rooms in rooms.join, {} joined", args.rooms),
                    );
                }
                rooms_seen.push(n);
                note(
                    NAME,
                    t,
                    format!(
                        "initial sync #{rep}: {:.0} ms, {n} rooms",
                        elapsed.as_secs_f64() * 1000.0
                    ),
                );
            }
            Err(e) => failures.add(format!("initial sync: {}", e.category()), e),
        }
    }
    let rooms_min = rooms_seen.iter().copied().min().unwrap_or(0);

    Ok(Report {
        scenario: "initial-sync",
        metrics: vec![
            Metric::new(
                "median_ms",
                "initial sync, median",
                times.percentile_ms(50.0),
                "ms",
            ),
            Metric::new("best_ms", "initial sync, best", times.min_ms(), "ms"),
            Metric::new("first_ms", "initial sync, first (coldest)", first_ms, "ms"),
            Metric::new(
                "rooms",
                "rooms in the response (fewest)",
                rooms_min as f64,
                "rooms",
            )
            .info(),
            Metric::new(
                "response_kib",
                "response size",
                bytes as f64 / 1024.0,
                "KiB",
            )
            .info(),
            Metric::new("setup_s", "setup (rooms, messages)", setup_s, "s").info(),
        ],
        params: json!({
            "rooms": args.rooms,
            "messages_per_room": args.messages_per_room,
            "repeat": args.repeat,
            "syncs_completed": times.len(),
        }),
        failures,
        notes: Vec::new(),
    })
}
