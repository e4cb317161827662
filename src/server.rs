//! Builds the services over the database, binds the listeners and runs until shut down; on
//! shutdown, in-flight requests finish and the database is flushed and closed.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    api,
    config::Config,
    error::{Error, Result},
    service::Services,
    storage::{Db, RocksDb},
    util::random_string,
};

/// Name of the file, inside the data folder, holding the local console's secret.
pub const CONSOLE_SECRET_FILE: &str = "console.secret";

/// A running server.
pub struct Server {
    pub client_addr: SocketAddr,
    pub services: Arc<Services>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
    timer: JoinHandle<()>,
    sending: JoinHandle<()>,
    appservices: JoinHandle<()>,
    pushes: JoinHandle<()>,
    delayed_events: JoinHandle<()>,
    search: JoinHandle<()>,
    federation: Option<JoinHandle<()>>,
    /// Where the federation listener is bound, when federation is on.
    pub federation_addr: Option<SocketAddr>,
    retention: JoinHandle<()>,
}

/// Reads the console secret, creating it (readable by the owner only) on first start.
pub fn console_secret(data: &Path) -> Result<String> {
    let path = data.join(CONSOLE_SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::internal(format!("{}: {e}", path.display()))),
    }
    let secret = random_string(48);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    opts.open(&path)
        .and_then(|mut f| f.write_all(secret.as_bytes()))
        .map_err(|e| Error::internal(format!("{}: {e}", path.display())))?;
    Ok(secret)
}

impl Server {
    /// Opens the database and starts serving. Returns once the listeners are bound.
    pub async fn start(mut config: Config) -> Result<Server> {
        let started = Instant::now();
        let listener = TcpListener::bind(config.listen.client).await.map_err(|e| {
            Error::internal(format!("cannot listen on {}: {e}", config.listen.client))
        })?;
        let client_addr = listener.local_addr().map_err(Error::internal)?;
        // With port 0 the OS picks one; what clients are told must be the real one.
        config.listen.client = client_addr;
        let federation_listener = if config.federation.enabled {
            let l = TcpListener::bind(config.listen.federation)
                .await
                .map_err(|e| {
                    Error::internal(format!(
                        "cannot listen on {}: {e}",
                        config.listen.federation
                    ))
                })?;
            config.listen.federation = l.local_addr().map_err(Error::internal)?;
            Some(l)
        } else {
            None
        };
        let config = Arc::new(config);
        let data: PathBuf = config.database.path.clone();
        std::fs::create_dir_all(&data)
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", data.display())))?;
        let cache = config.database.cache_size.0 as usize;
        let path = data.clone();
        let kv = tokio::task::spawn_blocking(move || RocksDb::open(&path, cache))
            .await
            .map_err(Error::internal)??;
        let db = Db::new(Arc::new(kv))?;
        let services = Arc::new(Services::build(config.clone(), db, console_secret(&data)?)?);
        // The user directory of a database from before it existed: built once, before serving,
        // so no search sees it half built (a database made with it only reads one row here).
        if !services.user_directory.is_built()? {
            let local = services.profiles.directory_entries()?;
            services
                .user_directory
                .build_once(&services.rooms, local)
                .await?;
        }
        services.media.check_store().await?;
        // Each appservice's own user exists from the start: requests made with its token act
        // as that user when they name no other.
        for reg in services.appservice.registrations() {
            let Some(sender) = reg.sender(&config.server_name) else {
                continue;
            };
            if !services.users.exists(&sender)? {
                crate::service::accounts::create(&services, &sender, None, false, None, None)
                    .await?;
                tracing::info!(appservice = %reg.id, %sender, "created the appservice's user");
            }
        }

        let router = api::client_router(services.clone());
        let sender_enabled = config.federation.enabled;
        let (shutdown, mut shutdown_rx) = watch::channel(false);
        // Presence timeouts run until shutdown, which waits for this task to let go of the
        // services (and so of the database) before the serving task closes it.
        let timer = {
            let presence = services.presence.clone();
            let rooms = services.rooms.clone();
            let mut stop = shutdown_rx.clone();
            tokio::spawn(async move {
                let peers: Arc<dyn Fn(u64) -> Vec<u64> + Send + Sync> = Arc::new(move |user| {
                    rooms
                        .membership
                        .peers(user)
                        .map(|p| p.into_iter().collect())
                        .unwrap_or_default()
                });
                tokio::select! {
                    _ = presence.run_timer(peers) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            })
        };
        let federation = match federation_listener {
            Some(l) => {
                let tls = crate::federation_listener::tls_config(&config)?;
                let router = api::federation_router(services.clone());
                Some(tokio::spawn(crate::federation_listener::serve(
                    l,
                    tls,
                    router,
                    shutdown_rx.clone(),
                )))
            }
            None => None,
        };
        // The outgoing federation queue, resumed from what the database holds.
        let sending = {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            services.rooms.set_outgoing_listener(tx);
            let sender = services.sender.clone();
            let stop = shutdown_rx.clone();
            tokio::spawn(async move {
                if sender_enabled {
                    sender.run(rx, stop).await;
                }
            })
        };
        // Appservice deliveries, resumed from their queues.
        let appservices = tokio::spawn(services.appservice.clone().run(shutdown_rx.clone()));
        // Push gateway deliveries, likewise.
        let pushes = tokio::spawn(services.push.clone().run(shutdown_rx.clone()));
        // Delayed events, including those that came due while the server was down.
        let delayed_events = tokio::spawn(services.delayed_events.clone().run(shutdown_rx.clone()));
        // The search index takes in what was queued, including before a restart.
        let search = tokio::spawn(services.search.clone().run(shutdown_rx.clone()));
        // Media retention (expired uploads, cached remote media, unused /create IDs, URL
        // previews); like the timer, it lets go of the database at shutdown.
        let retention = {
            let media = services.media.clone();
            let mut stop = shutdown_rx.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = media.run_retention() => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            })
        };
        let task_services = services.clone();
        let task = tokio::spawn(async move {
            let result = axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = shutdown_rx.wait_for(|stop| *stop).await;
            })
            .await;
            // Requests whose clients hung up may still be finishing their writes: they land
            // before the database closes (bounded, so a stuck peer cannot hold shutdown).
            let tasks = task_services.tasks.clone();
            if tokio::time::timeout(std::time::Duration::from_secs(60), tasks.wait_idle())
                .await
                .is_err()
            {
                tracing::warn!(
                    running = tasks.running(),
                    "shutting down with requests still running"
                );
            }
            let flushed = task_services.db.flush();
            result.map_err(Error::internal)?;
            flushed?;
            Ok(())
        });
        tracing::info!(
            server_name = %config.server_name,
            client = %client_addr,
            data = %data.display(),
            startup_ms = started.elapsed().as_millis() as u64,
            "Hearth is listening"
        );
        Ok(Server {
            client_addr,
            services,
            shutdown,
            task,
            timer,
            sending,
            appservices,
            pushes,
            delayed_events,
            search,
            federation,
            federation_addr: config
                .federation
                .enabled
                .then_some(config.listen.federation),
            retention,
        })
    }

    /// The base URL of the client API.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.client_addr)
    }

    /// Stops accepting requests, lets in-flight ones finish, flushes and closes the database.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        let Server {
            services,
            task,
            timer,
            sending,
            appservices,
            pushes,
            delayed_events,
            search,
            federation,
            retention,
            ..
        } = self;
        let _ = timer.await;
        let _ = sending.await;
        let _ = appservices.await;
        let _ = pushes.await;
        let _ = delayed_events.await;
        let _ = search.await;
        if let Some(f) = federation {
            let _ = f.await;
        }
        let _ = retention.await;
        // Our reference goes first so the database closes when the serving task ends.
        drop(services);
        task.await.map_err(Error::internal)?
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<()> {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(Error::internal)?;
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}
