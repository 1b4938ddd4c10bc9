//! Per-key request rate limit (GCRA, the generic cell rate algorithm): each key may make
//! `rate` requests per second, with bursts of up to `rate` requests. One timestamp per
//! key, no background task.
//!
//! The limit is per instance: behind a load balancer spreading requests over `n`
//! instances, a key gets up to `n × rate` in total.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use uuid::Uuid;

use crate::error::ApiError;

/// Past this many remembered keys, keys whose allowance is full again are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// Requests per second per key; `0` lets everything through.
#[derive(Debug)]
pub struct RateLimiter {
    /// Time one request "costs"; `None` when the limiter is off.
    emission_interval: Option<Duration>,
    /// How far ahead of now a key's theoretical arrival time may run: the burst.
    burst_tolerance: Duration,
    /// Per key, the theoretical arrival time of its next request (GCRA's TAT).
    next_arrival: Mutex<HashMap<Uuid, Instant>>,
}

impl RateLimiter {
    /// A limiter allowing `per_second` requests per second per key (bursts of as many);
    /// `0` turns it off.
    pub fn new(per_second: u32) -> Self {
        let emission_interval = (per_second > 0).then(|| Duration::from_secs(1) / per_second);
        let burst_tolerance = emission_interval.map_or(Duration::ZERO, |t| t * (per_second - 1));
        RateLimiter { emission_interval, burst_tolerance, next_arrival: Mutex::default() }
    }

    /// Counts a request of `key`: `Ok` if within the limit, else the 429 to answer
    /// (its `Retry-After` is one second, as long as one request's allowance can take
    /// when the limit is at least one per second).
    pub fn check(&self, key: Uuid) -> Result<(), ApiError> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: Uuid, now: Instant) -> Result<(), ApiError> {
        let Some(interval) = self.emission_interval else {
            return Ok(());
        };
        let mut next_arrival = self.next_arrival.lock().unwrap_or_else(|e| e.into_inner());
        let tat = next_arrival.get(&key).copied().filter(|tat| *tat > now).unwrap_or(now);
        if tat.duration_since(now) > self.burst_tolerance {
            return Err(ApiError::TooManyRequests("rate limit exceeded for this client_secret, retry later".into()));
        }
        next_arrival.insert(key, tat + interval);
        if next_arrival.len() > PRUNE_ABOVE {
            next_arrival.retain(|_, tat| *tat > now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_lets_everything_through() {
        let limiter = RateLimiter::new(0);
        let key = Uuid::new_v4();
        assert!((0..10_000).all(|_| limiter.check(key).is_ok()));
    }

    #[test]
    fn allows_a_burst_of_rate_then_one_per_interval() {
        let limiter = RateLimiter::new(5);
        let (key, other) = (Uuid::new_v4(), Uuid::new_v4());
        let start = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check_at(key, start).is_ok());
        }
        let refused = limiter.check_at(key, start).unwrap_err();
        assert_eq!(refused.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        // Another key has its own allowance.
        assert!(limiter.check_at(other, start).is_ok());
        // One interval (200 ms) later, exactly one more request fits.
        let later = start + Duration::from_millis(200);
        assert!(limiter.check_at(key, later).is_ok());
        assert!(limiter.check_at(key, later).is_err());
        // After a quiet second the whole burst is available again.
        let quiet = later + Duration::from_secs(1);
        for _ in 0..5 {
            assert!(limiter.check_at(key, quiet).is_ok());
        }
        assert!(limiter.check_at(key, quiet).is_err());
    }

    #[test]
    fn a_sustained_rate_is_held() {
        let limiter = RateLimiter::new(10);
        let key = Uuid::new_v4();
        let start = Instant::now();
        // 3 seconds of 1 ms arrivals: 10 of burst + 10 per second after the first.
        let allowed = (0..3000).filter(|ms| limiter.check_at(key, start + Duration::from_millis(*ms)).is_ok()).count();
        assert!((39..=41).contains(&allowed), "{allowed}");
    }
}
