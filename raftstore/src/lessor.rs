//! Lease deadlines: which leases are due to expire, and when.
//!
//! The state machine knows each lease's TTL and keys; deadlines are not part
//! of it. Only the *primary* member (the one that may propose; the Raft leader
//! once the store is replicated) tracks them, in memory. When it takes the
//! role, every lease gets a full TTL from that moment — as etcd's lessor does
//! on promotion — so a change of primary never expires a live lease early.
//! Expiry is proposed as a `LeaseRevoke` command, so it happens in log order
//! on every member.
//!
//! Time is passed in (`now`), never read here, so tests drive it directly.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// How long an expired lease waits before its revocation is proposed again
/// (etcd's `expiredLeaseRetryInterval`).
pub const REVOKE_RETRY: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug)]
struct Deadline {
    ttl: i64,
    expires: Instant,
    /// When an expired lease's revocation may be proposed (again).
    revoke_at: Instant,
}

impl Deadline {
    fn new(ttl: i64, now: Instant) -> Self {
        let expires = now + ttl_duration(ttl);
        Self {
            ttl,
            expires,
            revoke_at: expires,
        }
    }
}

/// The primary's lease deadlines; empty while the member is not primary.
#[derive(Debug, Default)]
pub struct Lessor {
    primary: bool,
    deadlines: HashMap<i64, Deadline>,
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

impl Lessor {
    /// Takes the primary role: every lease (`(id, ttl)`) gets a full TTL from `now`.
    pub fn promote(&mut self, leases: impl IntoIterator<Item = (i64, i64)>, now: Instant) {
        self.primary = true;
        self.deadlines = leases
            .into_iter()
            .map(|(id, ttl)| (id, Deadline::new(ttl, now)))
            .collect();
    }

    /// Gives up the primary role and forgets every deadline.
    pub fn demote(&mut self) {
        self.primary = false;
        self.deadlines.clear();
    }

    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// A lease was granted (applied).
    pub fn granted(&mut self, id: i64, ttl: i64, now: Instant) {
        if self.primary {
            self.deadlines.insert(id, Deadline::new(ttl, now));
        }
    }

    /// A lease was revoked (applied).
    pub fn revoked(&mut self, id: i64) {
        self.deadlines.remove(&id);
    }

    /// Keeps a lease alive for another full TTL; returns that TTL, or `None`
    /// if the lease is unknown or already expired (its revocation is on its way).
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let deadline = self.deadlines.get_mut(&id)?;
        if deadline.expires <= now {
            return None;
        }
        *deadline = Deadline::new(deadline.ttl, now);
        Some(deadline.ttl)
    }

    /// Time left before lease `id` expires.
    pub fn remaining(&self, id: i64, now: Instant) -> Option<Duration> {
        self.deadlines
            .get(&id)
            .map(|d| d.expires.saturating_duration_since(now))
    }

    /// The leases whose deadline has passed, at most `limit` of them. Each is
    /// given [`REVOKE_RETRY`] more, so that a revocation lost on its way is
    /// proposed again rather than forgotten.
    pub fn expired(&mut self, now: Instant, limit: usize) -> Vec<i64> {
        let mut due: Vec<i64> = self
            .deadlines
            .iter()
            .filter(|(_, d)| d.expires <= now && d.revoke_at <= now)
            .map(|(id, _)| *id)
            .collect();
        due.sort_unstable();
        due.truncate(limit);
        for id in &due {
            if let Some(deadline) = self.deadlines.get_mut(id) {
                deadline.revoke_at = now + REVOKE_RETRY;
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_expire_unless_renewed() {
        let t0 = Instant::now();
        let mut lessor = Lessor::default();
        lessor.promote([(1, 5), (2, 10)], t0);
        assert_eq!(
            lessor.expired(t0 + Duration::from_secs(4), 10),
            Vec::<i64>::new()
        );
        assert_eq!(lessor.renew(1, t0 + Duration::from_secs(4)), Some(5));
        assert_eq!(
            lessor.expired(t0 + Duration::from_secs(8), 10),
            Vec::<i64>::new()
        );
        assert_eq!(lessor.expired(t0 + Duration::from_secs(10), 10), vec![1, 2]);
        // Expired leases cannot be renewed; their revocation is retried later.
        assert_eq!(lessor.renew(1, t0 + Duration::from_secs(10)), None);
        assert_eq!(
            lessor.expired(t0 + Duration::from_secs(11), 10),
            Vec::<i64>::new()
        );
        assert_eq!(lessor.expired(t0 + Duration::from_secs(13), 1), vec![1]);
        lessor.revoked(1);
        assert_eq!(lessor.remaining(1, t0), None);
    }

    #[test]
    fn promotion_gives_every_lease_a_full_ttl_and_demotion_forgets() {
        let t0 = Instant::now();
        let mut lessor = Lessor::default();
        lessor.granted(7, 5, t0);
        assert_eq!(lessor.remaining(7, t0), None, "followers keep no deadlines");
        let later = t0 + Duration::from_secs(100);
        lessor.promote([(7, 5)], later);
        assert_eq!(lessor.remaining(7, later), Some(Duration::from_secs(5)));
        lessor.demote();
        assert!(!lessor.is_primary());
        assert_eq!(lessor.renew(7, later), None);
    }
}
