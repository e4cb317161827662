//! Setup steps and message formats shared by the scenarios.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{sync::Semaphore, task::JoinSet};

use crate::client::{PageEvent, Server, User};

/// A short tag unique to this run, so accounts from earlier runs against the same server never
/// collide and each run's rooms are fresh.
pub fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    // Base 36 keeps localparts short; lowercase letters and digits are valid on every server.
    let mut n = nanos ^ u128::from(std::process::id());
    let mut out = Vec::new();
    while n > 0 {
        let digit = (n % 36) as u32;
        out.push(char::from_digit(digit, 36).unwrap_or('0'));
        n /= 36;
    }
    // The low digits change fastest: ten of them wrap only every ~42 days.
    out.iter().take(10).rev().collect()
}

/// A room of this run: its creator, `senders` more accounts joined to it, and its ID.
pub async fn busy_room(
    server: &Server,
    common: &crate::Common,
    run: &str,
    senders: usize,
) -> Result<(User, Vec<User>, Arc<str>), String> {
    let mut names = vec![format!("hb{run}c")];
    names.extend((0..senders).map(|i| format!("hb{run}s{i}")));
    let mut users = register_all(server, names, common.setup_concurrency).await?;
    let senders = users.split_off(1);
    let creator = users.remove(0);
    let room_id: Arc<str> = server
        .create_room(&creator, common.room_version.as_deref())
        .await
        .map_err(|e| format!("createRoom: {e}"))?
        .into();
    join_all(server, &senders, &room_id, common.setup_concurrency).await?;
    Ok((creator, senders, room_id))
}

/// Registers `names` with at most `concurrency` registrations in flight: password hashing is
/// deliberately slow on every server, and this is setup, not the measurement.
pub async fn register_all(
    server: &Server,
    names: Vec<String>,
    concurrency: usize,
) -> Result<Vec<User>, String> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for (i, name) in names.into_iter().enumerate() {
        let server = server.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let password = password_for(&name);
            let result = server.register(&name, &password).await;
            (i, name, result)
        });
    }
    let mut users = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, name, result) = joined.map_err(|e| format!("registration task: {e}"))?;
        let user = result.map_err(|e| format!("registering `{name}`: {e}"))?;
        users.push((i, user));
    }
    users.sort_by_key(|(i, _)| *i);
    Ok(users.into_iter().map(|(_, u)| u).collect())
}

/// The password `register_all` gives account `name`.
pub fn password_for(name: &str) -> String {
    format!("hearth-bench-{name}-pw")
}

/// Runs `f` on every item, at most `concurrency` at a time, and returns the results in the
/// items' order; the first error (by item order) fails the whole step.
pub async fn run_concurrently<T, R, F, Fut>(
    items: Vec<T>,
    concurrency: usize,
    f: F,
) -> Result<Vec<R>, String>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<R, String>> + Send,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let n = items.len();
    for (i, item) in items.into_iter().enumerate() {
        let (f, permits) = (f.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (i, f(item).await)
        });
    }
    let mut results: Vec<Option<Result<R, String>>> = (0..n).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.map_err(|e| format!("setup task: {e}"))?;
        results[i] = Some(result);
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("setup task vanished".into())))
        .collect()
}

/// An initial /sync (no `since`, `timeout=0`) for each user, `concurrency` at a time: the
/// `next_batch` each long-poll starts from.
pub async fn initial_syncs(
    server: &Server,
    users: &[User],
    concurrency: usize,
    request_timeout: Duration,
) -> Result<Vec<String>, String> {
    let server = server.clone();
    run_concurrently(users.to_vec(), concurrency, move |user: User| {
        let server = server.clone();
        async move {
            server
                .sync(&user, None, 0, request_timeout)
                .await
                .and_then(|r| r.next_batch())
                .map_err(|e| format!("initial /sync of {}: {e}", user.user_id))
        }
    })
    .await
}

/// Progress of a long setup, on stderr so that stdout stays the report.
pub fn note(scenario: &str, started: Instant, what: impl std::fmt::Display) {
    eprintln!(
        "  [{scenario} +{:.1}s] {what}",
        started.elapsed().as_secs_f64()
    );
}

/// Joins every user to the room, `concurrency` at a time.
pub async fn join_all(
    server: &Server,
    users: &[User],
    room_id: &str,
    concurrency: usize,
) -> Result<(), String> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for user in users.iter().cloned() {
        let server = server.clone();
        let permits = permits.clone();
        let room_id = room_id.to_owned();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let result = server.join(&user, &room_id).await;
            (user.user_id, result)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (user_id, result) = joined.map_err(|e| format!("join task: {e}"))?;
        result.map_err(|e| format!("{user_id} joining {room_id}: {e}"))?;
    }
    Ok(())
}

const BODY_PREFIX: &str = "hearth-bench ";

/// The body of message `seq` of stream `stream` (a sender, or the single filler). The numbers
/// live in the body itself, the one field every server returns untouched.
pub fn message_body(stream: usize, seq: u64) -> String {
    format!("{BODY_PREFIX}{stream}:{seq}")
}

/// The `(stream, seq)` of an event this tool sent, or `None` for anything else.
pub fn parse_body(event: &PageEvent) -> Option<(usize, u64)> {
    if !event.is_message() {
        return None;
    }
    let rest = event.body.as_deref()?.strip_prefix(BODY_PREFIX)?;
    let (stream, seq) = rest.split_once(':')?;
    Some((stream.parse().ok()?, seq.parse().ok()?))
}

/// Pages backwards through the whole room (from the newest event, no `from`) and returns every
/// event, newest first. Used to verify what a scenario wrote, outside the timed part.
pub async fn read_room(
    server: &Server,
    user: &User,
    room_id: &str,
    limit: u32,
    max_pages: usize,
) -> Result<Vec<PageEvent>, String> {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..max_pages {
        let page = server
            .messages_back(user, room_id, from.as_deref(), limit)
            .await
            .map_err(|e| format!("/messages: {e}"))?;
        events.extend(page.events);
        match page.end {
            // A token equal to the one we sent would loop forever; the spec says to stop when
            // `end` is absent, and a server that repeats itself has nothing more to give.
            Some(end) if from.as_deref() != Some(end.as_str()) => from = Some(end),
            _ => return Ok(events),
        }
    }
    Err(format!(
        "pagination did not reach the start of the room within {max_pages} pages"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        let event = PageEvent {
            event_id: Some("$e".into()),
            kind: Some("m.room.message".into()),
            sender: Some("@a:b".into()),
            body: Some(message_body(7, 1234)),
        };
        assert_eq!(parse_body(&event), Some((7, 1234)));
        let state = PageEvent {
            kind: Some("m.room.name".into()),
            ..event.clone()
        };
        assert_eq!(parse_body(&state), None);
        let foreign = PageEvent {
            body: Some("hello".into()),
            ..event
        };
        assert_eq!(parse_body(&foreign), None);
    }

    #[test]
    fn run_ids_are_valid_localparts() {
        let id = run_id();
        assert!(!id.is_empty() && id.len() <= 10);
        assert!(id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }
}
