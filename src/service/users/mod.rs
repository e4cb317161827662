//! Local user accounts: creation, passwords (argon2), admin flag, deactivation. Owns the `users`
//! keyspace; devices and tokens belong to `sessions`, profile fields to `profiles`.

use std::sync::Arc;

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, ErrorKind, Result},
    storage::{tables, Batch, Db, IdKind, ShortId, ShortIds, Table},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserRecord {
    pub user_id: OwnedUserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub deactivated: bool,
    pub created_ts: u64,
}

pub struct Service {
    users: Table<tables::Users<UserRecord>>,
    shortids: Arc<ShortIds>,
    server_name: OwnedServerName,
    /// Held from the availability check to the write of a new account, so two concurrent
    /// registrations of one name cannot both succeed.
    pub creation: tokio::sync::Mutex<()>,
}

impl Service {
    pub fn new(db: Db, shortids: Arc<ShortIds>, server_name: OwnedServerName) -> Self {
        Self {
            users: Table::new(&db),
            shortids,
            server_name,
            creation: tokio::sync::Mutex::new(()),
        }
    }

    pub fn server_name(&self) -> &OwnedServerName {
        &self.server_name
    }

    pub fn shortids(&self) -> &ShortIds {
        &self.shortids
    }

    pub fn is_local(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.server_name
    }

    /// Checks a requested localpart against the grammar for new user IDs and builds the user ID.
    pub fn user_id_for_new_localpart(&self, localpart: &str) -> Result<OwnedUserId> {
        let invalid = |why: &'static str| Error::matrix(ErrorKind::InvalidUsername, why);
        if localpart.is_empty() {
            return Err(invalid("User name must not be empty"));
        }
        if !localpart
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/+".contains(&b))
        {
            return Err(invalid(
                "User names may only contain a-z, 0-9, and the characters . _ = - / +",
            ));
        }
        let user_id = format!("@{localpart}:{}", self.server_name);
        if user_id.len() > 255 {
            return Err(invalid("User ID is longer than 255 characters"));
        }
        UserId::parse(&user_id).map_err(|_| invalid("Invalid user name"))
    }

    /// Resolves what a client typed at login (a localpart or a full user ID) to a local user ID.
    pub fn user_id_from_login_name(&self, name: &str) -> Option<OwnedUserId> {
        if name.starts_with('@') {
            let id = UserId::parse(name.to_lowercase()).ok()?;
            self.is_local(&id).then_some(id)
        } else {
            UserId::parse(format!("@{}:{}", name.to_lowercase(), self.server_name)).ok()
        }
    }

    pub fn short_id(&self, user_id: &UserId) -> Result<Option<ShortId>> {
        Ok(self.shortids.get(IdKind::User, user_id.as_str())?)
    }

    pub fn get(&self, user_id: &UserId) -> Result<Option<(ShortId, UserRecord)>> {
        let Some(short) = self.short_id(user_id)? else {
            return Ok(None);
        };
        Ok(self.users.get(short)?.map(|r| (short, r)))
    }

    /// A local account's user ID.
    pub fn user_id_of(&self, short: ShortId) -> Result<OwnedUserId> {
        self.users
            .get(short)?
            .map(|r| r.user_id)
            .ok_or_else(|| crate::Error::internal(format!("no account with short ID {short}")))
    }

    pub fn exists(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.get(user_id)?.is_some())
    }

    /// Adds the rows of a new account to `batch`; the caller writes it with the account's first
    /// device so that a half-created account is never visible.
    pub fn create_in(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        password_hash: Option<String>,
        admin: bool,
    ) -> Result<ShortId> {
        let short = self
            .shortids
            .get_or_create(IdKind::User, user_id.as_str())?;
        let record = UserRecord {
            user_id: user_id.to_owned(),
            password_hash,
            admin,
            deactivated: false,
            created_ts: crate::util::now_ms(),
        };
        self.users.put_in(batch, short, &record);
        Ok(short)
    }

    pub fn put_in(&self, batch: &mut Batch, short: ShortId, record: &UserRecord) {
        self.users.put_in(batch, short, record);
    }

    /// All local accounts, in creation order.
    pub fn list(&self) -> Result<Vec<(ShortId, UserRecord)>> {
        Ok(self.users.iter().collect::<Result<_, _>>()?)
    }
}

/// Hashes a password with argon2id; slow on purpose, so it runs off the async executor.
/// Argon2 needs ~19 MiB per hash; hashing at most two at a time bounds that memory (and keeps
/// the allocator from holding a copy per blocking thread) however many logins arrive at once.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

pub async fn hash_password(password: String) -> Result<String> {
    let _permit = HASHING.acquire().await.map_err(Error::internal)?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(Error::internal)
    })
    .await
    .map_err(Error::internal)?
}

/// Checks a password against a stored argon2 hash.
pub async fn verify_password(password: String, hash: String) -> bool {
    let Ok(_permit) = HASHING.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}
