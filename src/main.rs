//! The `hearth` command: runs the server (the default), or talks to a running one for admin tasks
//! (only one process may open the database, so these go through the admin API).

use std::{io::BufRead, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use hearth::{
    config::Config,
    server::{Server, CONSOLE_SECRET_FILE},
};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "hearth", version, about = "A Matrix homeserver")]
struct Cli {
    /// Configuration file (TOML). Without one, embedded defaults and HEARTH_* variables apply.
    #[arg(long, short, global = true, env = "HEARTH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Create an account on the running server.
    RegisterUser {
        /// The localpart of the new user ID (`alice` for @alice:server).
        name: String,
        /// Make the account a server admin.
        #[arg(long)]
        admin: bool,
        /// The password; read from standard input when left out.
        #[arg(long)]
        password: Option<String>,
    },
    /// Manage registration tokens on the running server.
    RegistrationToken {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// List the running server's application services and what each has yet to receive.
    Appservices,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token (random unless given) and print it.
    Create {
        #[arg(long)]
        token: Option<String>,
        /// How many registrations it allows; unlimited when left out.
        #[arg(long)]
        uses: Option<u64>,
        /// Expiry as a duration from now, e.g. 7d or 12h.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List tokens.
    List,
    /// Delete a token.
    Delete { token: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hearth: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking work is mostly database writes, which RocksDB groups anyway; a bounded pool
        // keeps bursts from growing hundreds of threads (and their allocator arenas).
        .max_blocking_threads(32)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hearth: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(config)),
        Command::RegisterUser {
            name,
            admin,
            password,
        } => runtime.block_on(register_user(&config, &name, admin, password)),
        Command::RegistrationToken { action } => {
            runtime.block_on(registration_token(&config, action))
        }
        Command::Appservices => runtime.block_on(appservices(&config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearth: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .map_err(|e| format!("invalid option `log.level`: {e}"))?;
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let server = Server::start(config).await.map_err(|e| e.to_string())?;
    server.run_until_signal().await.map_err(|e| e.to_string())
}

/// A client for the running server's admin API, authenticated with the console secret.
struct Console {
    http: reqwest::Client,
    base: String,
    secret: String,
}

impl Console {
    fn new(config: &Config) -> Result<Self, String> {
        let path = config.database.path.join(CONSOLE_SECRET_FILE);
        let secret = std::fs::read_to_string(&path)
            .map_err(|e| {
                format!(
                    "cannot read {} ({e}); is the server running with this configuration?",
                    path.display()
                )
            })?
            .trim()
            .to_owned();
        let mut addr = config.listen.client;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(Self {
            http: reqwest::Client::new(),
            base: format!("http://{addr}"),
            secret,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.secret);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach the server at {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let value = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, value))
    }
}

fn server_error(v: &Value) -> String {
    format!(
        "{}: {}",
        v["errcode"].as_str().unwrap_or("error"),
        v["error"].as_str().unwrap_or("unexpected answer")
    )
}

async fn register_user(
    config: &Config,
    name: &str,
    admin: bool,
    password: Option<String>,
) -> Result<(), String> {
    let console = Console::new(config)?;
    let user_id = format!("@{name}:{}", config.server_name);
    let password = match password {
        Some(p) => p,
        None => {
            eprint!("Password for {user_id}: ");
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| format!("cannot read the password: {e}"))?;
            line.trim_end_matches(['\n', '\r']).to_owned()
        }
    };
    if password.is_empty() {
        return Err("the password must not be empty".into());
    }
    let path = format!("/_synapse/admin/v2/users/{}", urlencode(&user_id));
    let (status, body) = console.call(reqwest::Method::GET, &path, None).await?;
    match status {
        404 => {}
        200 => return Err(format!("{user_id} already exists")),
        _ => return Err(server_error(&body)),
    }
    let (status, body) = console
        .call(
            reqwest::Method::PUT,
            &path,
            Some(json!({ "password": password, "admin": admin })),
        )
        .await?;
    if status != 201 {
        return Err(server_error(&body));
    }
    println!("Created {user_id}{}", if admin { " (admin)" } else { "" });
    Ok(())
}

async fn registration_token(config: &Config, action: TokenAction) -> Result<(), String> {
    let console = Console::new(config)?;
    const BASE: &str = "/_synapse/admin/v1/registration_tokens";
    let (status, body) = match action {
        TokenAction::Create {
            token,
            uses,
            expires_in,
        } => {
            let expiry = match expires_in {
                Some(d) => {
                    let d: hearth::config::HumanDuration = d.parse()?;
                    Some(hearth::util::now_ms() + d.0.as_millis() as u64)
                }
                None => None,
            };
            console
                .call(
                    reqwest::Method::POST,
                    &format!("{BASE}/new"),
                    Some(json!({ "token": token, "uses_allowed": uses, "expiry_time": expiry })),
                )
                .await?
        }
        TokenAction::List => console.call(reqwest::Method::GET, BASE, None).await?,
        TokenAction::Delete { token } => {
            console
                .call(
                    reqwest::Method::DELETE,
                    &format!("{BASE}/{}", urlencode(&token)),
                    None,
                )
                .await?
        }
    };
    if status != 200 {
        return Err(server_error(&body));
    }
    if let Some(t) = body.get("token").and_then(Value::as_str) {
        println!("{t}");
    } else if let Some(list) = body.get("registration_tokens").and_then(Value::as_array) {
        for t in list {
            println!(
                "{}\tuses_allowed={}\tcompleted={}\tpending={}\texpiry_time={}",
                t["token"].as_str().unwrap_or_default(),
                t["uses_allowed"],
                t["completed"],
                t["pending"],
                t["expiry_time"]
            );
        }
    }
    Ok(())
}

async fn appservices(config: &Config) -> Result<(), String> {
    let console = Console::new(config)?;
    let (status, body) = console
        .call(reqwest::Method::GET, "/_hearth/admin/v1/appservices", None)
        .await?;
    if status != 200 {
        return Err(server_error(&body));
    }
    for a in body["appservices"].as_array().into_iter().flatten() {
        println!(
            "{}\turl={}\tqueued={}\tfailures={}\tlast_error={}",
            a["id"].as_str().unwrap_or_default(),
            a["url"].as_str().unwrap_or("none"),
            a["queued"],
            a["failures"],
            a["last_error"].as_str().unwrap_or("none"),
        );
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
