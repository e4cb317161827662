//! Token-bucket rate limits per action and key (client address or account). Bounded: when the
//! table is full, buckets that have refilled are dropped, since they carry no information.

use std::{collections::HashMap, time::Instant};

use parking_lot::Mutex;

use crate::config::{Rate, RateLimits};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Login,
    LoginFailure,
    Registration,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

const MAX_BUCKETS: usize = 100_000;

pub struct Service {
    limits: RateLimits,
    buckets: Mutex<HashMap<(Action, String), Bucket>>,
}

impl Service {
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn rate(&self, action: Action) -> Rate {
        match action {
            Action::Login => self.limits.login,
            Action::LoginFailure => self.limits.login_failures,
            Action::Registration => self.limits.registration,
        }
    }

    /// Takes one token; on refusal returns how many milliseconds until one is available.
    pub fn take(&self, action: Action, key: &str) -> Result<(), u64> {
        self.check(action, key, true)
    }

    /// Gives back a token taken for an attempt that turned out not to count (a correct password).
    pub fn refund(&self, action: Action, key: &str) {
        let burst = f64::from(self.rate(action).burst);
        if let Some(b) = self.buckets.lock().get_mut(&(action, key.to_owned())) {
            b.tokens = (b.tokens + 1.0).min(burst);
        }
    }

    /// Whether a token is available, without taking it.
    pub fn peek(&self, action: Action, key: &str) -> Result<(), u64> {
        self.check(action, key, false)
    }

    fn check(&self, action: Action, key: &str, take: bool) -> Result<(), u64> {
        let rate = self.rate(action);
        let burst = f64::from(rate.burst);
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|(a, _), b| {
                let r = self.rate(*a);
                b.tokens + now.duration_since(b.updated).as_secs_f64() * r.per_second
                    < f64::from(r.burst)
            });
        }
        let bucket = buckets.entry((action, key.to_owned())).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        bucket.tokens = (bucket.tokens
            + now.duration_since(bucket.updated).as_secs_f64() * rate.per_second)
            .min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            if take {
                bucket.tokens -= 1.0;
            }
            Ok(())
        } else {
            Err((((1.0 - bucket.tokens) / rate.per_second) * 1000.0).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_retry_hint() {
        let s = Service::new(RateLimits {
            login: Rate {
                per_second: 1.0,
                burst: 2,
            },
            ..RateLimits::default()
        });
        assert!(s.take(Action::Login, "a").is_ok());
        assert!(s.take(Action::Login, "a").is_ok());
        let retry = s.take(Action::Login, "a").unwrap_err();
        assert!(retry > 0 && retry <= 1000, "{retry}");
        assert!(s.take(Action::Login, "b").is_ok(), "keys are independent");
    }
}
