//! `hearth-bench`: drives a homeserver's client-server API with a fixed scenario and prints what
//! it measured. Only spec endpoints (plus Synapse's shared-secret registration, which Hearth also
//! offers) are used, so the same run can be pointed at Hearth, Synapse or anything else.
//!
//! Every scenario ends with [`health::check`] against each server it drove: a fresh /sync must
//! still see a message sent after the load, or the run reports a failure instead of figures.
//!
//! Adding a scenario: a module with `XArgs` and `run(&Server, &Common, &XArgs) -> Report`, and a
//! variant in [`Scenario`]; `compare`, the health check and the output format come for free.

mod appservice;
mod client;
mod common;
mod health;
mod initial_sync;
mod join;
mod longpoll;
mod media;
mod messages;
mod procfs;
mod push;
mod report;
mod search;
mod send;
mod sliding_sync;
mod stats;
mod sync_latency;
mod sync_memory;

use std::{process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{client::Server, report::Report};

#[derive(Parser)]
#[command(
    name = "hearth-bench",
    version,
    about = "Load generator for Matrix homeservers"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Options every scenario shares.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Exit 0 even when requests failed or checks found lost or misordered events (never when
    /// setup or the closing health check failed).
    #[arg(long, global = true)]
    pub allow_failures: bool,
    /// Per-request timeout in seconds; a request that takes longer counts as a failure.
    #[arg(long, global = true, default_value_t = 30.0)]
    pub timeout: f64,
    /// Worker threads of the load generator. On a small machine it competes with the server for
    /// CPU, so it defaults to one.
    #[arg(long, global = true, default_value_t = 1)]
    pub client_threads: usize,
    /// Registrations and joins in flight during setup (not measured).
    #[arg(long, global = true, default_value_t = 8)]
    pub setup_concurrency: usize,
    /// Room version for createRoom; the server's default when left out.
    #[arg(long, global = true)]
    pub room_version: Option<String>,
}

/// One server to drive.
#[derive(Args, Debug, Clone)]
struct Target {
    /// Base URL of the client API, e.g. http://127.0.0.1:8008.
    #[arg(long)]
    server: String,
    /// The server's registration shared secret (Synapse's `registration_shared_secret`).
    #[arg(long)]
    shared_secret: String,
    /// The server's process ID, when it runs on this machine: `sync-memory` reads its memory
    /// from /proc, and the sync scenarios wait for it to go idle before measuring.
    #[arg(long)]
    pid: Option<u32>,
    /// Base URL of a second server's client API that federates with the first (`join`).
    #[arg(long, requires = "peer_secret")]
    peer: Option<String>,
    /// The second server's registration shared secret.
    #[arg(long)]
    peer_secret: Option<String>,
    /// The second server's process ID, when it runs on this machine.
    #[arg(long)]
    peer_pid: Option<u32>,
}

/// A second server of the same kind, federating with the first.
#[derive(Debug, Clone)]
struct Peer {
    url: String,
    secret: String,
    pid: Option<u32>,
}

fn peer(url: Option<String>, secret: Option<String>, pid: Option<u32>) -> Option<Peer> {
    Some(Peer {
        url: url?,
        secret: secret?,
        pid,
    })
}

#[derive(Subcommand)]
enum Command {
    /// N senders post into one room concurrently: messages/s and send latency.
    Send {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        args: send::SendArgs,
    },
    /// K readers page backwards through a filled room: pages/s, events/s, page latency, and a
    /// check of every pass for lost or misordered events.
    Messages {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        args: messages::MessagesArgs,
    },
    /// One receiver long-polls /sync while a sender posts one message at a time, with many idle
    /// long-polls open: delivery latency from send to /sync response.
    SyncLatency {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        args: sync_latency::SyncLatencyArgs,
    },
    /// Thousands of idle /sync long-polls: the server's resident memory before and with them
    /// (needs --pid).
    SyncMemory {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        args: sync_memory::SyncMemoryArgs,
    },
    /// One user in many named rooms: time of a full initial /sync, and every room in it.
    InitialSync {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        args: initial_sync::InitialSyncArgs,
    },
    /// Clients upload and download large files and ask for thumbnails of many images: MB/s
    /// both ways and thumbnails per second.
    Media {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        args: media::MediaArgs,
    },
    /// A user of a second server (--peer) joins rooms of N members on the first: time to the
    /// join's 200 and to the room in the user's /sync.
    Join {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        args: join::JoinArgs,
    },
    /// Senders post into a room an appservice (this tool) watches: events delivered per second
    /// through transactions, and the delay from each send's 200 to its arrival.
    Appservice {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        args: appservice::AppserviceArgs,
    },
    /// Members of a busy room, each with an HTTP pusher pointing at this tool (the push
    /// gateway), all send: notifications delivered per second and the delay from each send's
    /// 200 to the gateway's receipt.
    Push {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        args: push::PushArgs,
    },
    /// Simplified sliding sync: the first response of a user in many rooms, memory per open
    /// connection, and the wake-up of a waiting connection with many idle ones open.
    SlidingSync {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        args: sliding_sync::SlidingSyncArgs,
    },
    /// Many rooms filled with generated text, then /search: messages/s sent, the lag until the
    /// last are searchable, search latency by kind of query; user directory search over many
    /// named accounts (the server must list every local user).
    Search {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        args: search::SearchArgs,
    },
    /// Runs one scenario against Hearth, then Synapse, and prints both and the ratio.
    Compare {
        /// Hearth's client API base URL.
        #[arg(long)]
        hearth: String,
        /// Hearth's `registration.shared_secret`.
        #[arg(long)]
        hearth_secret: String,
        /// Synapse's client API base URL.
        #[arg(long)]
        synapse: String,
        /// Synapse's `registration_shared_secret`.
        #[arg(long)]
        synapse_secret: String,
        /// Hearth's process ID, when it runs on this machine (see `--pid`).
        #[arg(long)]
        hearth_pid: Option<u32>,
        /// Synapse's process ID, when it runs on this machine (see `--pid`).
        #[arg(long)]
        synapse_pid: Option<u32>,
        /// A second Hearth federating with the first (`join`).
        #[arg(long, requires = "hearth_peer_secret")]
        hearth_peer: Option<String>,
        #[arg(long)]
        hearth_peer_secret: Option<String>,
        #[arg(long)]
        hearth_peer_pid: Option<u32>,
        /// A second Synapse federating with the first (`join`).
        #[arg(long, requires = "synapse_peer_secret")]
        synapse_peer: Option<String>,
        #[arg(long)]
        synapse_peer_secret: Option<String>,
        #[arg(long)]
        synapse_peer_pid: Option<u32>,
        #[command(subcommand)]
        scenario: Scenario,
    },
}

/// The scenarios `compare` can run; the same options as the top-level subcommands.
#[derive(Subcommand, Clone)]
enum Scenario {
    /// N senders post into one room concurrently.
    Send(send::SendArgs),
    /// K readers page backwards through a filled room.
    Messages(messages::MessagesArgs),
    /// /sync delivery latency with many idle long-polls open.
    SyncLatency(sync_latency::SyncLatencyArgs),
    /// Resident memory with thousands of /sync long-polls open.
    SyncMemory(sync_memory::SyncMemoryArgs),
    /// Time of a full initial /sync of one user in many rooms.
    InitialSync(initial_sync::InitialSyncArgs),
    /// Upload and download throughput of large files, thumbnail generation rate.
    Media(media::MediaArgs),
    /// A user of the peer server joins rooms of N members on the first (needs the peers).
    Join(join::JoinArgs),
    /// Delivery to an appservice watching a busy room (needs its registration on both).
    Appservice(appservice::AppserviceArgs),
    /// Delivery to a push gateway (this tool) while every member of a busy room sends (the
    /// server must be allowed to contact 127.0.0.1).
    Push(push::PushArgs),
    /// Sliding sync: first response, memory per connection, wake-ups.
    SlidingSync(sliding_sync::SlidingSyncArgs),
    /// Full-text search while and after filling rooms, and the user directory (the server must
    /// list every local user: `user_directory.search_all_users`).
    Search(search::SearchArgs),
}

impl Scenario {
    async fn run(&self, server: &Server, common: &Common) -> Result<Report, String> {
        match self {
            Scenario::Send(args) => send::run(server, common, args).await,
            Scenario::Messages(args) => messages::run(server, common, args).await,
            Scenario::SyncLatency(args) => sync_latency::run(server, common, args).await,
            Scenario::SyncMemory(args) => sync_memory::run(server, common, args).await,
            Scenario::InitialSync(args) => initial_sync::run(server, common, args).await,
            Scenario::Media(args) => media::run(server, common, args).await,
            Scenario::Join(args) => join::run(server, common, args).await,
            Scenario::Appservice(args) => appservice::run(server, common, args).await,
            Scenario::Push(args) => push::run(server, common, args).await,
            Scenario::SlidingSync(args) => sliding_sync::run(server, common, args).await,
            Scenario::Search(args) => search::run(server, common, args).await,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Scenario::Send(_) => "send",
            Scenario::Messages(_) => "messages",
            Scenario::SyncLatency(_) => "sync-latency",
            Scenario::SyncMemory(_) => "sync-memory",
            Scenario::InitialSync(_) => "initial-sync",
            Scenario::Media(_) => "media",
            Scenario::Join(_) => "join",
            Scenario::Appservice(_) => "appservice",
            Scenario::Push(_) => "push",
            Scenario::SlidingSync(_) => "sliding-sync",
            Scenario::Search(_) => "search",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.common.client_threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hearth-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

/// The server at `url` (and its peer, if any), once each answers /versions.
async fn connect(
    url: &str,
    secret: &str,
    timeout: Duration,
    pid: Option<u32>,
    peer: Option<&Peer>,
) -> Result<Server, String> {
    let server = Server::new(url, secret, timeout, pid)?;
    server
        .versions()
        .await
        .map_err(|e| format!("{url} is not answering /versions: {e}"))?;
    let Some(p) = peer else {
        return Ok(server);
    };
    let other = Server::new(&p.url, &p.secret, timeout, p.pid)?;
    other
        .versions()
        .await
        .map_err(|e| format!("{} is not answering /versions: {e}", p.url))?;
    Ok(server.with_peer(other))
}

async fn run(cli: Cli) -> ExitCode {
    let common = cli.common;
    let single = |t: Target| {
        let p = peer(t.peer, t.peer_secret, t.peer_pid);
        vec![("server", t.server, t.shared_secret, t.pid, p)]
    };
    let (targets, scenario) = match cli.command {
        Command::Send { target, args } => (single(target), Scenario::Send(args)),
        Command::Messages { target, args } => (single(target), Scenario::Messages(args)),
        Command::SyncLatency { target, args } => (single(target), Scenario::SyncLatency(args)),
        Command::SyncMemory { target, args } => (single(target), Scenario::SyncMemory(args)),
        Command::InitialSync { target, args } => (single(target), Scenario::InitialSync(args)),
        Command::Media { target, args } => (single(target), Scenario::Media(args)),
        Command::Join { target, args } => (single(target), Scenario::Join(args)),
        Command::Appservice { target, args } => (single(target), Scenario::Appservice(args)),
        Command::Push { target, args } => (single(target), Scenario::Push(args)),
        Command::SlidingSync { target, args } => (single(target), Scenario::SlidingSync(args)),
        Command::Search { target, args } => (single(target), Scenario::Search(args)),
        Command::Compare {
            hearth,
            hearth_secret,
            synapse,
            synapse_secret,
            hearth_pid,
            synapse_pid,
            hearth_peer,
            hearth_peer_secret,
            hearth_peer_pid,
            synapse_peer,
            synapse_peer_secret,
            synapse_peer_pid,
            scenario,
        } => (
            vec![
                (
                    "hearth",
                    hearth,
                    hearth_secret,
                    hearth_pid,
                    peer(hearth_peer, hearth_peer_secret, hearth_peer_pid),
                ),
                (
                    "synapse",
                    synapse,
                    synapse_secret,
                    synapse_pid,
                    peer(synapse_peer, synapse_peer_secret, synapse_peer_pid),
                ),
            ],
            scenario,
        ),
    };
    let timeout = if common.timeout.is_finite() && common.timeout > 0.0 {
        Duration::from_secs_f64(common.timeout)
    } else {
        eprintln!("hearth-bench: --timeout must be a positive number of seconds");
        return ExitCode::from(2);
    };

    let mut ok = true;
    let mut reports = Vec::new();
    let name = scenario.name();
    // One server after the other, never both at once: on a small machine they would share CPU.
    for (label, url, secret, pid, peer) in &targets {
        let server = match connect(url, secret, timeout, *pid, peer.as_ref()).await {
            Ok(server) => server,
            Err(e) => {
                print_failure(name, label, url, &e);
                ok = false;
                continue;
            }
        };
        let result = scenario.run(&server, &common).await;
        match &result {
            Ok(report) => report.print_text(label, url),
            Err(e) => print_failure(name, label, url, e),
        }
        // Every server the scenario drove: this one, and the peer where `join` joined.
        let mut unhealthy = Vec::new();
        let peers = peer.as_ref().zip(server.peer.as_deref());
        let checked =
            std::iter::once((url, &server, false)).chain(peers.map(|(p, s)| (&p.url, s, true)));
        for (u, s, is_peer) in checked {
            let outcome = health::check(s, &common).await;
            health::print(name, label, u, is_peer, &outcome);
            if let Err(e) = outcome {
                unhealthy.push(if is_peer { format!("peer {u}: {e}") } else { e });
            }
        }
        match result {
            Ok(report) if unhealthy.is_empty() => {
                report.print_json(label, url);
                ok &= report.failures.total() == 0 || common.allow_failures;
                reports.push((label, report));
            }
            Ok(_) => {
                // Figures from a server that stopped delivering are not figures.
                let error = format!("health check: {}", unhealthy.join("; "));
                print_failure(name, label, url, &error);
                ok = false;
            }
            // A scenario that could not even be set up is never "allowed".
            Err(_) => ok = false,
        }
    }
    if let [(a_label, a), (b_label, b)] = reports.as_slice() {
        report::print_ratio(name, a_label, a, b_label, b);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A scenario that failed against one server, for people and as a JSON line (`"type":"error"`).
fn print_failure(scenario: &str, label: &str, url: &str, error: &str) {
    println!("[{scenario}] {label} ({url}) FAILED: {error}");
    let line = serde_json::json!({
        "type": "error",
        "scenario": scenario,
        "server": label,
        "url": url,
        "error": error,
    });
    println!("{line}");
}
