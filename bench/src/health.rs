//! The check every scenario ends with, against every server it drove: a message sent after the
//! load must reach a /sync started after the load. A server whose /sync stream froze under load
//! (Hearth's once did) still answers everything else; without this check the run would report
//! its figures as if nothing were wrong.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{
    client::{Server, SyncResponse},
    common::{password_for, register_all, run_id},
    Common,
};

/// How long after the send the message has to reach the receiver's /sync.
const DEADLINE: Duration = Duration::from_secs(15);
/// The `timeout` of each long-poll while waiting for it.
const POLL: Duration = Duration::from_secs(10);

/// Two new users share a new room; B makes a fresh initial /sync, A sends a message with a unique
/// body, and B's long-polls from that sync must carry it within [`DEADLINE`]; then an initial
/// /sync of a new device of B must show the room with the message. Returns how long the message
/// took from the send to B's /sync, or what went wrong.
pub async fn check(server: &Server, common: &Common) -> Result<Duration, String> {
    // A pool of its own: whatever the scenario left in the shared one does not matter here.
    let server = &server.fresh_pool()?;
    let request_timeout = Duration::from_secs_f64(common.timeout);
    let run = run_id();
    let b_name = format!("hb{run}hb");
    let users = register_all(server, vec![format!("hb{run}ha"), b_name.clone()], 2).await?;
    let (a, b) = (&users[0], &users[1]);
    let room = server
        .create_room(a, common.room_version.as_deref())
        .await
        .map_err(|e| format!("createRoom: {e}"))?;
    server
        .join(b, &room)
        .await
        .map_err(|e| format!("{} joining {room}: {e}", b.user_id))?;
    let mut since = server
        .sync(b, None, 0, request_timeout)
        .await
        .and_then(|r| r.next_batch())
        .map_err(|e| format!("initial /sync: {e}"))?;

    let body = format!("health-check {run}");
    let started = Instant::now();
    server
        .send_text(a, &room, &format!("{run}-health"), &body)
        .await
        .map_err(|e| format!("sending `{body}`: {e}"))?;
    let deadline = started + DEADLINE;
    let mut responses = 0;
    let seen = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "/sync did not deliver `{body}` within {} s of the send ({responses} responses \
                 without it)",
                DEADLINE.as_secs()
            ));
        }
        let poll = POLL.min(left);
        let resp = server
            .sync(
                b,
                Some(&since),
                poll.as_millis() as u64,
                poll + Duration::from_secs(2),
            )
            .await
            .map_err(|e| format!("/sync since {since}: {e}"))?;
        if carries(&resp, &room, &body) {
            break resp.received.saturating_duration_since(started);
        }
        responses += 1;
        since = resp.next_batch().map_err(|e| e.to_string())?;
    };

    // A new device, so that no server can answer from a cache of B's first initial sync.
    let device = server
        .login(&b_name, &password_for(&b_name))
        .await
        .map_err(|e| format!("login: {e}"))?;
    let resp = server
        .sync(&device, None, 0, request_timeout)
        .await
        .map_err(|e| format!("initial /sync of a new device: {e}"))?;
    if resp
        .body
        .pointer("/rooms/join")
        .and_then(|j| j.get(&room))
        .is_none()
    {
        return Err(format!("a new initial /sync does not show {room}"));
    }
    if !carries(&resp, &room, &body) {
        return Err(format!(
            "a new initial /sync shows {room} without `{body}` in its timeline"
        ));
    }
    Ok(seen)
}

fn carries(resp: &SyncResponse, room: &str, body: &str) -> bool {
    resp.timeline(room)
        .iter()
        .any(|e| e.is_message() && e.body.as_deref() == Some(body))
}

/// Prints the outcome of [`check`] against `url` (the scenario's server, or its `peer`): a line
/// for people, `health: ok (...)` or `health: FAILED: ...`, and one JSON line for scripts.
pub fn print(
    scenario: &str,
    label: &str,
    url: &str,
    peer: bool,
    outcome: &Result<Duration, String>,
) {
    let which = if peer {
        format!(" (peer {url})")
    } else {
        String::new()
    };
    match outcome {
        Ok(d) => println!(
            "  health{which}: ok (message seen by a fresh /sync in {} ms)",
            d.as_millis()
        ),
        Err(e) => println!("  health{which}: FAILED: {e}"),
    }
    let line = json!({
        "type": "health",
        "scenario": scenario,
        "server": label,
        "url": url,
        "peer": peer,
        "ok": outcome.is_ok(),
        "ms": outcome.as_ref().ok().map(|d| d.as_millis() as u64),
        "error": outcome.as_ref().err(),
    });
    println!("{line}");
}
