//! Latency percentiles and rates.

use std::time::Duration;

/// The latency figures of a set of requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latencies {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latencies {
    /// Percentiles of `samples` (nearest rank); all zero when there are none.
    pub fn of(mut samples: Vec<Duration>) -> Latencies {
        samples.sort_unstable();
        Latencies { p50: percentile(&samples, 50.0), p99: percentile(&samples, 99.0), max: percentile(&samples, 100.0) }
    }
}

/// The nearest-rank percentile of sorted `samples`.
fn percentile(sorted: &[Duration], percent: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `samples`.
pub fn median(samples: Vec<Duration>) -> Duration {
    Latencies::of(samples).p50
}

/// Items per second.
pub fn per_second(items: u64, elapsed: Duration) -> f64 {
    items as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// A duration in milliseconds.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples = (1..=100).map(Duration::from_millis).collect();
        let latencies = Latencies::of(samples);
        assert_eq!(latencies.p50, Duration::from_millis(50));
        assert_eq!(latencies.p99, Duration::from_millis(99));
        assert_eq!(latencies.max, Duration::from_millis(100));
        assert_eq!(median(vec![]), Duration::ZERO);
    }
}
