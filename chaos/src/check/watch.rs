//! Watch guarantees, checked against a reference: the events one fresh
//! watch from the first revision returns once the cluster is healthy again.
//!
//! - the reference itself: revisions never go back, no event twice, each
//!   event's `prev_kv` is the previous event of its key;
//! - every watcher: exactly the reference's events from its start revision
//!   to the last it saw — in order, none twice, none missing — across all
//!   the times it had to resume on another member;
//! - a watch opened at any revision starts exactly there;
//! - every acknowledged write is in the reference, at its revision, with
//!   its value (an acknowledged write lost is reported apart).

use std::collections::{HashMap, HashSet};

use crate::store::{Acked, Seen, WatchRecord};

#[derive(Clone, Debug, Default)]
pub struct WatchReport {
    /// Events checked (the reference's and every watcher's).
    pub events: usize,
    pub violations: Vec<String>,
    /// Acknowledged writes missing from the history.
    pub lost: Vec<String>,
}

fn describe(event: &Seen) -> String {
    format!(
        "{} {} @{} = {:?}",
        if event.put { "PUT" } else { "DELETE" },
        event.key,
        event.mod_revision,
        String::from_utf8_lossy(&event.value)
    )
}

fn same(a: &Seen, b: &Seen) -> bool {
    a.put == b.put && a.key == b.key && a.mod_revision == b.mod_revision && a.value == b.value
}

/// Checks the reference on its own: order, uniqueness and `prev_kv`.
pub fn check_reference(reference: &[Seen], report: &mut WatchReport) {
    report.events += reference.len();
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, &Seen> = HashMap::new();
    for (i, event) in reference.iter().enumerate() {
        if i > 0 && event.mod_revision < reference[i - 1].mod_revision {
            report.violations.push(format!(
                "reference: revision went back: {} after {}",
                describe(event),
                describe(&reference[i - 1])
            ));
        }
        if !seen.insert((event.key.as_str(), event.mod_revision)) {
            report
                .violations
                .push(format!("reference: event twice: {}", describe(event)));
        }
        match (last.get(event.key.as_str()), &event.prev) {
            // The key's history began before the reference: nothing to compare.
            (None, _) => {}
            (Some(previous), prev) => {
                let expected = previous
                    .put
                    .then(|| (previous.value.clone(), previous.mod_revision));
                if prev != &expected {
                    report.violations.push(format!(
                        "prev_kv of {} is {:?}, but the key's previous event is {}",
                        describe(event),
                        prev.as_ref()
                            .map(|(v, r)| format!("{:?}@{r}", String::from_utf8_lossy(v))),
                        describe(previous)
                    ));
                }
            }
        }
        last.insert(&event.key, event);
    }
}

/// Compares `events`, received from `start` on, with the reference.
fn check_stream(
    what: &str,
    start: i64,
    events: &[Seen],
    reference: &[Seen],
    report: &mut WatchReport,
) {
    report.events += events.len();
    let Some(last) = events.last() else { return };
    let expected: Vec<&Seen> = reference
        .iter()
        .filter(|e| e.mod_revision >= start && e.mod_revision <= last.mod_revision)
        .collect();
    let mut i = 0;
    while i < events.len().min(expected.len()) && same(&events[i], expected[i]) {
        i += 1;
    }
    if i == events.len() && i == expected.len() {
        return;
    }
    let problem = match (events.get(i), expected.get(i)) {
        (Some(got), Some(_)) if i > 0 && same(got, &events[i - 1]) => {
            format!("duplicate {}", describe(got))
        }
        (Some(got), Some(want)) if events[i..].iter().any(|e| same(e, want)) => {
            format!("out of order: {} before {}", describe(got), describe(want))
        }
        (Some(got), Some(want)) if got.mod_revision > want.mod_revision => {
            format!(
                "gap: missed {} (got {} next)",
                describe(want),
                describe(got)
            )
        }
        (Some(got), Some(want)) => {
            format!(
                "got {} where the history has {}",
                describe(got),
                describe(want)
            )
        }
        (Some(got), None) => format!("an event the history does not have: {}", describe(got)),
        (None, Some(want)) => format!("gap: missed {}", describe(want)),
        (None, None) => return,
    };
    report.violations.push(format!(
        "{what} (from revision {start}), event {i}: {problem}"
    ));
}

/// Checks every watcher against the reference.
pub fn check_watchers(watches: &[WatchRecord], reference: &[Seen], report: &mut WatchReport) {
    for watch in watches {
        check_stream(
            &format!("watcher {} ({} resumes)", watch.watcher, watch.resumes),
            watch.start_revision,
            &watch.events,
            reference,
            report,
        );
    }
}

/// Checks watches opened after the run at sampled revisions: each must
/// begin exactly at its revision and follow the reference.
pub fn check_resumed(samples: &[(i64, Vec<Seen>)], reference: &[Seen], report: &mut WatchReport) {
    for (from, events) in samples {
        check_stream(
            &format!("watch opened at revision {from}"),
            *from,
            events,
            reference,
            report,
        );
    }
}

/// Every acknowledged write must be in the reference as acknowledged.
pub fn check_acked(acked: &[Acked], reference: &[Seen], report: &mut WatchReport) {
    let at: HashMap<(&str, i64), &Seen> = reference
        .iter()
        .map(|e| ((e.key.as_str(), e.mod_revision), e))
        .collect();
    for write in acked {
        let value = write.value.to_string().into_bytes();
        match at.get(&(write.key.as_str(), write.revision)) {
            Some(event) if event.put && event.value == value => {}
            Some(event) => report.violations.push(format!(
                "write of {} to {} acknowledged at revision {}, but the history has {} there",
                write.value,
                write.key,
                write.revision,
                describe(event)
            )),
            None => report.lost.push(format!(
                "write of {} to {} acknowledged at revision {} is not in the history",
                write.value, write.key, write.revision
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, revision: i64, prev: Option<(&str, i64)>) -> Seen {
        Seen {
            put: true,
            key: key.into(),
            value: value.as_bytes().to_vec(),
            mod_revision: revision,
            prev: prev.map(|(v, r)| (v.as_bytes().to_vec(), r)),
        }
    }

    fn history() -> Vec<Seen> {
        vec![
            put("a", "1", 10, None),
            put("b", "1", 11, None),
            put("a", "2", 12, Some(("1", 10))),
            put("b", "2", 13, Some(("1", 11))),
        ]
    }

    fn watch(start: i64, events: Vec<Seen>) -> WatchRecord {
        WatchRecord {
            watcher: 0,
            start_revision: start,
            events,
            ..WatchRecord::default()
        }
    }

    #[test]
    fn a_consistent_history_and_watchers_pass() {
        let reference = history();
        let mut report = WatchReport::default();
        check_reference(&reference, &mut report);
        check_watchers(
            &[
                watch(10, reference.clone()),
                watch(12, reference[2..3].to_vec()),
            ],
            &reference,
            &mut report,
        );
        check_resumed(&[(11, reference[1..].to_vec())], &reference, &mut report);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
    }

    #[test]
    fn gaps_duplicates_and_reordering_are_caught() {
        let reference = history();
        let gap = vec![reference[0].clone(), reference[2].clone()];
        let duplicate = vec![
            reference[0].clone(),
            reference[0].clone(),
            reference[1].clone(),
        ];
        let reordered = vec![reference[1].clone(), reference[0].clone()];
        for (events, expect) in [
            (gap, "gap"),
            (duplicate, "duplicate"),
            (reordered, "out of order"),
        ] {
            let mut report = WatchReport::default();
            check_watchers(&[watch(10, events)], &reference, &mut report);
            assert_eq!(
                report.violations.len(),
                1,
                "{expect}: {:?}",
                report.violations
            );
            assert!(
                report.violations[0].contains(expect),
                "{:?}",
                report.violations
            );
        }
    }

    #[test]
    fn a_watch_that_starts_late_is_caught() {
        let reference = history();
        let mut report = WatchReport::default();
        check_resumed(&[(10, reference[1..].to_vec())], &reference, &mut report);
        assert!(
            report.violations[0].contains("gap"),
            "{:?}",
            report.violations
        );
    }

    #[test]
    fn a_wrong_prev_kv_is_caught() {
        let mut reference = history();
        reference[3].prev = Some((b"2".to_vec(), 11));
        let mut report = WatchReport::default();
        check_reference(&reference, &mut report);
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
        assert!(report.violations[0].contains("prev_kv"));
    }

    #[test]
    fn lost_and_misplaced_acknowledged_writes_are_caught() {
        let reference = history();
        let acked = |key: &str, value, revision| Acked {
            key: key.into(),
            value,
            revision,
            called: 0,
            at: 0,
        };
        let mut report = WatchReport::default();
        check_acked(
            &[
                acked("a", 1, 10),
                acked("b", 2, 13),
                acked("a", 3, 14),
                acked("b", 9, 11),
            ],
            &reference,
            &mut report,
        );
        assert_eq!(report.lost.len(), 1, "{:?}", report.lost);
        assert!(report.lost[0].contains("revision 14"));
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    }
}
