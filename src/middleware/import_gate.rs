//! Admission of partner cohort imports to PostgreSQL: at most `IMPORT_CONCURRENCY` run at
//! once, one per cohort, in the order they arrived.
//!
//! Why queue here rather than let every import into PostgreSQL at once: the imports
//! PostgreSQL runs together share the machine's cores, so eight of them on two cores each
//! take about four times as long, and which finishes first is left to the OS scheduler.
//! With 8 clients the p99 was ~1.9× the p50. Queued here in arrival order, an import waits
//! its turn, then shares the cores with fewer others, and its latency is its place in the
//! queue plus its own work: the p99 came to ~1.65× the p50 (medians of 8 benchmark runs
//! without the gate and 20 with it).
//!
//! Two imports of the same cohort would wait for each other on the cohort's row lock in
//! PostgreSQL anyway; holding the second back here leaves its slot to another cohort's
//! import meanwhile. The database lock still orders imports across instances: this gate
//! only shapes the load of one.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError},
    time::Duration,
};

use tokio::sync::{Mutex, OwnedMutexGuard, Semaphore, SemaphorePermit};
use uuid::Uuid;

use crate::{
    error::ApiError,
    metrics::{self, GaugeGuard},
    store::cohorts::CohortKey,
};

/// A cohort's key, owned ([`CohortKey`] borrows): workspace, partner, the partner's
/// cohort id. Not a name: [`crate::domain::CohortName`] is the cohort's display name.
type OwnedCohortKey = (Uuid, String, String);

/// Holds imports back until PostgreSQL can run them; see the module documentation.
#[derive(Debug)]
pub struct ImportGate {
    /// The cohorts that have an import running or waiting here, each with the lock that
    /// runs their imports one at a time. An entry lives while anyone holds or waits for
    /// its lock, so the map is as large as the imports in flight. One lock per cohort,
    /// not a fixed set of locks the cohorts hash into: two hot cohorts sharing one would
    /// wait for each other for the life of the process (seen in the benchmark: two of its
    /// ten cohorts at twice the others' latency).
    cohorts: std::sync::Mutex<HashMap<OwnedCohortKey, Arc<Mutex<()>>>>,
    /// `IMPORT_CONCURRENCY` permits; tokio's semaphore hands them out first come, first
    /// served.
    running: Semaphore,
    /// How long an import may wait for its turn before it answers 503.
    max_wait: Duration,
}

/// An import's turn: it may run until this is dropped. Fields drop in order: the slot,
/// then the cohort's lock, then the cohort's entry if nobody else wants it.
#[derive(Debug)]
pub struct ImportTurn<'a> {
    _running: GaugeGuard,
    _slot: SemaphorePermit<'a>,
    _cohort: OwnedMutexGuard<()>,
    _interest: CohortInterest<'a>,
}

/// An import's hold on its cohort's entry in [`ImportGate::cohorts`], running or waiting.
#[derive(Debug)]
struct CohortInterest<'a> {
    gate: &'a ImportGate,
    key: OwnedCohortKey,
    lock: Arc<Mutex<()>>,
}

impl Drop for CohortInterest<'_> {
    fn drop(&mut self) {
        let mut cohorts = self.gate.cohorts();
        // The map's reference and this one: nobody else runs or waits for this cohort.
        // References are only taken with the map locked, so none can appear meanwhile.
        if Arc::strong_count(&self.lock) == 2 {
            cohorts.remove(&self.key);
        }
    }
}

impl ImportGate {
    /// A gate that lets `concurrency` imports run at once (at least one), each waiting at
    /// most `max_wait` for its turn.
    pub fn new(concurrency: usize, max_wait: Duration) -> Self {
        ImportGate { cohorts: std::sync::Mutex::default(), running: Semaphore::new(concurrency.max(1)), max_wait }
    }

    /// Waits until no other import of this cohort runs here and a slot is free. After
    /// `max_wait` it gives up with a 503, before anything was written.
    pub async fn enter(&self, cohort: CohortKey<'_>) -> Result<ImportTurn<'_>, ApiError> {
        let waiting = GaugeGuard::start(metrics::COHORT_IMPORTS_WAITING);
        let interest = self.interest(cohort);
        let lock = Arc::clone(&interest.lock);
        // Cohort first, slot second: an import never holds a slot while it waits for its
        // cohort, and every import takes them in this one order, so none can wait for
        // another that waits for it.
        let turn = async {
            let cohort = lock.lock_owned().await;
            self.running.acquire().await.map(|slot| (cohort, slot))
        };
        let turn = tokio::time::timeout(self.max_wait, turn).await;
        drop(waiting);
        match turn {
            Ok(Ok((cohort, slot))) => Ok(ImportTurn {
                _running: GaugeGuard::start(metrics::COHORT_IMPORTS_RUNNING),
                _slot: slot,
                _cohort: cohort,
                _interest: interest,
            }),
            // Out of time (a closed semaphore would land here too, but nothing closes it).
            Ok(Err(_)) | Err(_) => Err(ApiError::Overloaded("too many cohort imports are waiting; retry later".into())),
        }
    }

    /// Registers an import's interest in its cohort's lock, creating the entry if it is
    /// the only one.
    fn interest(&self, cohort: CohortKey<'_>) -> CohortInterest<'_> {
        let key = (cohort.workspace_id, cohort.partner.to_owned(), cohort.cohort_id.to_owned());
        let lock = Arc::clone(self.cohorts().entry(key.clone()).or_default());
        CohortInterest { gate: self, key, lock }
    }

    /// The map of cohorts. Its critical sections cannot panic, but a poisoned lock would
    /// still hold a consistent map.
    fn cohorts(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedCohortKey, Arc<Mutex<()>>>> {
        self.cohorts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(50);

    /// Keys of cohorts `names` of one workspace.
    fn keys<'a>(names: &'a [&'a str]) -> Vec<CohortKey<'a>> {
        let workspace_id = Uuid::new_v4();
        names.iter().map(|name| CohortKey { workspace_id, partner: "kubit", cohort_id: name }).collect()
    }

    #[tokio::test]
    async fn lets_in_as_many_imports_as_it_has_slots() {
        let gate = ImportGate::new(2, WAIT);
        let [a, b, c] = keys(&["a", "b", "c"])[..] else { unreachable!() };
        let _first = gate.enter(a).await.unwrap();
        let second = gate.enter(b).await.unwrap();
        assert!(matches!(gate.enter(c).await, Err(ApiError::Overloaded(_))), "a third import must wait for a slot");
        drop(second);
        assert!(gate.enter(c).await.is_ok(), "a freed slot is taken");
    }

    #[tokio::test]
    async fn runs_one_import_of_a_cohort_at_a_time() {
        let gate = ImportGate::new(4, WAIT);
        let [a, a_elsewhere] = keys(&["a", "a"])[..] else { unreachable!() };
        let a_elsewhere = CohortKey { workspace_id: Uuid::new_v4(), ..a_elsewhere };
        let first = gate.enter(a).await.unwrap();
        assert!(matches!(gate.enter(a).await, Err(ApiError::Overloaded(_))), "the same cohort waits, slots or not");
        let _other_workspace =
            gate.enter(a_elsewhere).await.expect("the same cohort id in another workspace is another cohort");
        drop(first);
        assert!(gate.enter(a).await.is_ok());
    }

    #[tokio::test]
    async fn an_import_waiting_for_its_cohort_holds_no_slot() {
        let gate = ImportGate::new(2, WAIT);
        let [a, b] = keys(&["a", "b"])[..] else { unreachable!() };
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
        let keys = keys(&["c0", "c1", "c2", "c3", "c4"]);
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

    #[tokio::test]
    async fn forgets_a_cohort_once_nobody_runs_or_waits_for_it() {
        let gate = ImportGate::new(1, WAIT);
        let [a, b] = keys(&["a", "b"])[..] else { unreachable!() };
        let running = gate.enter(a).await.unwrap();
        // Times out waiting for the slot, and again for the cohort.
        assert!(gate.enter(b).await.is_err());
        assert!(gate.enter(a).await.is_err());
        assert_eq!(gate.cohorts().len(), 1, "only the running import's cohort is known");
        drop(running);
        assert!(gate.cohorts().is_empty());
        // A holder that leaves while another import waits leaves the entry to the waiter,
        // which removes it when its own turn ends.
        let holder = gate.enter(a).await.unwrap();
        let waiter = gate.enter(a);
        let release = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(holder);
        };
        let (waited, ()) = tokio::join!(waiter, release);
        drop(waited.expect("the waiter gets its turn once the holder leaves"));
        assert!(gate.cohorts().is_empty());
    }
}
