//! Expectations: what a controller has asked for and not yet seen in its
//! cache, so that it does not ask twice.
//!
//! A ReplicaSet that just created three pods expects three `Added` events;
//! until they arrive (or five minutes pass, in case one was lost), its
//! cache undercounts, and acting on it would create three more.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long an unmet expectation holds a controller back.
const TTL: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Expected {
    adds: i64,
    /// Keys of pods being deleted, not yet seen going.
    deletes: HashSet<String>,
    at: Instant,
}

/// Expectations per controller key.
#[derive(Debug, Default)]
pub struct Expectations {
    map: Mutex<HashMap<String, Expected>>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expected>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the cache has caught up with what `key` asked for.
    pub fn satisfied(&self, key: &str) -> bool {
        match self.lock().get(key) {
            None => true,
            Some(e) => (e.adds <= 0 && e.deletes.is_empty()) || e.at.elapsed() > TTL,
        }
    }

    pub fn expect_creations(&self, key: &str, adds: usize) {
        self.lock().insert(
            key.to_owned(),
            Expected {
                adds: adds as i64,
                deletes: HashSet::new(),
                at: Instant::now(),
            },
        );
    }

    pub fn expect_deletions(&self, key: &str, pods: impl IntoIterator<Item = String>) {
        self.lock().insert(
            key.to_owned(),
            Expected {
                adds: 0,
                deletes: pods.into_iter().collect(),
                at: Instant::now(),
            },
        );
    }

    /// Expects `adds` creations and the deletion of `pods` at once (a
    /// controller that does both in one reconcile).
    pub fn expect(&self, key: &str, adds: usize, pods: impl IntoIterator<Item = String>) {
        self.lock().insert(
            key.to_owned(),
            Expected {
                adds: adds as i64,
                deletes: pods.into_iter().collect(),
                at: Instant::now(),
            },
        );
    }

    /// One expected pod appeared (or its creation failed).
    pub fn creation_observed(&self, key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.adds -= 1;
        }
    }

    /// The pod `pod` is going (or its deletion failed).
    pub fn deletion_observed(&self, key: &str, pod: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.deletes.remove(pod);
        }
    }

    /// Forgets `key` (its controller is gone).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expectations_hold_until_observed_or_expired() {
        let e = Expectations::default();
        assert!(e.satisfied("rs"));
        e.expect_creations("rs", 2);
        e.creation_observed("rs");
        assert!(!e.satisfied("rs"));
        e.creation_observed("rs");
        assert!(e.satisfied("rs"));
        e.expect_deletions("rs", ["ns/a".to_owned(), "ns/b".to_owned()]);
        e.deletion_observed("rs", "ns/a");
        e.deletion_observed("rs", "ns/a");
        assert!(!e.satisfied("rs"));
        tokio::time::advance(TTL + Duration::from_secs(1)).await;
        assert!(e.satisfied("rs"), "a lost event does not block forever");
    }
}
