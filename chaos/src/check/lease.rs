//! Lease safety: no key outlives its lease by more than the lease's TTL.
//!
//! A lease the workload stopped keeping alive at `last_ack` expires at
//! `last_ack + TTL`. A new leader gives every lease a fresh TTL (etcd does
//! too), so after a fault the clock restarts when the fault is healed plus
//! an election's worth of time. The key must be gone within one more TTL.

use crate::scenario::Window;
use crate::store::Abandoned;

/// Time allowed for an election after a fault is healed.
const ELECTION_NS: u64 = 3_000_000_000;

/// One line per key that outlived its lease.
pub fn check(leases: &[Abandoned], windows: &[Window]) -> Vec<String> {
    let mut violations = Vec::new();
    for lease in leases {
        let ttl = u64::try_from(lease.ttl).unwrap_or(0) * 1_000_000_000;
        // When the lease's clock last (re)started: the last keep-alive, or
        // the end of a fault that overlapped the lease's final TTL.
        let mut clock = lease.last_ack;
        let mut deadline = clock + 2 * ttl;
        for window in windows {
            if window.start <= deadline && window.healed + ELECTION_NS > clock {
                clock = clock.max(window.healed + ELECTION_NS);
                deadline = clock + 2 * ttl;
            }
        }
        match lease.gone_at {
            Some(gone) if gone <= deadline => {}
            Some(gone) => violations.push(format!(
                "{} outlived its lease (TTL {} s) by {:.1} s",
                lease.key,
                lease.ttl,
                (gone - clock - ttl) as f64 / 1e9
            )),
            None => violations.push(format!(
                "{} still exists long after its lease (TTL {} s) ran out",
                lease.key, lease.ttl
            )),
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::Fault;

    const S: u64 = 1_000_000_000;

    fn abandoned(last_ack: u64, gone_at: Option<u64>) -> Abandoned {
        Abandoned {
            key: "/chaos/lease/0-1".into(),
            ttl: 3,
            last_ack,
            gone_at,
        }
    }

    #[test]
    fn keys_gone_within_a_ttl_of_expiry_pass() {
        assert!(check(&[abandoned(10 * S, Some(14 * S))], &[]).is_empty());
        assert!(check(&[abandoned(10 * S, Some(16 * S))], &[]).is_empty());
    }

    #[test]
    fn a_key_that_outlives_its_lease_is_caught() {
        let found = check(&[abandoned(10 * S, Some(17 * S))], &[]);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("outlived"), "{found:?}");
        assert_eq!(check(&[abandoned(10 * S, None)], &[]).len(), 1);
    }

    #[test]
    fn a_fault_restarts_the_lease_clock() {
        let window = Window {
            fault: Fault::KillAll,
            target: "every member".into(),
            start: 11 * S,
            healed: 15 * S,
        };
        // 15 + 3 (election) + 3 (TTL) + 3 (slack) = 24 s.
        assert!(
            check(
                &[abandoned(10 * S, Some(23 * S))],
                std::slice::from_ref(&window)
            )
            .is_empty()
        );
        assert_eq!(
            check(&[abandoned(10 * S, Some(25 * S))], &[window]).len(),
            1
        );
    }
}
