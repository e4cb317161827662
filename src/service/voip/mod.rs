//! TURN credentials for VoIP calls (`/voip/turnServer`), from `[turn]`: with a shared secret,
//! the time-limited credentials of the TURN REST API scheme that coturn implements
//! (`use-auth-secret` / `static-auth-secret`); otherwise the fixed username and password.
//! Holds no state; nothing is stored.

use base64::Engine;
use hmac::{Hmac, Mac};
use ruma::UserId;
use sha1::Sha1;

use crate::config::Turn;

/// What a client needs to use the TURN server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnCredentials {
    pub username: String,
    pub password: String,
    pub uris: Vec<String>,
    /// How long they stay valid, in seconds.
    pub ttl: u64,
}

/// The credentials for `user_id` at `now_ms`; `None` when no TURN server is configured.
pub fn credentials(turn: &Turn, user_id: &UserId, now_ms: u64) -> Option<TurnCredentials> {
    if turn.uris.is_empty() {
        return None;
    }
    let lifetime_ms = turn.user_lifetime.0.as_millis() as u64;
    let (username, password) = if !turn.shared_secret.is_empty() {
        // coturn checks that the expiry (Unix seconds) before the colon is still ahead, and
        // that the password is base64(HMAC-SHA1(secret, username)).
        let expiry = now_ms.saturating_add(lifetime_ms) / 1000;
        let username = format!("{expiry}:{user_id}");
        let mut mac = Hmac::<Sha1>::new_from_slice(turn.shared_secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(username.as_bytes());
        let password =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        (username, password)
    } else if !turn.username.is_empty() {
        (turn.username.clone(), turn.password.clone())
    } else {
        return None;
    };
    Some(TurnCredentials {
        username,
        password,
        uris: turn.uris.clone(),
        ttl: lifetime_ms / 1000,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::HumanDuration;

    fn turn() -> Turn {
        Turn {
            uris: vec!["turn:turn.example.org:3478?transport=udp".into()],
            shared_secret: "s3cret".into(),
            user_lifetime: HumanDuration(Duration::from_secs(3600)),
            username: String::new(),
            password: String::new(),
        }
    }

    #[test]
    fn shared_secret_credentials_follow_the_turn_rest_api() {
        let user = UserId::parse("@alice:example.org").unwrap();
        let c = credentials(&turn(), &user, 1_700_000_000_500).unwrap();
        assert_eq!(c.username, "1700003600:@alice:example.org");
        assert_eq!(c.ttl, 3600);
        // Computed independently: printf %s "1700003600:@alice:example.org" |
        //   openssl dgst -sha1 -hmac s3cret -binary | base64
        assert_eq!(c.password, "DwTxSrYoQgbdbUzNhDKfrCGmqbE=");
    }

    #[test]
    fn fixed_credentials_without_a_secret_and_nothing_without_uris() {
        let user = UserId::parse("@alice:example.org").unwrap();
        let mut t = turn();
        t.shared_secret.clear();
        t.username = "calls".into();
        t.password = "pw".into();
        let c = credentials(&t, &user, 0).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("calls", "pw"));
        t.uris.clear();
        assert_eq!(credentials(&t, &user, 0), None);
    }
}
