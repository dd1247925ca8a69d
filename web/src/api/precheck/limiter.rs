//! The pre-call check's rate limit: how often one caller, and one client
//! address, may fetch TURN credentials for the check. It holds no state of
//! the app's, so `AppState` can carry it without the handlers' module.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::AppError;

/// How many times one address may fetch credentials per minute, in
/// multiples of one caller's allowance: room for an office behind one NAT.
pub const ADDRESS_CAP_FACTOR: u32 = 20;

/// Who runs the check, as the rate limit counts them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Checker {
    /// A signed-in resident or staff member, by session.
    Session(String),
    /// The holder of a token for one anonymous chat, by its room.
    AnonymousChat(String),
}

/// Fixed one-minute windows of the check's credential requests, per caller
/// and per client address, kept by each node. Unlike sign-in, every request
/// counts: each one can open allocations on the relay.
#[derive(Clone)]
pub struct PrecheckLimiter {
    per_minute: u32,
    windows: Arc<Mutex<HashMap<Window, (Instant, u32)>>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Window {
    Checker(Checker),
    Address(IpAddr),
}

const MINUTE: Duration = Duration::from_secs(60);

impl PrecheckLimiter {
    pub fn new(per_minute: u32) -> PrecheckLimiter {
        PrecheckLimiter {
            per_minute,
            windows: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts a request by `checker` from `ip`, or refuses it with 429 once
    /// this minute's requests of the caller, or of the address, reached
    /// their cap. A refused request does not count.
    pub fn take(&self, checker: &Checker, ip: IpAddr, now: Instant) -> Result<(), AppError> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < MINUTE);
        }
        let caps = [
            (Window::Checker(checker.clone()), self.per_minute),
            (
                Window::Address(ip),
                self.per_minute.saturating_mul(ADDRESS_CAP_FACTOR),
            ),
        ];
        for (window, cap) in &caps {
            if let Some((start, count)) = windows.get(window) {
                let elapsed = now.duration_since(*start);
                if elapsed < MINUTE && *count >= *cap {
                    return Err(AppError::RateLimited {
                        retry_after_seconds: MINUTE.saturating_sub(elapsed).as_secs().max(1),
                    });
                }
            }
        }
        for (window, _) in caps {
            let entry = windows.entry(window).or_insert((now, 0));
            if now.duration_since(entry.0) >= MINUTE {
                *entry = (now, 0);
            }
            entry.1 = entry.1.saturating_add(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_counts_callers_and_addresses_per_minute() {
        let limiter = PrecheckLimiter::new(2);
        let start = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = Checker::Session("a".into());
        let b = Checker::AnonymousChat("chat:b".into());
        assert!(limiter.take(&a, ip, start).is_ok());
        assert!(limiter.take(&a, ip, start).is_ok());
        match limiter.take(&a, ip, start + Duration::from_secs(10)) {
            Err(AppError::RateLimited {
                retry_after_seconds,
            }) => assert_eq!(retry_after_seconds, 50),
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(limiter.take(&b, ip, start).is_ok(), "another caller");
        assert!(limiter.take(&a, ip, start + MINUTE).is_ok(), "a new minute");

        // One address is capped too, over all its callers.
        let limiter = PrecheckLimiter::new(1);
        let office: IpAddr = "192.0.2.2".parse().unwrap();
        for n in 0..ADDRESS_CAP_FACTOR {
            let caller = Checker::Session(format!("s{n}"));
            assert!(limiter.take(&caller, office, start).is_ok());
        }
        let one_more = Checker::Session("last".into());
        assert!(limiter.take(&one_more, office, start).is_err());
        assert!(limiter.take(&one_more, ip, start).is_ok());
    }
}
