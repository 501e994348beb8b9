//! The work queue between a controller's watch handlers and its workers,
//! with client-go's guarantees:
//!
//! - a key waiting in the queue is there once, however often it is added;
//! - a key is never handed to two workers at once: added while being
//!   worked on, it waits until the worker is done, then goes around again;
//! - a failing key is retried after an exponential backoff of its own.
//!
//! Metrics carry the queue's name: `workqueue_depth`, `workqueue_adds_total`,
//! `workqueue_queue_duration_seconds`, `workqueue_work_duration_seconds`,
//! `workqueue_retries_total`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The first retry's delay; each failure in a row doubles it.
const BASE_DELAY: Duration = Duration::from_millis(5);
/// The longest a failing key waits.
const MAX_DELAY: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    /// Keys that need work: those queued, and those added while processed.
    dirty: HashSet<T>,
    processing: HashSet<T>,
    /// When each queued key was added, for `workqueue_queue_duration_seconds`.
    added: HashMap<T, Instant>,
    /// When each processed key was handed out.
    started: HashMap<T, Instant>,
    failures: HashMap<T, u32>,
}

/// A deduplicating, rate-limited work queue. Cheap to clone.
#[derive(Debug)]
pub struct Queue<T> {
    name: &'static str,
    state: Arc<Mutex<State<T>>>,
    ready: Arc<Notify>,
    shutdown: CancellationToken,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            state: self.state.clone(),
            ready: self.ready.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

impl<T: Clone + Eq + Hash + Send + 'static> Queue<T> {
    /// A queue whose `get` returns `None` once `shutdown` is cancelled.
    pub fn new(name: &'static str, shutdown: CancellationToken) -> Self {
        Self {
            name,
            state: Arc::new(Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                added: HashMap::new(),
                started: HashMap::new(),
                failures: HashMap::new(),
            })),
            ready: Arc::new(Notify::new()),
            shutdown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `key` as needing work.
    pub fn add(&self, key: T) {
        if self.shutdown.is_cancelled() {
            return;
        }
        metrics::counter!("workqueue_adds_total", "name" => self.name).increment(1);
        let mut state = self.lock();
        if !state.dirty.insert(key.clone()) {
            return;
        }
        if state.processing.contains(&key) {
            return;
        }
        state.added.insert(key.clone(), Instant::now());
        state.queue.push_back(key);
        metrics::gauge!("workqueue_depth", "name" => self.name).set(state.queue.len() as f64);
        drop(state);
        self.ready.notify_one();
    }

    /// Adds `key` after `delay`.
    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => queue.add(key),
                () = queue.shutdown.cancelled() => {}
            }
        });
    }

    /// Adds `key` again after its backoff: 5 ms doubled per failure in a row,
    /// at most five minutes.
    pub fn add_rate_limited(&self, key: T) {
        let failures = {
            let mut state = self.lock();
            let failures = state.failures.entry(key.clone()).or_insert(0);
            *failures += 1;
            *failures
        };
        metrics::counter!("workqueue_retries_total", "name" => self.name).increment(1);
        self.add_after(key, backoff(failures));
    }

    /// Clears `key`'s failures: its next retry starts from the base delay.
    pub fn forget(&self, key: &T) {
        self.lock().failures.remove(key);
    }

    /// How many times in a row `key` has failed.
    pub fn failures(&self, key: &T) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to work on; `None` once the queue shuts down. Call
    /// [`Queue::done`] when finished with it.
    pub async fn get(&self) -> Option<T> {
        loop {
            {
                let mut state = self.lock();
                if let Some(key) = state.queue.pop_front() {
                    state.dirty.remove(&key);
                    state.processing.insert(key.clone());
                    let now = Instant::now();
                    if let Some(added) = state.added.remove(&key) {
                        metrics::histogram!("workqueue_queue_duration_seconds", "name" => self.name)
                            .record(now.duration_since(added).as_secs_f64());
                    }
                    state.started.insert(key.clone(), now);
                    metrics::gauge!("workqueue_depth", "name" => self.name)
                        .set(state.queue.len() as f64);
                    return Some(key);
                }
            }
            tokio::select! {
                () = self.ready.notified() => {}
                () = self.shutdown.cancelled() => return None,
            }
        }
    }

    /// Ends work on `key`; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &T) {
        let mut state = self.lock();
        state.processing.remove(key);
        if let Some(started) = state.started.remove(key) {
            metrics::histogram!("workqueue_work_duration_seconds", "name" => self.name)
                .record(started.elapsed().as_secs_f64());
        }
        if state.dirty.contains(key) {
            state.added.insert(key.clone(), Instant::now());
            state.queue.push_back(key.clone());
            metrics::gauge!("workqueue_depth", "name" => self.name).set(state.queue.len() as f64);
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Keys waiting (not counting those being worked on).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The delay before the `failures`-th retry.
fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    BASE_DELAY
        .checked_mul(1 << exponent)
        .map_or(MAX_DELAY, |d| d.min(MAX_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_waits_once_and_never_runs_twice_at_once() {
        let queue = Queue::new("test", CancellationToken::new());
        queue.add("a");
        queue.add("a");
        queue.add("b");
        assert_eq!(queue.len(), 2);
        let first = queue.get().await.unwrap();
        assert_eq!(first, "a");
        // Added while processed: not handed out until done.
        queue.add("a");
        assert_eq!(queue.get().await, Some("b"));
        assert!(queue.is_empty());
        queue.done(&"b");
        queue.done(&"a");
        assert_eq!(queue.get().await, Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_until_forgotten() {
        assert_eq!(backoff(1), Duration::from_millis(5));
        assert_eq!(backoff(4), Duration::from_millis(40));
        assert_eq!(backoff(200), MAX_DELAY);
        let queue = Queue::new("test", CancellationToken::new());
        queue.add_rate_limited("k");
        queue.add_rate_limited("k");
        assert_eq!(queue.failures(&"k"), 2);
        let started = Instant::now();
        assert_eq!(queue.get().await, Some("k"));
        assert!(started.elapsed() >= Duration::from_millis(5));
        queue.forget(&"k");
        assert_eq!(queue.failures(&"k"), 0);
    }

    #[tokio::test]
    async fn shutdown_ends_get() {
        let shutdown = CancellationToken::new();
        let queue: Queue<u32> = Queue::new("test", shutdown.clone());
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.get().await }
        });
        shutdown.cancel();
        assert_eq!(waiting.await.unwrap(), None);
        queue.add(1);
        assert!(queue.is_empty());
    }
}
