//! `join`: a user of a second server joins a room that lives on the first. The second server
//! knows nothing of the room, so the join is the whole federated one: make_join, send_join
//! answered with the state of every member, verification of those events, adoption of the state.
//! Timed until the join's 200 and until the user's /sync on its own server shows the room.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::{json, Value};

use crate::{
    client::{Server, SyncResponse, User},
    common::{message_body, note, register_all, run_concurrently, run_id},
    procfs,
    report::{Metric, Report},
    stats::{Failures, Latencies},
    Common,
};

#[derive(Args, Debug, Clone)]
pub struct JoinArgs {
    /// Room sizes to measure, comma-separated: members on the first server before the join.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub members: Vec<usize>,
    /// Rooms per size, each with members of its own and joined once by a new user of the second
    /// server. Every measurement is then a first join (the second server has never seen the room
    /// or its members), not a join into a room it already holds.
    #[arg(long, default_value_t = 3)]
    pub rooms: usize,
    /// Messages sent into each room after it is filled, so the join comes after some history.
    #[arg(long, default_value_t = 300)]
    pub messages: usize,
    /// Our side's limit on one join, and separately on the /sync that shows it, in seconds.
    #[arg(long, default_value_t = 900.0)]
    pub join_timeout: f64,
}

/// Members who send the history, so that it is not one sender's.
const SENDERS: usize = 8;

/// Everyone whose latest membership in `room` of a /sync response is `join` (state and timeline
/// together, the timeline applied last).
fn joined_members(resp: &SyncResponse, room_id: &str) -> usize {
    let Some(room) = resp
        .body
        .pointer("/rooms/join")
        .and_then(|j| j.get(room_id))
    else {
        return 0;
    };
    let mut joined = HashSet::new();
    for path in ["/state/events", "/timeline/events"] {
        let events = room.pointer(path).and_then(Value::as_array);
        for e in events.into_iter().flatten() {
            if e.get("type").and_then(Value::as_str) != Some("m.room.member") {
                continue;
            }
            let Some(key) = e.get("state_key").and_then(Value::as_str) else {
                continue;
            };
            if e.pointer("/content/membership").and_then(Value::as_str) == Some("join") {
                joined.insert(key.to_owned());
            } else {
                joined.remove(key);
            }
        }
    }
    joined.len()
}

/// Waits for both servers to finish what setup left them doing (Synapse persists and fans out
/// in the background), so that the join is measured on idle servers.
async fn settle(a: &Server, b: &Server, notes: &mut Vec<String>) -> Result<(), String> {
    for (which, server) in [("first", a), ("second", b)] {
        let Some(pid) = server.pid else {
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        };
        if procfs::wait_quiet(pid, 0.05, 2, Duration::from_secs(300))
            .await?
            .is_none()
        {
            notes.push(format!(
                "the {which} server was still busy 300 s after setup; measured anyway"
            ));
        }
    }
    Ok(())
}

/// One room of `n` members on `a`: created by `creator`, joined by `fillers[..n - 1]`.
async fn create_room(a: &Server, common: &Common, creator: &User) -> Result<String, String> {
    a.create_room(creator, common.room_version.as_deref())
        .await
        .map_err(|e| format!("createRoom: {e}"))
}

/// Joins each room's members to it (interleaved, so that concurrent joins spread over the rooms
/// rather than queueing on one), then sends `messages` into each from the first few of them.
async fn fill(
    a: &Server,
    common: &Common,
    creator: &User,
    rooms: &[(String, Vec<User>)],
    messages: usize,
    tag: &str,
) -> Result<(), String> {
    let longest = rooms.iter().map(|(_, m)| m.len()).max().unwrap_or(0);
    let joins: Vec<(User, String)> = (0..longest)
        .flat_map(|i| {
            rooms
                .iter()
                .filter_map(move |(room, members)| Some((members.get(i)?.clone(), room.clone())))
        })
        .collect();
    let s = a.clone();
    run_concurrently(
        joins,
        common.setup_concurrency,
        move |(user, room): (User, String)| {
            let s = s.clone();
            async move {
                s.join(&user, &room)
                    .await
                    .map_err(|e| format!("{} joining {room}: {e}", user.user_id))
            }
        },
    )
    .await?;

    // (room index, room, sender, which of the room's senders it is, how many it has)
    let mut streams = Vec::new();
    for (r, (room, members)) in rooms.iter().enumerate() {
        let senders: Vec<&User> = std::iter::once(creator)
            .chain(members)
            .take(SENDERS)
            .collect();
        for (k, user) in senders.iter().enumerate() {
            streams.push((r, room.clone(), (*user).clone(), k, senders.len()));
        }
    }
    let (s, tag) = (a.clone(), tag.to_owned());
    run_concurrently(
        streams,
        common.setup_concurrency,
        move |(r, room, user, k, n): (usize, String, User, usize, usize)| {
            let (s, tag) = (s.clone(), tag.clone());
            async move {
                // The room's messages, dealt out round-robin to its senders.
                for seq in (k..messages).step_by(n) {
                    let txn = format!("{tag}-{r}-{seq}");
                    s.send_text(&user, &room, &txn, &message_body(r, seq as u64))
                        .await
                        .map_err(|e| format!("message {seq} into {room}: {e}"))?;
                }
                Ok(())
            }
        },
    )
    .await?;
    Ok(())
}

/// What one measured join gave.
struct Measured {
    join: Duration,
    /// From the start of the join to the /sync response that shows the room.
    sync: Option<Duration>,
    members: usize,
}

/// `joiner` (of `b`) joins `room_id` through `a_name` while its client syncs from `since`.
async fn measure(
    b: &Server,
    joiner: &User,
    room_id: &str,
    a_name: &str,
    since: String,
    limit: Duration,
    failures: &mut Failures,
) -> Option<Measured> {
    let started = Instant::now();
    if let Err(e) = b.join_via(joiner, room_id, a_name).await {
        failures.add(format!("join: {}", e.category()), e);
        return None;
    }
    let join = started.elapsed();
    let mut since = since;
    while started.elapsed() < limit {
        match b
            .sync(joiner, Some(&since), 30_000, Duration::from_secs(60))
            .await
        {
            Ok(resp) => {
                if resp
                    .body
                    .pointer("/rooms/join")
                    .and_then(|j| j.get(room_id))
                    .is_some()
                {
                    return Some(Measured {
                        join,
                        sync: Some(resp.received.saturating_duration_since(started)),
                        members: joined_members(&resp, room_id),
                    });
                }
                match resp.next_batch() {
                    Ok(next) => since = next,
                    Err(e) => {
                        failures.add(format!("sync: {}", e.category()), e);
                        break;
                    }
                }
            }
            Err(e) => {
                failures.add(format!("sync: {}", e.category()), e);
                break;
            }
        }
    }
    failures.add(
        "sync: the joined room never appeared in rooms.join",
        format!("{room_id} after {:.0?}", started.elapsed()),
    );
    Some(Measured {
        join,
        sync: None,
        members: 0,
    })
}

pub async fn run(server: &Server, common: &Common, args: &JoinArgs) -> Result<Report, String> {
    const NAME: &str = "join";
    let Some(peer) = server.peer.as_deref() else {
        return Err("join needs a second server that federates with the first (--peer)".into());
    };
    if args.members.is_empty() || args.members.contains(&0) || args.rooms == 0 {
        return Err("--members must list sizes of at least 1, and --rooms be at least 1".into());
    }
    if !(args.join_timeout.is_finite() && args.join_timeout > 0.0) {
        return Err("--join-timeout must be a positive number of seconds".into());
    }
    let limit = Duration::from_secs_f64(args.join_timeout);
    let mut notes = Vec::new();
    // Setup is not measured and may queue on a busy server: generous limits on both sides.
    let a = &server.fresh_pool_with_timeout(limit)?;
    let b = &peer.fresh_pool_with_timeout(limit)?;
    settle(a, b, &mut notes).await?;
    let t = Instant::now();
    let conc = common.setup_concurrency;
    let run = run_id();

    let creator = register_all(a, vec![format!("hb{run}c")], 1)
        .await?
        .remove(0);
    let a_name = creator.server_name().to_owned();
    let mut joiners = register_all(
        b,
        (0..=args.members.len() * args.rooms)
            .map(|i| format!("hb{run}j{i}"))
            .collect(),
        conc,
    )
    .await?;

    // Each server fetches the other's signing keys on first contact, and connections open:
    // a one-member room takes that cost out of the measured joins.
    let warmup = create_room(a, common, &creator).await?;
    let warm_joiner = joiners.remove(0);
    b.join_via(&warm_joiner, &warmup, &a_name)
        .await
        .map_err(|e| format!("warm-up join of {warmup} through {a_name}: {e}"))?;

    let mut failures = Failures::default();
    let mut metrics = Vec::new();
    let mut samples = serde_json::Map::new();
    let mut joiners = joiners.into_iter();
    for &n in &args.members {
        // Members of their own in every room: a server joining a room has usually never seen
        // most of its members, and interning them is part of the work.
        let mut names = Vec::new();
        for r in 0..args.rooms {
            names.extend((1..n).map(|i| format!("hb{run}s{n}r{r}m{i}")));
        }
        let mut members = register_all(a, names, conc).await?.into_iter();
        let mut rooms = Vec::new();
        for _ in 0..args.rooms {
            let room = create_room(a, common, &creator).await?;
            rooms.push((room, members.by_ref().take(n - 1).collect::<Vec<_>>()));
        }
        fill(
            a,
            common,
            &creator,
            &rooms,
            args.messages,
            &format!("{run}-{n}"),
        )
        .await?;
        let rooms: Vec<String> = rooms.into_iter().map(|(room, _)| room).collect();
        note(
            NAME,
            t,
            format!(
                "{} rooms of {n} members and {} messages each; settling",
                rooms.len(),
                args.messages
            ),
        );

        let mut joins = Latencies::default();
        let mut syncs = Latencies::default();
        let mut fewest = usize::MAX;
        let mut these = Vec::new();
        for room in &rooms {
            let joiner = joiners.next().ok_or("ran out of joining users")?;
            // The client is syncing when it joins, as a real one would be.
            let since = b
                .sync(&joiner, None, 0, limit)
                .await
                .and_then(|r| r.next_batch())
                .map_err(|e| format!("initial /sync of {}: {e}", joiner.user_id))?;
            settle(a, b, &mut notes).await?;
            let Some(m) = measure(b, &joiner, room, &a_name, since, limit, &mut failures).await
            else {
                continue;
            };
            joins.push(m.join);
            let sync_ms = m.sync.map(|s| s.as_secs_f64() * 1000.0);
            if let Some(s) = m.sync {
                syncs.push(s);
                fewest = fewest.min(m.members);
                // The joiner plus everyone already there: state that was left out would show.
                if m.members < n + 1 {
                    failures.add(
                        "sync: members missing from the joined room",
                        format!("{room}: {} joined members, {} expected", m.members, n + 1),
                    );
                }
            }
            note(
                NAME,
                t,
                format!(
                    "{n} members: join {:.0} ms, in /sync after {} ms, {} members seen",
                    m.join.as_secs_f64() * 1000.0,
                    sync_ms.map_or("-".into(), |s| format!("{s:.0}")),
                    m.members
                ),
            );
            these.push(json!({
                "room": room,
                "join_ms": m.join.as_secs_f64() * 1000.0,
                "sync_ms": sync_ms,
                "members": m.members,
            }));
        }
        samples.insert(n.to_string(), these.into());
        metrics.push(Metric::new(
            format!("join_{n}_median_ms"),
            format!("join, {n} members, median"),
            joins.percentile_ms(50.0),
            "ms",
        ));
        metrics.push(Metric::new(
            format!("sync_{n}_median_ms"),
            format!("join to /sync, {n} members, median"),
            syncs.percentile_ms(50.0),
            "ms",
        ));
        metrics.push(
            Metric::new(
                format!("join_{n}_best_ms"),
                format!("join, {n} members, best"),
                joins.min_ms(),
                "ms",
            )
            .info(),
        );
        metrics.push(
            Metric::new(
                format!("join_{n}_worst_ms"),
                format!("join, {n} members, worst"),
                joins.max_ms(),
                "ms",
            )
            .info(),
        );
        metrics.push(
            Metric::new(
                format!("sync_{n}_members"),
                format!("members in that /sync, {n} (fewest)"),
                if fewest == usize::MAX {
                    f64::NAN
                } else {
                    fewest as f64
                },
                "members",
            )
            .info(),
        );
    }
    metrics.push(
        Metric::new(
            "elapsed_s",
            "setup and joins",
            t.elapsed().as_secs_f64(),
            "s",
        )
        .info(),
    );

    Ok(Report {
        scenario: NAME,
        metrics,
        params: json!({
            "members": args.members,
            "rooms_per_size": args.rooms,
            "messages_per_room": args.messages,
            "first_server": a_name,
            "samples": samples,
        }),
        failures,
        notes,
    })
}
