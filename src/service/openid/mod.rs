//! Short-lived OpenID tokens. They live in memory only: a token lost in a restart is asked for
//! again by the client, and nothing durable depends on one.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::OwnedUserId;

/// How long a token is good for.
const LIFETIME: Duration = Duration::from_secs(3600);
/// Most tokens held; beyond this, expired ones are dropped, then the oldest.
const MAX_TOKENS: usize = 100_000;

#[derive(Default)]
pub struct Service {
    tokens: Mutex<HashMap<String, (OwnedUserId, Instant)>>,
}

impl Service {
    /// A new token for `user`, and how long it lasts.
    pub fn issue(&self, user: OwnedUserId) -> (String, Duration) {
        let token = crate::util::random_string(32);
        let mut tokens = self.tokens.lock();
        if tokens.len() >= MAX_TOKENS {
            let now = Instant::now();
            tokens.retain(|_, (_, until)| *until > now);
            if tokens.len() >= MAX_TOKENS {
                if let Some(oldest) = tokens
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| k.clone())
                {
                    tokens.remove(&oldest);
                }
            }
        }
        tokens.insert(token.clone(), (user, Instant::now() + LIFETIME));
        (token, LIFETIME)
    }

    /// The user a live token was issued to.
    pub fn check(&self, token: &str) -> Option<OwnedUserId> {
        let tokens = self.tokens.lock();
        let (user, until) = tokens.get(token)?;
        (*until > Instant::now()).then(|| user.clone())
    }
}
