//! `appservice`: senders post into a busy room that an application service watches (one of its
//! namespace users is a member); this tool is the appservice. Measures events delivered per
//! second through transactions and the delay from each send's 200 to its arrival there.
//!
//! The server must have a registration for it before it starts (see `bench/run.sh`): `--port`,
//! `--as-token` and `--hs-token` are that registration's, its user namespace `@_hbas_.*`.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::put,
    Json, Router,
};
use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::{sync::Notify, task::JoinSet};

use crate::{
    client::{encode, Server, User},
    common::{busy_room, message_body, run_id},
    report::{Metric, Report},
    stats::{Failures, Latencies},
    Common,
};

#[derive(Args, Debug, Clone)]
pub struct AppserviceArgs {
    /// Where this tool listens as the appservice (the registration's URL).
    #[arg(long)]
    pub port: u16,
    /// The registration's `as_token`.
    #[arg(long)]
    pub as_token: String,
    /// The registration's `hs_token`: transactions must carry it.
    #[arg(long)]
    pub hs_token: String,
    /// Concurrent senders, each its own account.
    #[arg(long, default_value_t = 20)]
    pub senders: usize,
    /// Messages in the measured phase, all senders together.
    #[arg(long, default_value_t = 2000)]
    pub messages: u64,
    /// Unmeasured messages per sender first.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
}

/// What the appservice received.
#[derive(Default)]
struct Received {
    /// Arrival of each message body, first arrival only.
    arrivals: HashMap<String, Instant>,
    /// Transaction IDs processed, to count repeats.
    txns: HashSet<String>,
    repeats: u64,
    bad_token: u64,
}

struct Receiver {
    hs_token: String,
    received: std::sync::Mutex<Received>,
    arrived: Notify,
}

async fn transaction(
    State(r): State<Arc<Receiver>>,
    Path(txn): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let now = Instant::now();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut got = r.received.lock().unwrap_or_else(|e| e.into_inner());
    if auth != format!("Bearer {}", r.hs_token) {
        got.bad_token += 1;
        return (
            StatusCode::FORBIDDEN,
            Json(json!({ "errcode": "M_FORBIDDEN" })),
        );
    }
    if !got.txns.insert(txn) {
        got.repeats += 1;
        return (StatusCode::OK, Json(json!({})));
    }
    for e in body["events"].as_array().into_iter().flatten() {
        if let Some(b) = e["content"]["body"].as_str() {
            got.arrivals.entry(b.to_owned()).or_insert(now);
        }
    }
    drop(got);
    r.arrived.notify_waiters();
    (StatusCode::OK, Json(json!({})))
}

/// Registers the appservice's user for this run and joins it to the room.
async fn watcher(
    server: &Server,
    args: &AppserviceArgs,
    run: &str,
    room_id: &str,
) -> Result<(), String> {
    let name = format!("_hbas_{run}");
    server
        .call(
            Method::POST,
            "/_matrix/client/v3/register",
            Some(&args.as_token),
            Some(&json!({ "type": "m.login.application_service", "username": name, "inhibit_login": true })),
        )
        .await
        .map_err(|e| format!("registering the appservice's user: {e}"))?;
    let server_name = server
        .call(
            Method::GET,
            "/_matrix/client/v3/account/whoami",
            Some(&args.as_token),
            None,
        )
        .await
        .map_err(|e| format!("whoami as the appservice: {e}"))?["user_id"]
        .as_str()
        .and_then(|u| u.split_once(':').map(|(_, s)| s.to_owned()))
        .ok_or("whoami: no user_id")?;
    let user_id = format!("@{name}:{server_name}");
    server
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/join/{}?user_id={}",
                encode(room_id),
                encode(&user_id)
            ),
            Some(&args.as_token),
            Some(&json!({})),
        )
        .await
        .map_err(|e| format!("joining as the appservice's user: {e}"))?;
    Ok(())
}

/// Sends `seqs` of each sender one after the other; the 200 time of every acknowledged body.
async fn send_phase(
    server: &Server,
    senders: &[User],
    room_id: &Arc<str>,
    run: &Arc<str>,
    seqs: Vec<std::ops::Range<u64>>,
) -> (Vec<(String, Instant)>, Failures, Duration) {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (stream, (user, range)) in senders.iter().cloned().zip(seqs).enumerate() {
        let (server, room_id, run) = (server.clone(), room_id.clone(), run.clone());
        tasks.spawn(async move {
            let mut acked = Vec::new();
            let mut failures = Failures::default();
            for seq in range {
                let body = format!("{run} {}", message_body(stream, seq));
                let txn = format!("{run}-{stream}-{seq}");
                match server.send_text(&user, &room_id, &txn, &body).await {
                    Ok(_) => acked.push((body, Instant::now())),
                    Err(e) => failures.add(e.category(), e),
                }
            }
            (acked, failures)
        });
    }
    let mut acked = Vec::new();
    let mut failures = Failures::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((a, f)) => {
                acked.extend(a);
                failures.merge(f);
            }
            Err(e) => failures.add("sender task", e),
        }
    }
    (acked, failures, started.elapsed())
}

/// Waits until every body in `acked` has arrived, or `limit` passes; the last arrival.
async fn wait_for(
    receiver: &Receiver,
    acked: &[(String, Instant)],
    limit: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let notified = receiver.arrived.notified();
        {
            let got = receiver.received.lock().unwrap_or_else(|e| e.into_inner());
            if acked.iter().all(|(b, _)| got.arrivals.contains_key(b)) {
                return acked
                    .iter()
                    .filter_map(|(b, _)| got.arrivals.get(b).copied())
                    .max();
            }
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
    }
}

pub async fn run(
    server: &Server,
    common: &Common,
    args: &AppserviceArgs,
) -> Result<Report, String> {
    if args.senders == 0 {
        return Err("--senders must be at least 1".into());
    }
    let receiver = Arc::new(Receiver {
        hs_token: args.hs_token.clone(),
        received: Default::default(),
        arrived: Notify::new(),
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("listening as the appservice on {addr}: {e}"))?;
    let app = Router::new()
        .route("/_matrix/app/v1/transactions/{txn}", put(transaction))
        .with_state(receiver.clone());
    let serving = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let run: Arc<str> = run_id().into();
    let (_, senders, room_id) = busy_room(server, common, &run, args.senders).await?;
    watcher(server, args, &run, &room_id).await?;

    let n = args.senders as u64;
    // Warm-up, delivered before the measurement starts.
    let warm: Vec<_> = (0..n).map(|_| 0..args.warmup).collect();
    let (acked, _, _) = send_phase(server, &senders, &room_id, &run, warm).await;
    if wait_for(&receiver, &acked, Duration::from_secs(120))
        .await
        .is_none()
    {
        serving.abort();
        return Err("the warm-up messages never reached the appservice".into());
    }

    let (each, rest) = (args.messages / n, args.messages % n);
    let measured: Vec<_> = (0..n)
        .map(|i| args.warmup..args.warmup + each + u64::from(i < rest))
        .collect();
    let started = Instant::now();
    let (acked, mut failures, send_elapsed) =
        send_phase(server, &senders, &room_id, &run, measured).await;
    let last = wait_for(&receiver, &acked, Duration::from_secs(300)).await;
    let got = receiver.received.lock().unwrap_or_else(|e| e.into_inner());
    let mut delays = Latencies::default();
    let mut missing = 0u64;
    for (body, acked_at) in &acked {
        match got.arrivals.get(body) {
            // Delivery may beat the sender's own 200: both follow the same durable write.
            Some(at) => delays.push(at.saturating_duration_since(*acked_at)),
            None => missing += 1,
        }
    }
    if missing > 0 {
        failures.add(
            "not delivered to the appservice",
            format!("{missing} messages"),
        );
    }
    if got.bad_token > 0 {
        failures.add("transaction without the hs_token", got.bad_token);
    }
    let repeats = got.repeats;
    drop(got);
    serving.abort();
    let delivered = delays.len() as f64;
    let elapsed = last.map_or(send_elapsed, |l| l.duration_since(started));
    Ok(Report {
        scenario: "appservice",
        metrics: vec![
            Metric::new(
                "delivered_per_sec",
                "events delivered to the appservice/s",
                delivered / elapsed.as_secs_f64(),
                "msg/s",
            ),
            Metric::new(
                "delay_p50_ms",
                "send 200 → appservice p50",
                delays.percentile_ms(50.0),
                "ms",
            ),
            Metric::new(
                "delay_p99_ms",
                "send 200 → appservice p99",
                delays.percentile_ms(99.0),
                "ms",
            ),
            Metric::new(
                "send_per_sec",
                "messages/s sent meanwhile",
                acked.len() as f64 / send_elapsed.as_secs_f64(),
                "msg/s",
            ),
        ],
        params: json!({
            "senders": args.senders,
            "messages": args.messages,
            "room_id": &*room_id,
            "repeated_transactions": repeats,
        }),
        failures,
        notes: Vec::new(),
    })
}
