//! Domain logic, one module per concern. Each service is built with the dependencies it names in
//! its constructor; there is no global registry. Handlers reach them through `Services`.

pub mod account_data;
pub mod accounts;
pub mod appservice;
pub mod delayed_events;
pub mod devices;
pub mod directory;
pub mod federation;
pub mod filters;
pub mod join_rules;
pub mod key_backup;
pub mod keys;
pub mod media;
pub mod openid;
pub mod presence;
pub mod profiles;
pub mod push;
pub mod ratelimit;
pub mod receipts;
pub mod receiver;
pub mod registration_tokens;
pub mod replication;
pub mod rooms;
pub mod search;
pub mod sender;
pub mod sessions;
pub mod sliding_sync;
pub mod spaces;
pub mod stream;
pub mod sync;
mod tables;
pub mod tasks;
pub mod timeline;
pub mod typing;
pub mod uiaa;
pub mod user_directory;
pub mod users;
pub mod voip;

use std::sync::Arc;

use crate::{
    config::Config,
    storage::{Db, ShortIds},
};

pub struct Services {
    pub config: Arc<Config>,
    pub db: Db,
    pub users: Arc<users::Service>,
    pub sessions: Arc<sessions::Service>,
    pub profiles: Arc<profiles::Service>,
    pub user_directory: Arc<user_directory::Service>,
    pub spaces: Arc<spaces::Service>,
    /// Full-text search of rooms (`/search`).
    pub search: Arc<search::Service>,
    pub registration_tokens: Arc<registration_tokens::Service>,
    pub uiaa: Arc<uiaa::Service>,
    pub ratelimit: Arc<ratelimit::Service>,
    pub rooms: Arc<rooms::Service>,
    pub stream: Arc<stream::Stream>,
    pub account_data: Arc<account_data::Service>,
    pub receipts: Arc<receipts::Service>,
    pub typing: Arc<typing::Service>,
    pub filters: Arc<filters::Service>,
    pub keys: Arc<keys::Service>,
    pub key_backup: Arc<key_backup::Service>,
    pub presence: Arc<presence::Service>,
    pub push: Arc<push::Service>,
    pub appservice: Arc<appservice::Service>,
    /// Delayed events (MSC4140).
    pub delayed_events: Arc<delayed_events::Service>,
    /// Sliding sync connections (see `sliding_sync`).
    pub sliding_sync: sliding_sync::Connections,
    pub federation: Arc<federation::Service>,
    pub sender: Arc<sender::Service>,
    pub replication: Arc<replication::Service>,
    pub openid: openid::Service,
    pub media: Arc<media::Service>,
    /// This server's ed25519 signing key.
    pub signing_key: Arc<hearth_federation::ServerSigningKey>,
    /// Secret of the local console (`hearth register-user` and friends), kept in the data folder.
    pub console_secret: String,
    /// Single-use nonces of shared-secret registration, with their issue time.
    pub registration_nonces:
        parking_lot::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Work that a client hanging up must not cancel; shutdown waits for it.
    pub tasks: tasks::InFlight,
}

impl Services {
    pub fn build(config: Arc<Config>, db: Db, console_secret: String) -> crate::Result<Self> {
        let shortids = Arc::new(ShortIds::new(db.clone())?);
        let users = Arc::new(users::Service::new(
            db.clone(),
            shortids.clone(),
            config.server_name.clone(),
        ));
        let sessions = Arc::new(sessions::Service::new(
            db.clone(),
            users.clone(),
            config.auth.refreshable_access_token_lifetime.0,
        ));
        let user_directory = Arc::new(user_directory::Service::new(
            db.clone(),
            config.server_name.clone(),
            config.user_directory.search_all_users,
        ));
        let profiles = Arc::new(profiles::Service::new(
            db.clone(),
            users.clone(),
            user_directory.clone(),
        ));
        let registration_tokens = Arc::new(registration_tokens::Service::new(db.clone()));
        let ratelimit = Arc::new(ratelimit::Service::new(config.rate_limits.clone()));
        let uiaa = Arc::new(uiaa::Service::new(
            users.clone(),
            registration_tokens.clone(),
            ratelimit.clone(),
        ));
        let signing_key = Arc::new(load_or_create_signing_key(&db)?);
        let stream = Arc::new(stream::Stream::new(shortids.clone()));
        let rooms = Arc::new(rooms::Service::new(
            db.clone(),
            shortids.clone(),
            config.server_name.clone(),
            signing_key.clone(),
            stream.clone(),
        )?);
        let account_data = Arc::new(account_data::Service::new(db.clone(), stream.clone()));
        let receipts = Arc::new(receipts::Service::new(
            db.clone(),
            stream.clone(),
            rooms.clone(),
        ));
        let typing = Arc::new(typing::Service::new(
            db.clone(),
            stream.clone(),
            rooms.clone(),
        ));
        let filters = Arc::new(filters::Service::new(db.clone()));
        let keys = Arc::new(keys::Service::new(
            db.clone(),
            stream.clone(),
            rooms.clone(),
        ));
        let key_backup = Arc::new(key_backup::Service::new(db.clone()));
        let presence = Arc::new(presence::Service::new(
            db.clone(),
            stream.clone(),
            config.presence.clone(),
        ));
        let push = Arc::new(push::Service::new(
            db.clone(),
            push::Deps {
                rooms: rooms.clone(),
                account_data: account_data.clone(),
                receipts: receipts.clone(),
                stream: stream.clone(),
            },
            &config.push,
        )?);
        let registrations = hearth_appservice::load_all(&config.appservice.registration_files)
            .map_err(|e| crate::Error::internal(format!("appservice registration: {e}")))?;
        let appservice = Arc::new(appservice::Service::new(
            db.clone(),
            config.server_name.clone(),
            registrations,
            appservice::Deps {
                rooms: rooms.clone(),
                users: users.clone(),
                keys: keys.clone(),
                stream: stream.clone(),
            },
            config.appservice.timeout.0,
            config.appservice.max_backoff.0,
        )?);
        let delayed_events = Arc::new(delayed_events::Service::new(
            db.clone(),
            rooms.clone(),
            config.delayed_events.clone(),
        ));
        let search = Arc::new(search::Service::new(
            db.clone(),
            rooms.clone(),
            config.database.path.join("search"),
        )?);
        // Push rules are evaluated, appservice queues filled, delayed state events cancelled
        // and text queued for the search index in the commit of each event (see
        // `rooms::Outbox`).
        let push_outbox: Arc<dyn rooms::Outbox> = push.clone();
        let appservice_outbox: Arc<dyn rooms::Outbox> = appservice.clone();
        // The directory hears of the memberships of remote users.
        let directory_outbox: Arc<dyn rooms::Outbox> = user_directory.clone();
        let delayed_outbox: Arc<dyn rooms::Outbox> = delayed_events.clone();
        let search_outbox: Arc<dyn rooms::Outbox> = search.clone();
        rooms.set_outboxes(vec![
            Arc::downgrade(&push_outbox),
            Arc::downgrade(&appservice_outbox),
            Arc::downgrade(&directory_outbox),
            Arc::downgrade(&delayed_outbox),
            Arc::downgrade(&search_outbox),
        ]);
        // Appservices that keep their users' devices get their to-device messages and key
        // changes in transactions.
        let keys_listener: Arc<dyn keys::KeysListener> = appservice.clone();
        keys.set_listener(Arc::downgrade(&keys_listener));
        // Appservices hear of typing, receipts and presence; pushers of read receipts (badges).
        let appservice_ephemeral: Arc<dyn stream::EphemeralListener> = appservice.clone();
        let push_ephemeral: Arc<dyn stream::EphemeralListener> = push.clone();
        stream.set_ephemeral_listeners(vec![
            Arc::downgrade(&appservice_ephemeral),
            Arc::downgrade(&push_ephemeral),
        ]);
        let federation = Arc::new(federation::Service::new(
            db.clone(),
            config.clone(),
            signing_key.clone(),
        )?);
        let sender = Arc::new(sender::Service::new(
            db.clone(),
            rooms.clone(),
            federation.clone(),
            stream.clone(),
            config.federation.max_backoff.0,
        ));
        let replication = Arc::new(replication::Service::new(
            rooms.clone(),
            federation.clone(),
            signing_key.clone(),
        ));
        let media_store: Arc<dyn media::MediaStore> = match config.media.backend {
            crate::config::MediaBackend::Fs => {
                let folder = config.media.folder(&config.database);
                Arc::new(media::FsStore::open(&folder).map_err(|e| {
                    crate::Error::internal(format!("cannot open {}: {e}", folder.display()))
                })?)
            }
            crate::config::MediaBackend::S3 => Arc::new(
                media::s3::S3Store::open(&config.media.s3)
                    .map_err(|e| crate::Error::internal(format!("media.s3: {e}")))?,
            ),
        };
        let media = Arc::new(media::Service::new(
            db.clone(),
            media_store,
            users.clone(),
            config.server_name.clone(),
            config.media.clone(),
            config.federation.enabled.then(|| federation.clone()),
        ));
        Ok(Self {
            config,
            db,
            users,
            sessions,
            profiles,
            user_directory,
            spaces: Arc::new(spaces::Service::default()),
            search,
            registration_tokens,
            uiaa,
            ratelimit,
            rooms,
            stream,
            account_data,
            receipts,
            typing,
            filters,
            keys,
            key_backup,
            presence,
            push,
            appservice,
            delayed_events,
            sliding_sync: Default::default(),
            federation,
            sender,
            replication,
            openid: openid::Service::default(),
            media,
            signing_key,
            console_secret,
            registration_nonces: Default::default(),
            tasks: Default::default(),
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSigningKey {
    version: String,
    pkcs8_der: String,
}

/// The server's signing key: generated on first start and kept in the database from then on.
fn load_or_create_signing_key(db: &Db) -> crate::Result<hearth_federation::ServerSigningKey> {
    use crate::storage::{tables, Batch, Table};
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let table = Table::<tables::SigningKey<StoredSigningKey>>::new(db);
    if let Some(stored) = table.get(())? {
        let der = b64
            .decode(stored.pkcs8_der)
            .map_err(|e| crate::Error::internal(format!("stored signing key: {e}")))?;
        return hearth_federation::ServerSigningKey::from_der(&der, &stored.version)
            .map_err(crate::Error::internal);
    }
    let version = format!("a_{}", crate::util::random_string(4));
    let key =
        hearth_federation::ServerSigningKey::generate(&version).map_err(crate::Error::internal)?;
    let mut batch = Batch::new();
    table.put_in(
        &mut batch,
        (),
        &StoredSigningKey {
            version,
            pkcs8_der: b64.encode(key.der()),
        },
    );
    db.kv().write(batch)?;
    tracing::info!(key_id = %key.key_id(), "generated the server signing key");
    Ok(key)
}
