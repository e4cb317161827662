//! `push`: the members of a busy room all send while each of them has an HTTP pusher; this tool
//! is the push gateway they point at. Measures notifications delivered per second and the delay
//! from each send's 200 to each notification's arrival at the gateway.
//!
//! Every message notifies every other member (the default `.m.rule.message` in a room of more
//! than two members), so a phase of M messages expects M × (members − 1) deliveries, one request
//! per notification per pusher. The server must be allowed to contact 127.0.0.1 (see
//! `bench/run.sh`: Hearth's `push.ip_range_allow`, Synapse's `ip_range_whitelist`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    ops::Range,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
use bytes::Bytes;
use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::{sync::Barrier, task::JoinSet};

use crate::{
    client::{Server, User},
    common::{busy_room, message_body, note, run_concurrently, run_id},
    report::{Metric, Report},
    stats::{Failures, Latencies},
    Common,
};

const NAME: &str = "push";
const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
const APP_ID: &str = "org.hearth.bench";

#[derive(Args, Debug, Clone)]
pub struct PushArgs {
    /// Where this tool listens as the push gateway, on 127.0.0.1; 0 picks any free port (the
    /// pushers are given the address actually bound).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Room members, each its own account with an HTTP pusher, all of them sending.
    #[arg(long, default_value_t = 50)]
    pub members: usize,
    /// Messages in the measured phase, all members together.
    #[arg(long, default_value_t = 2000)]
    pub messages: u64,
    /// Unmeasured messages first (one per member, as far as they go); their notifications are
    /// awaited before the measured phase starts.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// How long to wait after the last send's 200 for the notifications still missing, seconds.
    #[arg(long, default_value_t = 120.0)]
    pub drain_timeout: f64,
}

/// Failures in a row after which a member stops sending.
const GIVE_UP_AFTER: u32 = 10;

/// What the gateway received.
#[derive(Default)]
struct Received {
    /// First arrival of each notification: event ID, then pushkey.
    arrivals: HashMap<String, HashMap<String, Instant>>,
    /// Requests to the notify path, of any kind.
    requests: u64,
    /// The same event for the same pushkey again.
    repeats: u64,
    /// Requests without an event ID: unread-count updates.
    badges: u64,
    /// Requests that were not a notification we could read, and the first of them.
    malformed: u64,
    malformed_example: Option<String>,
    /// Requests to any other path or with another method.
    stray: u64,
    stray_example: Option<String>,
}

struct Gateway {
    received: Mutex<Received>,
}

impl Gateway {
    fn lock(&self) -> MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `POST /_matrix/push/v1/notify`: records every (event, pushkey) and rejects nothing.
async fn notify(State(g): State<Arc<Gateway>>, body: Bytes) -> (StatusCode, Json<Value>) {
    let now = Instant::now();
    let parsed = serde_json::from_slice::<Value>(&body);
    let mut got = g.lock();
    got.requests += 1;
    let n = match &parsed {
        Ok(v) => v.get("notification").filter(|n| n.is_object()),
        Err(_) => None,
    };
    let Some(n) = n else {
        got.malformed += 1;
        if got.malformed_example.is_none() {
            let text = String::from_utf8_lossy(&body);
            got.malformed_example = Some(format!(
                "no `notification` object: {}",
                text.chars().take(200).collect::<String>()
            ));
        }
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "errcode": "M_BAD_JSON", "error": "no notification object" })),
        );
    };
    let pushkeys: Vec<&str> = n
        .get("devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("pushkey").and_then(Value::as_str))
        .collect();
    // Synapse's badge updates carry `"id": ""` and no `event_id`; Hearth's no event at all.
    match n
        .get("event_id")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
    {
        None => got.badges += 1,
        Some(_) if pushkeys.is_empty() => {
            got.malformed += 1;
            if got.malformed_example.is_none() {
                got.malformed_example = Some(format!("a notification without pushkeys: {n}"));
            }
        }
        Some(event_id) => {
            let mut repeats = 0;
            let seen = got.arrivals.entry(event_id.to_owned()).or_default();
            for pushkey in pushkeys {
                if seen.contains_key(pushkey) {
                    repeats += 1;
                } else {
                    seen.insert(pushkey.to_owned(), now);
                }
            }
            got.repeats += repeats;
        }
    }
    (StatusCode::OK, Json(json!({ "rejected": [] })))
}

/// Anything but a POST to the notify path.
async fn stray(
    State(g): State<Arc<Gateway>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> (StatusCode, Json<Value>) {
    let mut got = g.lock();
    got.stray += 1;
    if got.stray_example.is_none() {
        got.stray_example = Some(format!("{method} {uri}"));
    }
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "errcode": "M_UNRECOGNIZED" })),
    )
}

/// One message the server acknowledged.
struct Acked {
    event_id: String,
    /// The member who sent it (its pusher must not be notified).
    sender: usize,
    at: Instant,
}

/// `n` split as evenly as it goes over `parts`; the first ones get one more.
fn split(n: u64, parts: usize) -> Vec<u64> {
    let parts_u = parts as u64;
    (0..parts_u)
        .map(|i| n / parts_u + u64::from(i < n % parts_u))
        .collect()
}

/// Every member sends its range of sequence numbers, each message after the previous one's 200,
/// all starting together. The acknowledged messages, failures, and the common start.
async fn send_phase(
    server: &Server,
    members: &[User],
    room_id: &Arc<str>,
    run: &Arc<str>,
    ranges: Vec<Range<u64>>,
    phase: &'static str,
) -> (Vec<Acked>, Failures, Instant) {
    let barrier = Arc::new(Barrier::new(members.len() + 1));
    let mut tasks = JoinSet::new();
    for (stream, (user, range)) in members.iter().cloned().zip(ranges).enumerate() {
        let (server, room_id, run, barrier) = (
            server.clone(),
            room_id.clone(),
            run.clone(),
            barrier.clone(),
        );
        tasks.spawn(async move {
            barrier.wait().await;
            let mut acked = Vec::new();
            let mut failures = Failures::default();
            let mut in_a_row = 0;
            let end = range.end;
            for seq in range {
                if in_a_row >= GIVE_UP_AFTER {
                    failures.add(
                        format!("{phase}: not attempted"),
                        format!(
                            "member {stream} gave up after {GIVE_UP_AFTER} failures in a row, \
                             {} messages unsent",
                            end - seq
                        ),
                    );
                    break;
                }
                let txn = format!("{run}-{stream}-{seq}");
                match server
                    .send_text(&user, &room_id, &txn, &message_body(stream, seq))
                    .await
                {
                    Ok(event_id) => {
                        in_a_row = 0;
                        acked.push(Acked {
                            event_id,
                            sender: stream,
                            at: Instant::now(),
                        });
                    }
                    Err(e) => {
                        in_a_row += 1;
                        failures.add(format!("{phase}: {}", e.category()), e);
                    }
                }
            }
            (acked, failures)
        });
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut acked = Vec::new();
    let mut failures = Failures::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((a, f)) => {
                acked.extend(a);
                failures.merge(f);
            }
            Err(e) => failures.add(format!("{phase}: sender task"), e),
        }
    }
    (acked, failures, started)
}

/// How many of the notifications `message` should cause have arrived (every member's pusher but
/// its sender's).
fn arrived_for(got: &Received, message: &Acked, pushkeys: &[String]) -> usize {
    got.arrivals.get(&message.event_id).map_or(0, |seen| {
        pushkeys
            .iter()
            .enumerate()
            .filter(|(i, k)| *i != message.sender && seen.contains_key(*k))
            .count()
    })
}

/// Waits until every notification `acked` should cause has arrived, or until `limit` has passed;
/// how many arrived.
async fn wait_for(
    gateway: &Gateway,
    acked: &[Acked],
    pushkeys: &[String],
    limit: Duration,
    phase: &str,
    t: Instant,
) -> u64 {
    let want = pushkeys.len().saturating_sub(1);
    let expected = (acked.len() * want) as u64;
    let deadline = Instant::now() + limit;
    // Messages not yet fully delivered, and the deliveries of those that are.
    let mut pending: Vec<&Acked> = acked.iter().collect();
    let mut complete = 0u64;
    let mut next_note = Instant::now() + Duration::from_secs(10);
    loop {
        let partial = {
            let got = gateway.lock();
            let mut partial = 0u64;
            pending.retain(|m| {
                let n = arrived_for(&got, m, pushkeys);
                if n >= want {
                    complete += want as u64;
                    false
                } else {
                    partial += n as u64;
                    true
                }
            });
            partial
        };
        let arrived = complete + partial;
        if pending.is_empty() {
            return arrived;
        }
        let now = Instant::now();
        if now >= deadline {
            return arrived;
        }
        if now >= next_note {
            note(
                NAME,
                t,
                format!("{phase}: {arrived} of {expected} notifications arrived"),
            );
            next_note = now + Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(50).min(deadline - now)).await;
    }
}

/// Gives every member an HTTP pusher pointing at the gateway at `url`, or with `None` deletes
/// those pushers again.
async fn set_pushers(
    server: &Server,
    members: &[User],
    pushkeys: &[String],
    url: Option<&str>,
    concurrency: usize,
) -> Result<(), String> {
    let items: Vec<(User, String)> = members.iter().cloned().zip(pushkeys.to_vec()).collect();
    let (server, url) = (server.clone(), url.map(str::to_owned));
    let set = move |(user, pushkey): (User, String)| {
        let (server, url) = (server.clone(), url.clone());
        async move {
            let deleting = url.is_none();
            let body = match url {
                Some(url) => json!({
                    "kind": "http",
                    "app_id": APP_ID,
                    "pushkey": pushkey,
                    "app_display_name": "bench",
                    "device_display_name": "bench",
                    "lang": "en",
                    "data": { "url": url },
                }),
                None => json!({ "kind": null, "app_id": APP_ID, "pushkey": pushkey }),
            };
            server
                .call(
                    Method::POST,
                    "/_matrix/client/v3/pushers/set",
                    Some(&user.token),
                    Some(&body),
                )
                .await
                .map(|_| ())
                .map_err(|e| {
                    let what = if deleting { "deleting" } else { "setting" };
                    format!("pushers/set ({what}) for {}: {e}", user.user_id)
                })
        }
    };
    run_concurrently(items, concurrency, set).await.map(|_| ())
}

fn secs(s: f64, what: &str) -> Result<Duration, String> {
    if s.is_finite() && s > 0.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(format!("{what} must be a positive number of seconds"))
    }
}

pub async fn run(server: &Server, common: &Common, args: &PushArgs) -> Result<Report, String> {
    if args.members < 2 {
        return Err("--members must be at least 2 (each message notifies the others)".into());
    }
    if args.messages == 0 {
        return Err("--messages must be at least 1".into());
    }
    let drain = secs(args.drain_timeout, "--drain-timeout")?;
    let t = Instant::now();

    let gateway = Arc::new(Gateway {
        received: Mutex::default(),
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("listening as the push gateway on {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("the push gateway's address: {e}"))?;
    let url = format!("http://{bound}{NOTIFY_PATH}");
    let app = Router::new()
        .route(NOTIFY_PATH, post(notify))
        .fallback(stray)
        .with_state(gateway.clone());
    let serving = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let result = measure(server, common, args, &gateway, &url, drain, t).await;
    serving.abort();
    result
}

async fn measure(
    server: &Server,
    common: &Common,
    args: &PushArgs,
    gateway: &Gateway,
    url: &str,
    drain: Duration,
    t: Instant,
) -> Result<Report, String> {
    let run: Arc<str> = run_id().into();
    let (_, members, room_id) = busy_room(server, common, &run, args.members).await?;
    let pushkeys: Vec<String> = (0..members.len()).map(|i| format!("{run}-{i}")).collect();
    let concurrency = common.setup_concurrency;
    let set = set_pushers(server, &members, &pushkeys, Some(url), concurrency).await;
    let result = match set {
        Ok(()) => {
            note(
                NAME,
                t,
                format!(
                    "{} members with pushers in {room_id}, gateway {url}",
                    members.len()
                ),
            );
            let setup = Setup {
                members: &members,
                pushkeys: &pushkeys,
                room_id: &room_id,
                run: &run,
            };
            phases(server, args, gateway, url, drain, t, &setup).await
        }
        Err(e) => Err(e),
    };
    // Whatever is still queued must not keep a server busy (or retrying a gateway that is gone)
    // during the scenarios that follow.
    let cleanup = set_pushers(server, &members, &pushkeys, None, concurrency).await;
    match (result, cleanup) {
        (Ok(mut report), Err(e)) => {
            report
                .notes
                .push(format!("deleting the pushers afterwards failed: {e}"));
            Ok(report)
        }
        (result, _) => result,
    }
}

/// What the measured phases run on.
struct Setup<'a> {
    members: &'a [User],
    pushkeys: &'a [String],
    room_id: &'a Arc<str>,
    run: &'a Arc<str>,
}

async fn phases(
    server: &Server,
    args: &PushArgs,
    gateway: &Gateway,
    url: &str,
    drain: Duration,
    t: Instant,
    setup: &Setup<'_>,
) -> Result<Report, String> {
    let Setup {
        members,
        pushkeys,
        room_id,
        run,
    } = *setup;
    let per_message = (members.len() - 1) as u64;
    let mut notes = Vec::new();

    // Warm-up: connections to the gateway, each pusher's first delivery.
    let warm_counts = split(args.warmup, members.len());
    let warm_ranges: Vec<Range<u64>> = warm_counts.iter().map(|&c| 0..c).collect();
    let mut warmup_failures = Failures::default();
    if args.warmup > 0 {
        let (acked, failures, _) =
            send_phase(server, members, room_id, run, warm_ranges, "warm-up").await;
        warmup_failures = failures;
        if acked.is_empty() {
            let why = warmup_failures
                .top()
                .first()
                .map(|(category, n, example)| format!("{n} x {category}: {example}"))
                .unwrap_or_default();
            return Err(format!("no warm-up message was acknowledged: {why}"));
        }
        let expected = acked.len() as u64 * per_message;
        let arrived = wait_for(gateway, &acked, pushkeys, drain, "warm-up", t).await;
        if arrived == 0 {
            let got = gateway.lock();
            return Err(format!(
                "none of the {expected} warm-up notifications reached the gateway at {url} within \
                 {} s ({} requests to it, {} badge-only, {} malformed{}); may the server contact \
                 127.0.0.1? (Hearth: push.ip_range_allow, Synapse: ip_range_whitelist)",
                drain.as_secs_f64(),
                got.requests,
                got.badges,
                got.malformed,
                got.malformed_example
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default(),
            ));
        }
        if arrived < expected {
            notes.push(format!(
                "warm-up: only {arrived} of {expected} notifications arrived within {} s",
                drain.as_secs_f64()
            ));
        }
        note(
            NAME,
            t,
            format!("warm-up: {arrived} of {expected} notifications arrived"),
        );
    }

    let measured: Vec<Range<u64>> = warm_counts
        .iter()
        .zip(split(args.messages, members.len()))
        .map(|(&w, c)| w..w + c)
        .collect();
    let (acked, mut failures, started) =
        send_phase(server, members, room_id, run, measured, "send").await;
    let sent_at = acked.iter().map(|a| a.at).max().unwrap_or(started);
    let send_elapsed = sent_at.duration_since(started);
    let expected = acked.len() as u64 * per_message;
    note(
        NAME,
        t,
        format!(
            "{} messages acknowledged in {:.1} s; waiting for {expected} notifications",
            acked.len(),
            send_elapsed.as_secs_f64()
        ),
    );
    wait_for(gateway, &acked, pushkeys, drain, "drain", t).await;

    let got = gateway.lock();
    let mut delays = Latencies::default();
    let mut early = 0u64;
    let mut last: Option<Instant> = None;
    let mut to_sender = 0u64;
    for message in &acked {
        let seen = got.arrivals.get(&message.event_id);
        for (i, key) in pushkeys.iter().enumerate() {
            let Some(&at) = seen.and_then(|s| s.get(key)) else {
                continue;
            };
            if i == message.sender {
                to_sender += 1;
                continue;
            }
            last = Some(last.map_or(at, |l| l.max(at)));
            match at.checked_duration_since(message.at) {
                Some(d) => delays.push(d),
                None => {
                    // Possible: the server may hand the notification over before the 200.
                    early += 1;
                    delays.push(Duration::ZERO);
                }
            }
        }
    }
    let delivered = delays.len() as u64;
    let missing = expected - delivered;
    let (repeats, badges, requests) = (got.repeats, got.badges, got.requests);
    if got.malformed > 0 {
        failures.add(
            "malformed notify request",
            format!(
                "{} requests, e.g. {}",
                got.malformed,
                got.malformed_example.as_deref().unwrap_or("?")
            ),
        );
    }
    if got.stray > 0 {
        failures.add(
            "request to the gateway outside POST /notify",
            format!(
                "{} requests, e.g. {}",
                got.stray,
                got.stray_example.as_deref().unwrap_or("?")
            ),
        );
    }
    drop(got);
    failures.merge(warmup_failures);
    if missing > 0 {
        failures.add(
            "not delivered to the gateway",
            format!(
                "{missing} of {expected} notifications within {} s of the last send",
                drain.as_secs_f64()
            ),
        );
    }
    if to_sender > 0 {
        failures.add(
            "notified the sender of its own message",
            format!("{to_sender} notifications"),
        );
    }
    if early > 0 {
        notes.push(format!(
            "{early} notifications arrived before their send's 200; their delay counts as 0 ms"
        ));
    }
    if repeats > 0 {
        notes.push(format!(
            "{repeats} notifications arrived again for the same event and pushkey (not counted \
             twice)"
        ));
    }
    let elapsed = last.map_or(send_elapsed, |l| l.duration_since(started));
    let drained = last.map_or(Duration::ZERO, |l| l.saturating_duration_since(sent_at));
    if missing > 0 {
        // Tells a slow server from one whose deliveries stopped.
        notes.push(format!(
            "the last notification arrived {:.1} s after the last send's 200; none in the {:.1} s \
             after that",
            drained.as_secs_f64(),
            (drain.as_secs_f64() - drained.as_secs_f64()).max(0.0)
        ));
    }

    Ok(Report {
        scenario: NAME,
        metrics: vec![
            Metric::new(
                "delivered_per_sec",
                "notifications delivered/s",
                delivered as f64 / elapsed.as_secs_f64(),
                "notif/s",
            ),
            Metric::new(
                "delay_p50_ms",
                "send 200 → gateway p50",
                delays.percentile_ms(50.0),
                "ms",
            ),
            Metric::new(
                "delay_p99_ms",
                "send 200 → gateway p99",
                delays.percentile_ms(99.0),
                "ms",
            ),
            Metric::new(
                "delay_mean_ms",
                "send 200 → gateway mean",
                delays.mean_ms(),
                "ms",
            ),
            Metric::new(
                "send_per_sec",
                "messages/s sent meanwhile",
                acked.len() as f64 / send_elapsed.as_secs_f64(),
                "msg/s",
            ),
            Metric::new(
                "delivered",
                "notifications delivered",
                delivered as f64,
                "notif",
            )
            .info(),
            Metric::new("missing", "notifications missing", missing as f64, "notif").info(),
            Metric::new("repeats", "repeated notifications", repeats as f64, "notif").info(),
            Metric::new("badges", "badge-only requests", badges as f64, "req").info(),
            Metric::new(
                "drain_s",
                "last arrival after the last 200",
                drained.as_secs_f64(),
                "s",
            )
            .info(),
        ],
        params: json!({
            "members": members.len(),
            "messages": args.messages,
            "acknowledged": acked.len(),
            "warmup": args.warmup,
            "expected_notifications": expected,
            "gateway_requests": requests,
            "drain_timeout_s": args.drain_timeout,
            "gateway": url,
            "room_id": &**room_id,
        }),
        failures,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_evenly() {
        assert_eq!(split(5, 3), vec![2, 2, 1]);
        assert_eq!(split(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split(0, 2), vec![0, 0]);
    }

    #[tokio::test]
    async fn gateway_counts_repeats_and_badges() {
        let g = Arc::new(Gateway {
            received: Mutex::default(),
        });
        let n = |body: Value| notify(State(g.clone()), Bytes::from(body.to_string()));
        let event = json!({ "notification": {
            "event_id": "$e", "devices": [{ "app_id": APP_ID, "pushkey": "r-1" }],
        }});
        assert_eq!(n(event.clone()).await.0, StatusCode::OK);
        assert_eq!(n(event).await.0, StatusCode::OK);
        let badge = json!({ "notification": {
            "id": "", "counts": { "unread": 1 }, "devices": [{ "pushkey": "r-1" }],
        }});
        assert_eq!(n(badge).await.0, StatusCode::OK);
        let (status, _) = notify(State(g.clone()), Bytes::from_static(b"nope")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let got = g.lock();
        assert_eq!(got.requests, 4);
        assert_eq!(got.repeats, 1);
        assert_eq!(got.badges, 1);
        assert_eq!(got.malformed, 1);
        assert_eq!(got.arrivals["$e"].len(), 1);
        let message = Acked {
            event_id: "$e".into(),
            sender: 0,
            at: Instant::now(),
        };
        let keys = ["r-0".to_owned(), "r-1".to_owned()];
        assert_eq!(arrived_for(&got, &message, &keys), 1);
    }
}
