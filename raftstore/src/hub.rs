//! The watch hub: where applied events wait for watchers.
//!
//! ```text
//!  applier ──publish(events, rev)──► recent events (bounded, in memory)
//!                                     │   revision notification (tokio watch)
//!                                     ▼
//!          watch streams pull what they have not seen yet ──► clients
//! ```
//!
//! Watchers *pull*: the applier only appends to a bounded buffer and bumps a
//! revision counter, so a slow or stuck watcher can never hold up a write.
//! A watcher that falls behind the buffer reads the history from the store
//! instead (and learns it was compacted, if it was).

use std::collections::VecDeque;
use std::sync::RwLock;

use keelson_proto::mvccpb::Event;
use tokio::sync::watch;

use crate::error::Result;
use crate::store::MvccStore;

/// The recent events, and the revision they are complete from.
#[derive(Debug)]
struct Recent {
    events: VecDeque<Event>,
    /// Every event with a revision at or above this one is in `events`.
    complete_from: i64,
}

/// Fans applied events out to watchers.
#[derive(Debug)]
pub struct WatchHub {
    recent: RwLock<Recent>,
    capacity: usize,
    revision: watch::Sender<i64>,
}

fn revision_of(event: &Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

impl WatchHub {
    /// A hub for a store at `revision`, keeping about `capacity` recent events.
    pub fn new(revision: i64, capacity: usize) -> Self {
        Self {
            recent: RwLock::new(Recent {
                events: VecDeque::new(),
                complete_from: revision + 1,
            }),
            capacity,
            revision: watch::Sender::new(revision),
        }
    }

    /// Makes `events` (in revision order, up to `revision`) visible to watchers.
    pub fn publish(&self, events: Vec<Event>, revision: i64) {
        {
            let mut recent = self.recent.write().unwrap_or_else(|p| p.into_inner());
            recent.events.extend(events);
            // Evict whole revisions, so the buffer stays complete from its start.
            while recent.events.len() > self.capacity {
                let Some(oldest) = recent.events.front().map(revision_of) else {
                    break;
                };
                while recent
                    .events
                    .front()
                    .is_some_and(|e| revision_of(e) == oldest)
                {
                    recent.events.pop_front();
                }
                recent.complete_from = oldest + 1;
            }
        }
        self.revision.send_replace(revision);
    }

    /// Forgets the buffered events after the store was replaced (a snapshot
    /// was installed) at `revision`: watchers read older history from disk.
    pub fn reset(&self, revision: i64) {
        {
            let mut recent = self.recent.write().unwrap_or_else(|p| p.into_inner());
            recent.events.clear();
            recent.complete_from = revision + 1;
        }
        self.revision.send_replace(revision);
    }

    /// A receiver that changes whenever a new revision is published.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// The latest published revision.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// The events with revisions in `from..=to`, from memory when the buffer
    /// still holds them, from `store` otherwise. Fails with
    /// [`crate::Error::Compacted`] if that history is gone.
    pub fn events(&self, store: &MvccStore, from: i64, to: i64) -> Result<Vec<Event>> {
        // Like etcd, a watcher behind the compaction point is told so, even
        // when the events it misses happen to be still in memory.
        let compacted = store.compacted_revision();
        if from < compacted {
            return Err(crate::Error::Compacted {
                requested: from,
                compacted,
            });
        }
        {
            let recent = self.recent.read().unwrap_or_else(|p| p.into_inner());
            if from >= recent.complete_from {
                let start = recent.events.partition_point(|e| revision_of(e) < from);
                return Ok(recent
                    .events
                    .range(start..)
                    .take_while(|e| revision_of(e) <= to)
                    .cloned()
                    .collect());
            }
        }
        store.events(from, to)
    }
}
