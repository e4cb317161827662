//! `search`: full-text search of room messages (`/search`) and the user directory
//! (`/user_directory/search`), in four parts.
//!
//! 1. Indexing while sending: `--senders` accounts, all in each of `--rooms` rooms, fill every
//!    room with `--messages-per-room` messages, `--concurrency` sends in flight over all rooms
//!    (round-robin, so the rooms fill evenly). Each body is `--vocabulary` pseudo-words (six
//!    letters, consonant-vowel, none an English stop word) drawn from a Zipf distribution, so a
//!    few words are in most messages and most words are rare, followed by a token found in no
//!    other message (`u<run>r<room>x<i>`). Then the tokens of each room's last message are
//!    searched for, newest first, until all are found: the lag from the last send's 200 to
//!    "searchable", and messages searchable per second from the first send on. A server that
//!    indexes in the send's transaction (Synapse) shows a lag of about one search.
//! 2. Search latency over the filled rooms, `--queries` searches of each kind one after the
//!    other, each term taken from a message that was sent (so it must find something): one word,
//!    two words of one message, a quoted phrase of two adjacent words (all `order_by: rank`), one
//!    word with `order_by: recent`, and a message's unique token (exactly that event must come
//!    back). Results must be in rank order and at most `--limit`.
//! 3. The user directory: `--users` accounts with generated names ("Amara Okafor"), created by an
//!    administrator through `PUT /_synapse/admin/v2/users/{userId}` with a display name and no
//!    password (both servers offer it; no password hashing, no device, one request each: the
//!    fastest honest path, as bcrypt or argon2 would make registration the bulk of the run, and
//!    Synapse keeps appservice users out of its directory). The wait until the last account is
//!    found, then `--directory-queries` searches for name prefixes of accounts that exist, each
//!    of which must find someone whose name matches. The accounts share no room with the
//!    searcher: the servers must list every local user (`bench/run.sh` sets Hearth's
//!    `user_directory.search_all_users` and Synapse's `user_directory.search_all_users`).
//! 4. The index's size on disk is not visible through the API: `bench/run.sh` prints it after
//!    this scenario (Hearth's `<database.path>/search`, Synapse's `event_search` table).
//!
//! The defaults (100 rooms × 50 messages, 10,000 accounts) keep the whole scenario under some
//! 15 minutes on a small machine, almost all of it Synapse's: on two cores it sent about 20
//! messages and created about 40 accounts a second (Hearth some 1,300 and 800). The
//! 100,000-message figure, which takes Synapse well over an hour at that rate:
//! `bench/run.sh --scenarios search --search-args "--messages-per-room 1000"`
//! (`--users 0` leaves out the directory).

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::{sync::Barrier, task::JoinSet};

use crate::{
    client::{Failure, Server, User},
    common::{note, password_for, register_all, run_concurrently, run_id},
    report::{Metric, Report},
    stats::{Failures, Latencies},
    Common,
};

const NAME: &str = "search";

#[derive(Args, Debug, Clone)]
pub struct SearchArgs {
    /// Rooms to fill with messages.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Messages sent into each room (1000 for the 100,000 messages of 100 rooms).
    #[arg(long, default_value_t = 50)]
    pub messages_per_room: usize,
    /// Accounts in every room that send the messages (message i of room r by sender
    /// (r + i) mod senders); the first one also searches.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Sends in flight at once, over all rooms.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Distinct words the messages are made of.
    #[arg(long, default_value_t = 3000)]
    pub vocabulary: usize,
    /// Exponent of the Zipf distribution of the words: the k-th most common word is drawn
    /// k^exponent times less often than the first.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Timed searches of each kind, one after the other.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Results per search (the request's `filter.limit`) and per directory search.
    #[arg(long, default_value_t = 10)]
    pub limit: u32,
    /// Accounts with generated display names in the user directory; 0 skips the directory.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Timed user directory searches.
    #[arg(long, default_value_t = 200)]
    pub directory_queries: usize,
    /// How long to wait for the last messages to be searchable after the last send's 200, and
    /// for the last account to be in the directory after its creation, seconds.
    #[arg(long, default_value_t = 300.0)]
    pub index_timeout: f64,
}

/// Failures in a row after which a sending worker stops.
const GIVE_UP_AFTER: u32 = 10;

/// Unmeasured searches of each kind before the timed ones.
const WARMUP_QUERIES: usize = 10;

/// How often a long step says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);

// --- generated text ------------------------------------------------------------------------------

/// splitmix64: small, fast and the same everywhere, so every run sends the same words.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const CONSONANTS: &[u8] = b"bdgklmnprstvz";
const VOWELS: &[u8] = b"aeiou";
/// Consonant-vowel syllables, and the six-letter words made of three of them.
const SYLLABLES: u64 = (CONSONANTS.len() * VOWELS.len()) as u64;
const SPELLINGS: u64 = SYLLABLES * SYLLABLES * SYLLABLES;
/// Spreads consecutive ranks over the spellings (coprime with `SPELLINGS`, so no two collide).
const SPREAD: u64 = 7919;

/// The words of the generated messages, most common first, with the Zipf distribution over them.
/// Every word is three consonant-vowel syllables: six letters that are neither English stop words
/// (PostgreSQL's English configuration, which Synapse searches with, drops those) nor numbers.
pub struct Vocabulary {
    words: Vec<String>,
    /// Running sums of the words' weights.
    cumulative: Vec<f64>,
}

impl Vocabulary {
    pub fn new(size: usize, exponent: f64) -> Result<Vocabulary, String> {
        if size == 0 || size as u64 > SPELLINGS {
            return Err(format!("--vocabulary must be between 1 and {SPELLINGS}"));
        }
        if !exponent.is_finite() || exponent < 0.0 {
            return Err("--zipf must be a non-negative number".into());
        }
        let words = (0..size).map(spell).collect();
        let mut total = 0.0;
        let cumulative = (0..size)
            .map(|k| {
                total += 1.0 / ((k + 1) as f64).powf(exponent);
                total
            })
            .collect();
        Ok(Vocabulary { words, cumulative })
    }

    pub fn word(&self, rank: usize) -> &str {
        &self.words[rank]
    }

    /// A word's rank, drawn from the distribution.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let u = rng.unit() * total;
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.words.len() - 1)
    }

    /// The words (ranks) of message `i` of room `room`: 4 to 16 of them, the same every run.
    pub fn message_words(&self, room: usize, i: usize) -> Vec<usize> {
        let mut rng = Rng::new(((room as u64) << 32) ^ i as u64 ^ 0x5EA2_C4B0_0000_0000);
        let n = 4 + rng.below(13);
        (0..n).map(|_| self.sample(&mut rng)).collect()
    }

    /// The body of message `i` of room `room`: its words, then its unique token.
    pub fn body(&self, room: usize, i: usize, token: &str) -> String {
        let mut body = String::new();
        for rank in self.message_words(room, i) {
            body.push_str(self.word(rank));
            body.push(' ');
        }
        body.push_str(token);
        body
    }
}

/// The six letters of the word of rank `k`.
fn spell(k: usize) -> String {
    let mut x = (k as u64 * SPREAD + 12_345) % SPELLINGS;
    let mut out = String::with_capacity(6);
    for _ in 0..3 {
        let s = (x % SYLLABLES) as usize;
        x /= SYLLABLES;
        out.push(CONSONANTS[s / VOWELS.len()] as char);
        out.push(VOWELS[s % VOWELS.len()] as char);
    }
    out
}

/// A word that is in message `i` of room `room` and in no other message of this run.
fn token(run: &str, room: usize, i: usize) -> String {
    format!("u{run}r{room}x{i}")
}

/// First names of the directory's accounts: ASCII (every server folds the same way), none
/// starting like a word of the servers' names or the accounts' IDs (`bench`, `hearth`,
/// `synapse`, `hb...`), so a name prefix finds people by their names only.
#[rustfmt::skip]
const FIRST: &[&str] = &[
    "Aaliyah", "Abdul", "Ada", "Adrian", "Ahmed", "Aiko", "Alan", "Alejandro", "Alice", "Amara",
    "Amir", "Ana", "Anders", "Andrea", "Anil", "Anna", "Arjun", "Astrid", "Aurora", "Bao",
    "Beatriz", "Boris", "Bruno", "Camila", "Carlos", "Carmen", "Chen", "Chiara", "Chloe", "Clara",
    "Daniel", "Dario", "David", "Deepa", "Diego", "Dmitri", "Elena", "Elif", "Elijah", "Emeka",
    "Emil", "Emma", "Erik", "Esther", "Fatima", "Felix", "Fiona", "Florian", "Freya", "Gabriel",
    "Grace", "Hana", "Hiroshi", "Ibrahim", "Ingrid", "Isaac", "Isabel", "Ivan", "Jamal", "James",
    "Jana", "Javier", "Jin", "Johan", "Jonas", "Jorge", "Julia", "Kai", "Kamala", "Karin", "Kenji",
    "Kofi", "Lars", "Laura", "Leila", "Leon", "Liam", "Lina", "Luca", "Lucia", "Luis", "Maja",
    "Malik", "Marco", "Maria", "Mateo", "Mei", "Mia", "Mikhail", "Nadia", "Naveen", "Nia",
    "Nikolai", "Noah", "Nora", "Olga", "Omar", "Oscar", "Pablo", "Paula", "Pedro", "Priya",
    "Rafael", "Rania", "Ravi", "Rosa", "Ruth", "Samir", "Sara", "Sofia", "Soren", "Tariq", "Tomas",
    "Uma", "Valentina", "Victor", "Wei", "Yara", "Yusuf", "Zara", "Zoe",
];

/// Last names, on the same terms as [`FIRST`].
#[rustfmt::skip]
const LAST: &[&str] = &[
    "Abe", "Adeyemi", "Agarwal", "Ahn", "Alvarez", "Andersson", "Ansari", "Bakker", "Banda",
    "Barros", "Bauer", "Bianchi", "Bjork", "Blanc", "Bondarenko", "Brown", "Campbell", "Castillo",
    "Chandra", "Chowdhury", "Costa", "Cruz", "Dahl", "Das", "Diallo", "Dubois", "Dumont", "Eriksen",
    "Esposito", "Evans", "Ferrari", "Fischer", "Fonseca", "Fournier", "Garcia", "Gomez", "Gonzalez",
    "Gupta", "Haddad", "Hansen", "Hernandez", "Hoffmann", "Horvat", "Huang", "Ito", "Iyer",
    "Jansen", "Jensen", "Jimenez", "Johansson", "Kaur", "Kelly", "Khan", "Kim", "Kowalski",
    "Kruger", "Kumar", "Lambert", "Larsen", "Laurent", "Lee", "Lehmann", "Lindqvist", "Lopez",
    "Lund", "Mahlangu", "Marin", "Martin", "Mazur", "Mendes", "Meyer", "Moreau", "Morales",
    "Moreno", "Murphy", "Musa", "Nakamura", "Navarro", "Nguyen", "Nielsen", "Novak", "Nowak", "Obi",
    "Okafor", "Oliveira", "Olsen", "Ortiz", "Osei", "Owusu", "Ozturk", "Park", "Patel", "Pereira",
    "Petrov", "Popescu", "Quinn", "Ramos", "Reddy", "Reyes", "Ricci", "Rivera", "Romano", "Rossi",
    "Russo", "Sato", "Schmidt", "Schneider", "Shah", "Silva", "Singh", "Smith", "Sokolov", "Suzuki",
    "Svensson", "Takahashi", "Tanaka", "Taylor", "Thomas", "Torres", "Tran", "Vargas", "Vasquez",
    "Vogel", "Volkov", "Wagner", "Walker", "Wang", "Weber", "Wilson", "Wong", "Wu", "Xu",
    "Yamamoto", "Yang", "Yilmaz", "Young", "Zhang", "Zhou", "Zielinski", "Zimmermann",
];

/// Spreads account numbers over the name pairs (coprime with their count, so the first
/// `FIRST.len() × LAST.len()` accounts all have different names).
const NAME_SPREAD: u64 = 7919;

/// The first and last name of directory account `i`.
pub fn person(i: usize) -> (&'static str, &'static str) {
    let pairs = (FIRST.len() * LAST.len()) as u64;
    let p = (i as u64 % pairs) * NAME_SPREAD % pairs;
    let p = p as usize;
    (FIRST[p % FIRST.len()], LAST[p / FIRST.len()])
}

/// At least three letters of `name` (all of it when shorter), at most all of it.
fn prefix(name: &str, rng: &mut Rng) -> String {
    let min = name.len().min(3);
    let len = min + rng.below(name.len() - min + 1);
    name[..len].to_owned()
}

/// The `q`-th directory search: a prefix of a first name, of a last name, or a first name and
/// the start of the last, of account `i`.
fn directory_term(i: usize, q: usize, rng: &mut Rng) -> String {
    let (first, last) = person(i);
    match q % 3 {
        0 => prefix(first, rng),
        1 => prefix(last, rng),
        _ => format!("{first} {}", prefix(last, rng)),
    }
}

/// Whether every word of `term` starts a word of `name`, ignoring case.
fn name_matches(term: &str, name: &str) -> bool {
    let name = name.to_lowercase();
    term.to_lowercase().split_whitespace().all(|t| {
        name.split(|c: char| !c.is_alphanumeric())
            .any(|w| w.starts_with(t))
    })
}

// --- requests ------------------------------------------------------------------------------------

/// One `/search` answer, reduced to what is checked.
struct Found {
    count: Option<u64>,
    /// Event ID and rank of each result, in the order given.
    results: Vec<(Option<String>, Option<f64>)>,
}

async fn search(
    server: &Server,
    user: &User,
    term: &str,
    order_by: &str,
    limit: u32,
) -> Result<Found, Failure> {
    let body = json!({ "search_categories": { "room_events": {
        "search_term": term,
        "order_by": order_by,
        "filter": { "limit": limit },
    }}});
    let resp = server
        .call(
            Method::POST,
            "/_matrix/client/v3/search",
            Some(&user.token),
            Some(&body),
        )
        .await?;
    let events = resp
        .pointer("/search_categories/room_events")
        .filter(|v| v.is_object())
        .ok_or_else(|| Failure::Malformed("no `search_categories.room_events`".into()))?;
    let results = events
        .get("results")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .map(|r| {
                    let id = r
                        .pointer("/result/event_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    (id, r.get("rank").and_then(Value::as_f64))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Found {
        count: events.get("count").and_then(Value::as_u64),
        results,
    })
}

/// `POST /user_directory/search`: user ID and display name of each result.
async fn directory(
    server: &Server,
    user: &User,
    term: &str,
    limit: u32,
) -> Result<Vec<(String, Option<String>)>, Failure> {
    let body = json!({ "search_term": term, "limit": limit });
    let resp = server
        .call(
            Method::POST,
            "/_matrix/client/v3/user_directory/search",
            Some(&user.token),
            Some(&body),
        )
        .await?;
    let results = resp
        .get("results")
        .and_then(Value::as_array)
        .ok_or_else(|| Failure::Malformed("no `results` array".into()))?;
    Ok(results
        .iter()
        .filter_map(|r| {
            let id = r.get("user_id").and_then(Value::as_str)?;
            let name = r.get("display_name").and_then(Value::as_str);
            Some((id.to_owned(), name.map(str::to_owned)))
        })
        .collect())
}

// --- part 1: sending and indexing ----------------------------------------------------------------

/// One message the server acknowledged.
struct Acked {
    room: usize,
    i: usize,
    event_id: String,
    at: Instant,
}

/// What the sending phase gave.
struct Sent {
    acked: Vec<Acked>,
    failures: Failures,
    latencies: Latencies,
    started: Instant,
}

/// Message `j` of the whole run is message `j / rooms` of room `j % rooms`: every room gets its
/// next message before any gets two more.
async fn send_all(
    server: &Server,
    senders: &[User],
    rooms: &[Arc<str>],
    args: &SearchArgs,
    run: &Arc<str>,
    vocab: &Arc<Vocabulary>,
    t: Instant,
) -> Sent {
    let total = rooms.len() * args.messages_per_room;
    let workers = args.concurrency.clamp(1, total.max(1));
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(workers + 1));
    let senders: Arc<[User]> = senders.into();
    let rooms: Arc<[Arc<str>]> = rooms.into();
    let mut tasks = JoinSet::new();
    for worker in 0..workers {
        let (server, senders, rooms, run, vocab) = (
            server.clone(),
            senders.clone(),
            rooms.clone(),
            run.clone(),
            vocab.clone(),
        );
        let (next, done, barrier) = (next.clone(), done.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let mut acked = Vec::new();
            let mut failures = Failures::default();
            let mut latencies = Latencies::default();
            let mut in_a_row = 0;
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                if j >= total {
                    break;
                }
                if in_a_row >= GIVE_UP_AFTER {
                    failures.add(
                        "send: not attempted",
                        format!("worker {worker} gave up after {GIVE_UP_AFTER} failures in a row"),
                    );
                    continue;
                }
                let (room, i) = (j % rooms.len(), j / rooms.len());
                let user = &senders[(room + i) % senders.len()];
                let body = vocab.body(room, i, &token(&run, room, i));
                let sent = Instant::now();
                match server
                    .send_text(user, &rooms[room], &format!("{run}-{j}"), &body)
                    .await
                {
                    Ok(event_id) => {
                        let at = Instant::now();
                        in_a_row = 0;
                        latencies.push(at - sent);
                        acked.push(Acked {
                            room,
                            i,
                            event_id,
                            at,
                        });
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        in_a_row += 1;
                        failures.add(format!("send: {}", e.category()), e);
                    }
                }
            }
            (acked, failures, latencies)
        });
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let n = done.load(Ordering::Relaxed);
                note(NAME, t, format!("{n} of {total} messages acknowledged"));
            }
        })
    };
    barrier.wait().await;
    let started = Instant::now();
    let mut sent = Sent {
        acked: Vec::with_capacity(total),
        failures: Failures::default(),
        latencies: Latencies::default(),
        started,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((a, f, l)) => {
                sent.acked.extend(a);
                sent.failures.merge(f);
                sent.latencies.extend(l);
            }
            Err(e) => sent.failures.add("send: worker task", e),
        }
    }
    progress.abort();
    // By room and number, so that what is drawn from them is the same every run.
    sent.acked.sort_by_key(|a| (a.room, a.i));
    sent
}

/// Searches for the unique token of each room's last acknowledged message, the most recent
/// first, until each has been found or `deadline` has passed. Returns when they were all
/// searchable (if they were), how many were found, and how many searches it took.
///
/// They were all searchable when the most recent was found, unless an older one was missing at
/// its first search: then when that one was found. The searches that merely confirm the older
/// ones do not count, or a slower search would look like a slower index.
async fn wait_searchable(
    server: &Server,
    searcher: &User,
    run: &str,
    acked: &[Acked],
    deadline: Instant,
    failures: &mut Failures,
) -> (Option<Instant>, usize, u64) {
    let mut last: Vec<Option<&Acked>> = Vec::new();
    for a in acked {
        if last.len() <= a.room {
            last.resize(a.room + 1, None);
        }
        if last[a.room].is_none_or(|l| l.at < a.at) {
            last[a.room] = Some(a);
        }
    }
    let mut pending: Vec<&Acked> = last.into_iter().flatten().collect();
    pending.sort_by_key(|a| std::cmp::Reverse(a.at));
    let probes = pending.len();
    let mut polls = 0u64;
    let mut errors_in_a_row = 0;
    let mut searchable: Option<Instant> = None;
    // Whether the probe at the head of `pending` has been looked for without success.
    let mut missed = false;
    while let Some(probe) = pending.first() {
        polls += 1;
        let term = token(run, probe.room, probe.i);
        match search(server, searcher, &term, "rank", 10).await {
            Ok(found) if !found.results.is_empty() => {
                let now = Instant::now();
                if searchable.is_none() || missed {
                    searchable = Some(searchable.map_or(now, |s| s.max(now)));
                }
                errors_in_a_row = 0;
                missed = false;
                check_unique(&found, &probe.event_id, "searchable", failures);
                pending.remove(0);
                continue;
            }
            Ok(_) => errors_in_a_row = 0,
            Err(e) => {
                errors_in_a_row += 1;
                failures.add(format!("searchable: {}", e.category()), e);
                if errors_in_a_row >= GIVE_UP_AFTER {
                    break;
                }
            }
        }
        missed = true;
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let found = probes - pending.len();
    (searchable.filter(|_| pending.is_empty()), found, polls)
}

/// A search for a message's unique token must find that message and nothing else.
fn check_unique(found: &Found, event_id: &str, phase: &str, failures: &mut Failures) {
    let ids: Vec<&str> = found
        .results
        .iter()
        .filter_map(|(id, _)| id.as_deref())
        .collect();
    if ids != [event_id] {
        failures.add(
            format!("{phase}: a unique token found something else"),
            format!("expected only {event_id}, got {ids:?}"),
        );
    }
}

// --- part 2: search latency ----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    OneWord,
    TwoWords,
    Phrase,
    Recent,
    Token,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::OneWord,
        Kind::TwoWords,
        Kind::Phrase,
        Kind::Recent,
        Kind::Token,
    ];

    fn key(self) -> &'static str {
        match self {
            Kind::OneWord => "one_word",
            Kind::TwoWords => "two_words",
            Kind::Phrase => "phrase",
            Kind::Recent => "recent",
            Kind::Token => "unique_word",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::OneWord => "search one word",
            Kind::TwoWords => "search two words",
            Kind::Phrase => "search \"phrase\"",
            Kind::Recent => "search one word, recent",
            Kind::Token => "search unique word",
        }
    }

    fn order_by(self) -> &'static str {
        if self == Kind::Recent {
            "recent"
        } else {
            "rank"
        }
    }
}

/// A search term of this kind drawn from message `message`, and the event it must find (unique
/// tokens only).
fn term(
    kind: Kind,
    vocab: &Vocabulary,
    run: &str,
    message: &Acked,
    rng: &mut Rng,
) -> (String, Option<String>) {
    let words = vocab.message_words(message.room, message.i);
    let word = |k: usize| vocab.word(words[k]).to_owned();
    match kind {
        Kind::OneWord | Kind::Recent => (word(rng.below(words.len())), None),
        Kind::TwoWords => {
            let a = rng.below(words.len());
            // Another word of the message; messages of one word repeated have none.
            let b = (1..words.len())
                .map(|d| (a + d) % words.len())
                .find(|&b| words[b] != words[a]);
            match b {
                Some(b) => (format!("{} {}", word(a), word(b)), None),
                None => (word(a), None),
            }
        }
        Kind::Phrase => {
            let a = rng.below(words.len() - 1);
            (format!("\"{} {}\"", word(a), word(a + 1)), None)
        }
        Kind::Token => (
            token(run, message.room, message.i),
            Some(message.event_id.clone()),
        ),
    }
}

/// The searches of one kind: latencies and the mean of the servers' `count`s.
async fn search_kind(
    server: &Server,
    searcher: &User,
    kind: Kind,
    (vocab, run, acked): (&Vocabulary, &str, &[Acked]),
    args: &SearchArgs,
    failures: &mut Failures,
) -> (Latencies, f64) {
    let mut rng = Rng::new(0xC0FF_EE00 + kind as u64);
    let mut latencies = Latencies::default();
    let (mut counted, mut counts) = (0u64, 0u64);
    for q in 0..WARMUP_QUERIES.min(args.queries) + args.queries {
        let warmup = q < WARMUP_QUERIES.min(args.queries);
        let message = &acked[rng.below(acked.len())];
        let (term, expect) = term(kind, vocab, run, message, &mut rng);
        let started = Instant::now();
        let result = search(server, searcher, &term, kind.order_by(), args.limit).await;
        let elapsed = started.elapsed();
        if warmup {
            continue;
        }
        let found = match result {
            Ok(found) => found,
            Err(e) => {
                failures.add(format!("{}: {}", kind.key(), e.category()), e);
                continue;
            }
        };
        latencies.push(elapsed);
        if let Some(c) = found.count {
            counted += 1;
            counts += c;
        }
        if found.results.is_empty() {
            failures.add(
                format!("{}: nothing found for a term of a sent message", kind.key()),
                format!(
                    "`{term}` (from message {} of room {})",
                    message.i, message.room
                ),
            );
            continue;
        }
        if found.results.len() > args.limit as usize {
            failures.add(
                format!("{}: more results than the limit", kind.key()),
                format!("{} results for `{term}`", found.results.len()),
            );
        }
        if kind.order_by() == "rank" {
            let ranks: Vec<f64> = found.results.iter().filter_map(|r| r.1).collect();
            if ranks.windows(2).any(|w| w[1] > w[0]) {
                failures.add(
                    format!("{}: results not in rank order", kind.key()),
                    format!("`{term}`: ranks {ranks:?}"),
                );
            }
        }
        if let Some(event_id) = expect {
            check_unique(&found, &event_id, kind.key(), failures);
        }
    }
    let mean_count = if counted == 0 {
        f64::NAN
    } else {
        counts as f64 / counted as f64
    };
    (latencies, mean_count)
}

// --- part 3: the user directory ------------------------------------------------------------------

/// What the directory part measured.
struct DirectoryFigures {
    created_per_sec: f64,
    wait: Option<Duration>,
    latencies: Latencies,
}

async fn directory_part(
    server: &Server,
    common: &Common,
    args: &SearchArgs,
    run: &str,
    searcher: &User,
    failures: &mut Failures,
    t: Instant,
) -> Result<DirectoryFigures, String> {
    let admin_name = format!("hb{run}a");
    let admin = server
        .register_admin(&admin_name, &password_for(&admin_name))
        .await
        .map_err(|e| format!("registering an administrator: {e}"))?;
    let server_name = admin.server_name().to_owned();
    let user_id = |i: usize| format!("@hb{run}d{i}:{server_name}");
    let display = |i: usize| {
        let (first, last) = person(i);
        format!("{first} {last}")
    };

    let done = Arc::new(AtomicUsize::new(0));
    let progress = {
        let (done, total) = (done.clone(), args.users);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let n = done.load(Ordering::Relaxed);
                note(NAME, t, format!("{n} of {total} accounts created"));
            }
        })
    };
    let items: Vec<(usize, String, String)> = (0..args.users)
        .map(|i| (i, user_id(i), display(i)))
        .collect();
    let (srv, adm, counter) = (server.clone(), admin.clone(), done.clone());
    let started = Instant::now();
    let created = run_concurrently(
        items,
        common.setup_concurrency,
        move |(i, id, name): (usize, String, String)| {
            let (server, admin, done) = (srv.clone(), adm.clone(), counter.clone());
            async move {
                server
                    .admin_create_user(&admin, &id, &name)
                    .await
                    .map_err(|e| format!("creating account #{i} {id}: {e}"))?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok(Instant::now())
            }
        },
    )
    .await;
    progress.abort();
    let created = created?;
    let created_per_sec = args.users as f64 / started.elapsed().as_secs_f64();
    let (last_i, last_at) = created
        .iter()
        .enumerate()
        .max_by_key(|(_, at)| **at)
        .map(|(i, at)| (i, *at))
        .ok_or("no account created")?;
    note(
        NAME,
        t,
        format!(
            "{} accounts created ({created_per_sec:.0}/s); waiting for the last in the directory",
            args.users
        ),
    );

    // The last account, by its ID (names repeat beyond the name pairs), with its name.
    let (want_id, want_name) = (user_id(last_i), display(last_i));
    let localpart = format!("hb{run}d{last_i}");
    let deadline = last_at + secs(args.index_timeout, "--index-timeout")?;
    let mut wait = None;
    let mut last_error = None;
    loop {
        match directory(server, searcher, &localpart, args.limit).await {
            Ok(results) => {
                if results
                    .iter()
                    .any(|(id, name)| *id == want_id && name.as_deref() == Some(&want_name))
                {
                    wait = Some(Instant::now().saturating_duration_since(last_at));
                    break;
                }
            }
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if wait.is_none() {
        return Err(format!(
            "{want_id} ({want_name}) was not in the user directory within {} s of its creation{}; \
             does the server list every local user (user_directory.search_all_users)?",
            args.index_timeout,
            last_error
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default(),
        ));
    }

    let mut rng = Rng::new(0xD1EC_7021);
    let mut latencies = Latencies::default();
    for q in 0..WARMUP_QUERIES.min(args.directory_queries) + args.directory_queries {
        let warmup = q < WARMUP_QUERIES.min(args.directory_queries);
        let term = directory_term(rng.below(args.users), q, &mut rng);
        let started = Instant::now();
        let result = directory(server, searcher, &term, args.limit).await;
        let elapsed = started.elapsed();
        if warmup {
            continue;
        }
        let results = match result {
            Ok(r) => r,
            Err(e) => {
                failures.add(format!("directory: {}", e.category()), e);
                continue;
            }
        };
        latencies.push(elapsed);
        if results.is_empty() {
            failures.add(
                "directory: nobody found for the name of an account",
                format!("`{term}`"),
            );
        }
        if results.len() > args.limit as usize {
            failures.add(
                "directory: more results than the limit",
                format!("{} for `{term}`", results.len()),
            );
        }
        if let Some((id, name)) = results
            .iter()
            .find(|(_, name)| !name.as_deref().is_some_and(|n| name_matches(&term, n)))
        {
            failures.add(
                "directory: a result whose name does not match",
                format!("`{term}` found {id} named {name:?}"),
            );
        }
    }
    Ok(DirectoryFigures {
        created_per_sec,
        wait,
        latencies,
    })
}

// --- the scenario --------------------------------------------------------------------------------

fn secs(s: f64, what: &str) -> Result<Duration, String> {
    if s.is_finite() && s > 0.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(format!("{what} must be a positive number of seconds"))
    }
}

pub async fn run(server: &Server, common: &Common, args: &SearchArgs) -> Result<Report, String> {
    if args.rooms == 0 || args.messages_per_room == 0 {
        return Err("--rooms and --messages-per-room must be at least 1".into());
    }
    if args.senders == 0 {
        return Err("--senders must be at least 1".into());
    }
    if args.limit == 0 {
        return Err("--limit must be at least 1".into());
    }
    let index_timeout = secs(args.index_timeout, "--index-timeout")?;
    let vocab = Arc::new(Vocabulary::new(args.vocabulary, args.zipf)?);
    let t = Instant::now();
    let run: Arc<str> = run_id().into();
    let concurrency = common.setup_concurrency;

    // Setup: a creator, the senders, the rooms, every sender in every room.
    let mut names = vec![format!("hb{run}c")];
    names.extend((0..args.senders).map(|i| format!("hb{run}s{i}")));
    let mut users = register_all(server, names, concurrency).await?;
    let senders = users.split_off(1);
    let creator = users.remove(0);
    let room_version = common.room_version.clone();
    let (srv, c) = (server.clone(), creator.clone());
    let rooms: Vec<Arc<str>> =
        run_concurrently((0..args.rooms).collect(), concurrency, move |r: usize| {
            let (server, creator, version) = (srv.clone(), c.clone(), room_version.clone());
            async move {
                server
                    .create_room(&creator, version.as_deref())
                    .await
                    .map(Arc::from)
                    .map_err(|e| format!("createRoom #{r}: {e}"))
            }
        })
        .await?;
    let joins: Vec<(User, Arc<str>)> = rooms
        .iter()
        .flat_map(|room| senders.iter().map(move |s| (s.clone(), room.clone())))
        .collect();
    let srv = server.clone();
    run_concurrently(joins, concurrency, move |(user, room): (User, Arc<str>)| {
        let server = srv.clone();
        async move {
            server
                .join(&user, &room)
                .await
                .map_err(|e| format!("{} joining {room}: {e}", user.user_id))
        }
    })
    .await?;
    let searcher = senders[0].clone();
    note(
        NAME,
        t,
        format!(
            "{} rooms, {} senders in each; sending {} messages",
            rooms.len(),
            senders.len(),
            rooms.len() * args.messages_per_room
        ),
    );

    // Part 1.
    let Sent {
        acked,
        mut failures,
        latencies: send_latencies,
        started,
    } = send_all(server, &senders, &rooms, args, &run, &vocab, t).await;
    if acked.is_empty() {
        let why = failures
            .top()
            .first()
            .map(|(category, n, example)| format!("{n} x {category}: {example}"))
            .unwrap_or_default();
        return Err(format!("no message was acknowledged: {why}"));
    }
    let last_sent = acked.iter().map(|a| a.at).max().unwrap_or(started);
    let send_elapsed = last_sent.duration_since(started);
    note(
        NAME,
        t,
        format!(
            "{} messages acknowledged in {:.1} s; waiting for them to be searchable",
            acked.len(),
            send_elapsed.as_secs_f64()
        ),
    );
    let mut notes = Vec::new();
    let (searchable_at, probes_found, polls) = wait_searchable(
        server,
        &searcher,
        &run,
        &acked,
        last_sent + index_timeout,
        &mut failures,
    )
    .await;
    let probes = acked
        .iter()
        .map(|a| a.room)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let (lag, indexed_per_sec) = match searchable_at {
        Some(at) => (
            at.saturating_duration_since(last_sent).as_secs_f64() * 1000.0,
            acked.len() as f64 / at.duration_since(started).as_secs_f64(),
        ),
        None => {
            failures.add(
                "searchable: last messages never found",
                format!(
                    "{} of {probes} rooms' last messages not searchable within {} s of the last \
                     send",
                    probes - probes_found,
                    args.index_timeout
                ),
            );
            (f64::NAN, f64::NAN)
        }
    };
    notes.push(format!(
        "searchable: the last message of each of {probes} rooms, {polls} searches"
    ));
    note(
        NAME,
        t,
        format!("searchable {lag:.0} ms after the last send's 200; timing searches"),
    );

    // Part 2.
    let mut metrics = vec![
        Metric::new(
            "send_per_sec",
            "messages/s sent",
            acked.len() as f64 / send_elapsed.as_secs_f64(),
            "msg/s",
        ),
        Metric::new(
            "indexed_per_sec",
            "messages searchable/s from 1st send",
            indexed_per_sec,
            "msg/s",
        ),
        Metric::new("searchable_lag_ms", "last send 200 → searchable", lag, "ms"),
        Metric::new(
            "send_p50_ms",
            "send p50",
            send_latencies.percentile_ms(50.0),
            "ms",
        ),
        Metric::new(
            "send_p99_ms",
            "send p99",
            send_latencies.percentile_ms(99.0),
            "ms",
        ),
    ];
    let mut counts = Vec::new();
    for kind in Kind::ALL {
        let (latencies, mean_count) = search_kind(
            server,
            &searcher,
            kind,
            (&vocab, &run, &acked),
            args,
            &mut failures,
        )
        .await;
        let key = kind.key();
        metrics.push(Metric::new(
            format!("{key}_p50_ms"),
            format!("{} p50", kind.label()),
            latencies.percentile_ms(50.0),
            "ms",
        ));
        metrics.push(Metric::new(
            format!("{key}_p99_ms"),
            format!("{} p99", kind.label()),
            latencies.percentile_ms(99.0),
            "ms",
        ));
        if kind != Kind::Token {
            counts.push(
                Metric::new(
                    format!("{key}_mean_count"),
                    format!("{}: mean count", kind.label()),
                    mean_count,
                    "events",
                )
                .info(),
            );
        }
    }

    // Part 3.
    let mut directory_info = Vec::new();
    if args.users > 0 {
        note(
            NAME,
            t,
            format!("creating {} directory accounts", args.users),
        );
        let d = directory_part(server, common, args, &run, &searcher, &mut failures, t).await?;
        metrics.push(Metric::new(
            "directory_p50_ms",
            "user directory search p50",
            d.latencies.percentile_ms(50.0),
            "ms",
        ));
        metrics.push(Metric::new(
            "directory_p99_ms",
            "user directory search p99",
            d.latencies.percentile_ms(99.0),
            "ms",
        ));
        directory_info.push(
            Metric::new(
                "directory_wait_ms",
                "last account created → found",
                d.wait.map_or(f64::NAN, |w| w.as_secs_f64() * 1000.0),
                "ms",
            )
            .info(),
        );
        directory_info.push(
            Metric::new(
                "accounts_per_sec",
                "accounts created/s (admin API)",
                d.created_per_sec,
                "acct/s",
            )
            .info(),
        );
    }
    metrics.push(Metric::new("messages", "messages sent", acked.len() as f64, "msg").info());
    metrics.extend(counts);
    metrics.extend(directory_info);

    Ok(Report {
        scenario: NAME,
        metrics,
        params: json!({
            "rooms": args.rooms,
            "messages_per_room": args.messages_per_room,
            "acknowledged": acked.len(),
            "senders": args.senders,
            "concurrency": args.concurrency,
            "vocabulary": args.vocabulary,
            "zipf": args.zipf,
            "queries": args.queries,
            "limit": args.limit,
            "users": args.users,
            "directory_queries": args.directory_queries,
            "searcher": searcher.user_id,
        }),
        failures,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// PostgreSQL's English stop words (tsearch_data/english.stop) that are six letters long,
    /// the only length the vocabulary has.
    const SIX_LETTER_STOP_WORDS: &[&str] = &[
        "myself", "itself", "theirs", "having", "during", "before", "should",
    ];

    #[test]
    fn vocabulary_words_are_distinct_six_letter_pseudo_words() {
        let v = Vocabulary::new(SPELLINGS as usize, 1.0).unwrap();
        let words: HashSet<&str> = (0..v.words.len()).map(|k| v.word(k)).collect();
        assert_eq!(words.len(), v.words.len());
        for w in &words {
            let b = w.as_bytes();
            assert_eq!(b.len(), 6, "{w}");
            for pair in b.chunks(2) {
                assert!(
                    CONSONANTS.contains(&pair[0]) && VOWELS.contains(&pair[1]),
                    "{w}"
                );
            }
            assert!(!SIX_LETTER_STOP_WORDS.contains(w), "{w}");
        }
        assert!(Vocabulary::new(0, 1.0).is_err());
        assert!(Vocabulary::new(SPELLINGS as usize + 1, 1.0).is_err());
        assert!(Vocabulary::new(10, f64::NAN).is_err());
    }

    #[test]
    fn words_follow_a_zipf_distribution() {
        let v = Vocabulary::new(3000, 1.0).unwrap();
        let mut rng = Rng::new(1);
        let mut hits = vec![0u32; v.words.len()];
        let n = 200_000;
        for _ in 0..n {
            hits[v.sample(&mut rng)] += 1;
        }
        // The first word has 1/H(3000) ≈ 11.7% of the draws, the second half that.
        let first = f64::from(hits[0]) / f64::from(n);
        assert!((0.10..0.13).contains(&first), "{first}");
        let ratio = f64::from(hits[0]) / f64::from(hits[1]);
        assert!((1.8..2.2).contains(&ratio), "{ratio}");
        // Most words are rare: the top 1% of the words make up over a third of the text.
        let top: u32 = hits[..30].iter().sum();
        assert!(f64::from(top) / f64::from(n) > 0.35);
        // A flat distribution with exponent 0.
        let flat = Vocabulary::new(4, 0.0).unwrap();
        let mut hits = [0u32; 4];
        for _ in 0..40_000 {
            hits[flat.sample(&mut rng)] += 1;
        }
        assert!(
            hits.iter().all(|&h| (9_000..11_000).contains(&h)),
            "{hits:?}"
        );
    }

    #[test]
    fn messages_are_deterministic_and_end_with_their_token() {
        let v = Vocabulary::new(3000, 1.0).unwrap();
        let a = v.body(3, 17, &token("run", 3, 17));
        assert_eq!(a, v.body(3, 17, &token("run", 3, 17)));
        assert_ne!(a, v.body(17, 3, &token("run", 17, 3)));
        assert!(a.ends_with(" urunr3x17"));
        let words = v.message_words(3, 17);
        assert!((4..=16).contains(&words.len()));
        assert_eq!(a.split(' ').count(), words.len() + 1);
        let lengths: HashSet<usize> = (0..200).map(|i| v.message_words(0, i).len()).collect();
        assert!(lengths.len() > 8, "{lengths:?}");
    }

    #[test]
    fn query_terms_come_from_the_message() {
        let v = Vocabulary::new(3000, 1.0).unwrap();
        let message = Acked {
            room: 2,
            i: 5,
            event_id: "$e".into(),
            at: Instant::now(),
        };
        let body = v.body(2, 5, &token("r", 2, 5));
        let mut rng = Rng::new(9);
        for _ in 0..50 {
            let (one, _) = term(Kind::OneWord, &v, "r", &message, &mut rng);
            assert!(body.split(' ').any(|w| w == one));
            let (two, _) = term(Kind::TwoWords, &v, "r", &message, &mut rng);
            assert!(two.split(' ').all(|w| body.split(' ').any(|b| b == w)));
            let (phrase, _) = term(Kind::Phrase, &v, "r", &message, &mut rng);
            let inner = phrase.trim_matches('"');
            assert!(phrase.starts_with('"') && body.contains(inner), "{phrase}");
            assert_eq!(inner.split(' ').count(), 2);
        }
        let (unique, expect) = term(Kind::Token, &v, "r", &message, &mut rng);
        assert_eq!((unique.as_str(), expect.as_deref()), ("urr2x5", Some("$e")));
    }

    #[test]
    fn names_are_distinct_and_clear_of_ids() {
        let pairs = FIRST.len() * LAST.len();
        let names: HashSet<(&str, &str)> = (0..pairs).map(person).collect();
        assert_eq!(names.len(), pairs);
        assert_eq!(person(pairs), person(0));
        for name in FIRST.iter().chain(LAST) {
            assert!(name.is_ascii() && name.chars().all(|c| c.is_ascii_alphabetic()));
            let lower = name.to_lowercase();
            for word in ["bench", "hearth", "synapse", "hb"] {
                let n = lower.len().min(word.len()).min(3);
                assert!(!word.starts_with(&lower[..n]), "{name} starts like {word}");
            }
        }
        assert_eq!(FIRST.len(), FIRST.iter().collect::<HashSet<_>>().len());
        assert_eq!(LAST.len(), LAST.iter().collect::<HashSet<_>>().len());
    }

    #[test]
    fn directory_terms_are_prefixes_of_the_name() {
        let mut rng = Rng::new(4);
        for i in 0..300 {
            let (first, last) = person(i);
            let full = format!("{first} {last}");
            let term = directory_term(i, i, &mut rng);
            assert!(name_matches(&term, &full), "{term} / {full}");
            assert!(term.split(' ').all(|w| w.len() >= 3 || full.contains(w)));
        }
        assert!(name_matches("ama oka", "Amara Okafor"));
        assert!(!name_matches("ama x", "Amara Okafor"));
        assert!(!name_matches("kafor", "Amara Okafor"));
    }
}
