//! `hearth-bench`: drives a homeserver's client-server API with a fixed scenario and prints what
//! it measured. Only spec endpoints (plus Synapse's shared-secret registration, which Hearth also
//! offers) are used, so the same run can be pointed at Hearth, Synapse or anything else.
//!
//! Adding a scenario: a module with `XArgs` and `run(&Server, &Common, &XArgs) -> Report`, and a
//! variant in [`Scenario`]; `compare` and the output format come for free.

mod client;
mod common;
mod messages;
mod report;
mod send;
mod stats;

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
    /// Exit 0 even when requests failed or checks found lost or misordered events.
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
}

impl Scenario {
    async fn run(&self, server: &Server, common: &Common) -> Result<Report, String> {
        match self {
            Scenario::Send(args) => send::run(server, common, args).await,
            Scenario::Messages(args) => messages::run(server, common, args).await,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Scenario::Send(_) => "send",
            Scenario::Messages(_) => "messages",
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

async fn run(cli: Cli) -> ExitCode {
    let common = cli.common;
    let (targets, scenario) = match cli.command {
        Command::Send { target, args } => (
            vec![("server", target.server, target.shared_secret)],
            Scenario::Send(args),
        ),
        Command::Messages { target, args } => (
            vec![("server", target.server, target.shared_secret)],
            Scenario::Messages(args),
        ),
        Command::Compare {
            hearth,
            hearth_secret,
            synapse,
            synapse_secret,
            scenario,
        } => (
            vec![
                ("hearth", hearth, hearth_secret),
                ("synapse", synapse, synapse_secret),
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
    // One server after the other, never both at once: on a small machine they would share CPU.
    for (label, url, secret) in &targets {
        let result = match Server::new(url, secret, timeout) {
            Ok(server) => match server.versions().await {
                Ok(_) => scenario.run(&server, &common).await,
                Err(e) => Err(format!("{url} is not answering /versions: {e}")),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(report) => {
                report.print(label, url);
                ok &= report.failures.total() == 0 || common.allow_failures;
                reports.push((label, report));
            }
            Err(e) => {
                // A scenario that could not even be set up is never "allowed".
                println!("[{}] {label} ({url}) FAILED: {e}", scenario.name());
                println!(
                    "{}",
                    serde_json::json!({
                        "type": "error",
                        "scenario": scenario.name(),
                        "server": label,
                        "url": url,
                        "error": e,
                    })
                );
                ok = false;
            }
        }
    }
    if let [(a_label, a), (b_label, b)] = reports.as_slice() {
        report::print_ratio(scenario.name(), a_label, a, b_label, b);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
