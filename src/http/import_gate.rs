//! Admission of partner cohort imports to PostgreSQL: at most `IMPORT_CONCURRENCY` run at
//! once, one per cohort, in the order they arrived.
//!
//! Why queue here rather than let every import into PostgreSQL at once: the imports
//! PostgreSQL runs together share the machine's cores, so eight of them on two cores each
//! take about four times as long, and which finishes first is left to the OS scheduler.
//! With 8 clients the p99 was ~1.9× the p50. Queued here in arrival order, an import waits
//! its turn, then shares the cores with fewer others, and its latency is its place in the
//! queue plus its own work: the p99 came to ~1.65× the p50 (medians of 8 benchmark runs
//! without the gate and 20 with it, BENCHMARKS.md §2).
//!
//! Two imports of the same cohort would wait for each other on the cohort's row lock in
//! PostgreSQL anyway; holding the second back here leaves its slot to another cohort's
//! import meanwhile. The database lock still orders imports across instances: this gate
//! only shapes the load of one.

use std::{
    hash::{BuildHasher, RandomState},
    time::Duration,
};

use tokio::sync::{Mutex, MutexGuard, Semaphore, SemaphorePermit};

use crate::{
    error::ApiError,
    metrics::{self, GaugeGuard},
    store::cohorts::CohortKey,
};

/// Locks the cohorts hash into: two cohorts share one with probability 1/1,024, which
/// only makes one wait for the other, as an import of the same cohort would.
const COHORT_LOCKS: usize = 1024;

/// Holds imports back until PostgreSQL can run them; see the module documentation.
#[derive(Debug)]
pub struct ImportGate {
    /// One import per cohort at a time (by hash of the cohort's key).
    cohorts: Box<[Mutex<()>]>,
    /// `IMPORT_CONCURRENCY` permits; tokio's semaphore hands them out first come, first
    /// served.
    running: Semaphore,
    /// Seeded per process, so which cohorts share a lock cannot be chosen from outside.
    hasher: RandomState,
    /// How long an import may wait for its turn before it answers 503.
    max_wait: Duration,
}

/// An import's turn: it may run until this is dropped.
#[derive(Debug)]
pub struct ImportTurn<'a> {
    _cohort: MutexGuard<'a, ()>,
    _slot: SemaphorePermit<'a>,
    _running: GaugeGuard,
}

impl ImportGate {
    /// A gate that lets `concurrency` imports run at once (at least one), each waiting at
    /// most `max_wait` for its turn.
    pub fn new(concurrency: usize, max_wait: Duration) -> Self {
        ImportGate {
            cohorts: (0..COHORT_LOCKS).map(|_| Mutex::new(())).collect(),
            running: Semaphore::new(concurrency.max(1)),
            hasher: RandomState::new(),
            max_wait,
        }
    }

    /// Waits until no other import of this cohort runs here and a slot is free. After
    /// `max_wait` it gives up with a 503, before anything was written.
    pub async fn enter(&self, cohort: CohortKey<'_>) -> Result<ImportTurn<'_>, ApiError> {
        let waiting = GaugeGuard::start(metrics::COHORT_IMPORTS_WAITING);
        let lock = &self.cohorts[self.lock_index(cohort)];
        let turn = async {
            // Cohort first, slot second: an import never holds a slot while it waits for
            // its cohort, and every import takes them in this one order, so none can wait
            // for another that waits for it.
            let cohort = lock.lock().await;
            self.running.acquire().await.map(|slot| (cohort, slot))
        };
        match tokio::time::timeout(self.max_wait, turn).await {
            Ok(Ok((cohort, slot))) => {
                drop(waiting);
                Ok(ImportTurn {
                    _cohort: cohort,
                    _slot: slot,
                    _running: GaugeGuard::start(metrics::COHORT_IMPORTS_RUNNING),
                })
            }
            // Out of time (a closed semaphore would land here too, but nothing closes it).
            Ok(Err(_)) | Err(_) => Err(ApiError::Overloaded("too many cohort imports are waiting; retry later".into())),
        }
    }

    fn lock_index(&self, cohort: CohortKey<'_>) -> usize {
        let hash = self.hasher.hash_one((cohort.workspace_id, cohort.partner, cohort.cohort_id));
        // The remainder is below COHORT_LOCKS, so it fits in a usize.
        (hash % COHORT_LOCKS as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    const WAIT: Duration = Duration::from_millis(50);

    /// `n` cohorts of one workspace that share no lock in `gate`.
    fn cohorts(gate: &ImportGate, n: usize) -> Vec<CohortKey<'static>> {
        let workspace_id = Uuid::new_v4();
        let ids: &'static [String] = (0..64 * n).map(|i| format!("cohort-{i}")).collect::<Vec<_>>().leak();
        let mut taken = Vec::new();
        let mut keys = Vec::new();
        for id in ids {
            let key = CohortKey { workspace_id, partner: "kubit", cohort_id: id };
            if !taken.contains(&gate.lock_index(key)) {
                taken.push(gate.lock_index(key));
                keys.push(key);
            }
        }
        keys.truncate(n);
        assert_eq!(keys.len(), n);
        keys
    }

    #[tokio::test]
    async fn lets_in_as_many_imports_as_it_has_slots() {
        let gate = ImportGate::new(2, WAIT);
        let [a, b, c] = cohorts(&gate, 3)[..] else { unreachable!() };
        let _first = gate.enter(a).await.unwrap();
        let second = gate.enter(b).await.unwrap();
        assert!(matches!(gate.enter(c).await, Err(ApiError::Overloaded(_))), "a third import must wait for a slot");
        drop(second);
        assert!(gate.enter(c).await.is_ok(), "a freed slot is taken");
    }

    #[tokio::test]
    async fn runs_one_import_of_a_cohort_at_a_time() {
        let gate = ImportGate::new(4, WAIT);
        let [a] = cohorts(&gate, 1)[..] else { unreachable!() };
        let first = gate.enter(a).await.unwrap();
        assert!(matches!(gate.enter(a).await, Err(ApiError::Overloaded(_))), "the same cohort waits, slots or not");
        drop(first);
        assert!(gate.enter(a).await.is_ok());
    }

    #[tokio::test]
    async fn an_import_waiting_for_its_cohort_holds_no_slot() {
        let gate = ImportGate::new(2, WAIT);
        let [a, b] = cohorts(&gate, 2)[..] else { unreachable!() };
        let _running = gate.enter(a).await.unwrap();
        let other = async {
            // Arrives after the second import of `a` below has started waiting.
            tokio::time::sleep(Duration::from_millis(10)).await;
            gate.enter(b).await.map(drop)
        };
        let (blocked, other) = tokio::join!(gate.enter(a), other);
        assert!(blocked.is_err(), "a second import of a cohort waits for the first");
        assert!(other.is_ok(), "the waiting import must leave the second slot to another cohort");
    }

    #[tokio::test]
    async fn admits_in_arrival_order() {
        let gate = ImportGate::new(1, Duration::from_secs(5));
        let keys = cohorts(&gate, 5);
        let order = std::sync::Mutex::new(Vec::new());
        let first = gate.enter(keys[0]).await.unwrap();
        let waiters = keys[1..].iter().enumerate().map(|(n, &key)| {
            let (gate, order) = (&gate, &order);
            async move {
                // They arrive one after another, in index order.
                tokio::time::sleep(Duration::from_millis(5 * n as u64)).await;
                let _turn = gate.enter(key).await.unwrap();
                order.lock().unwrap().push(n);
            }
        });
        let release = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(first);
        };
        tokio::join!(futures::future::join_all(waiters), release);
        assert_eq!(order.into_inner().unwrap(), vec![0, 1, 2, 3]);
    }
}
