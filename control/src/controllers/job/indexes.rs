//! Completion indexes of Indexed Jobs: which pod holds which index, and
//! the compressed form `status.completedIndexes` keeps them in (`0-2,4`:
//! ranges of three or more, single indexes and pairs listed, ascending).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

/// The annotation (and label) that gives a pod its completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// Indexes `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Interval {
    first: u32,
    last: u32,
}

/// A set of indexes as ascending, disjoint, non-adjacent intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Intervals(Vec<Interval>);

impl Intervals {
    /// Reads `text` as Kubernetes does: leniently, skipping pieces that are
    /// not numbers and dropping indexes at or beyond `completions` (a Job
    /// whose completions shrank keeps only the indexes still in range).
    pub fn parse(text: &str, completions: u32) -> Self {
        let mut result: Vec<Interval> = Vec::new();
        if text.is_empty() {
            return Self(result);
        }
        for piece in text.split(',') {
            let (first, last) = match piece.split_once('-') {
                Some((first, last)) => (first.parse::<u32>(), Some(last.parse::<u32>())),
                None => (piece.parse::<u32>(), None),
            };
            let Ok(first) = first else {
                tracing::debug!(
                    interval = piece,
                    "corrupt completed index interval; ignored"
                );
                continue;
            };
            if first >= completions {
                break;
            }
            let last = match last {
                None => first,
                Some(Ok(last)) => last.min(completions - 1),
                Some(Err(_)) => {
                    tracing::debug!(
                        interval = piece,
                        "corrupt completed index interval; ignored"
                    );
                    continue;
                }
            };
            if last < first {
                continue;
            }
            result.push(Interval { first, last });
        }
        // Sorted and merged, whatever order the text had.
        let mut indexes = Self::default();
        for interval in result {
            indexes = indexes.merge(&Self(vec![interval]));
        }
        indexes
    }

    /// These indexes and `more`.
    pub fn with(&self, more: impl IntoIterator<Item = u32>) -> Self {
        let mut added: Vec<u32> = more.into_iter().collect();
        added.sort_unstable();
        added.dedup();
        self.merge(&Self(
            added
                .into_iter()
                .map(|i| Interval { first: i, last: i })
                .collect(),
        ))
    }

    /// The union of both sets.
    pub fn merge(&self, other: &Self) -> Self {
        let mut all: Vec<Interval> = self.0.iter().chain(&other.0).copied().collect();
        all.sort_by_key(|i| i.first);
        let mut result: Vec<Interval> = Vec::with_capacity(all.len());
        for interval in all {
            match result.last_mut() {
                Some(last) if interval.first <= last.last.saturating_add(1) => {
                    last.last = last.last.max(interval.last);
                }
                _ => result.push(interval),
            }
        }
        Self(result)
    }

    pub fn has(&self, index: u32) -> bool {
        // The first interval that ends at or after `index`.
        let at = self.0.partition_point(|i| i.last < index);
        self.0.get(at).is_some_and(|i| i.first <= index)
    }

    /// How many indexes.
    pub fn total(&self) -> usize {
        self.0.iter().map(|i| (i.last - i.first) as usize + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first `count` indexes below `completions` not in this set.
    pub fn first_missing(&self, count: usize, completions: u32) -> Vec<u32> {
        let mut result = Vec::with_capacity(count);
        let mut candidate = 0u32;
        for interval in &self.0 {
            while candidate < completions && result.len() < count && candidate < interval.first {
                result.push(candidate);
                candidate += 1;
            }
            candidate = candidate.max(interval.last.saturating_add(1));
        }
        while candidate < completions && result.len() < count {
            result.push(candidate);
            candidate += 1;
        }
        result
    }
}

impl fmt::Display for Intervals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, interval) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", interval.first)?;
            if interval.last == interval.first + 1 {
                write!(f, ",{}", interval.last)?;
            } else if interval.last > interval.first {
                write!(f, "-{}", interval.last)?;
            }
        }
        Ok(())
    }
}

/// The completion index a pod's annotation gives it, if a valid one.
pub fn index_of(pod: &Pod) -> Option<u32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(COMPLETION_INDEX)?
        .parse()
        .ok()
}

/// The active pods to delete because they repeat an index (all but the
/// most useful of each), have none, or have one at or beyond
/// `completions`; and the rest. `order` sorts pods so that those best
/// deleted come first.
pub fn duplicates(
    active: &[Arc<Pod>],
    completions: u32,
    order: impl Fn(&mut [Arc<Pod>]),
) -> (Vec<Arc<Pod>>, Vec<Arc<Pod>>) {
    let mut remove = Vec::new();
    let mut keep = Vec::new();
    let mut by_index: BTreeMap<u32, Vec<Arc<Pod>>> = BTreeMap::new();
    for pod in active {
        match index_of(pod) {
            Some(index) if index < completions => {
                by_index.entry(index).or_default().push(pod.clone());
            }
            _ => remove.push(pod.clone()),
        }
    }
    for (_, mut pods) in by_index {
        order(&mut pods);
        if let Some(best) = pods.pop() {
            keep.push(best);
        }
        remove.extend(pods);
    }
    (remove, keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn indexes_print_as_kubernetes_prints_them() {
        let cases: &[(&[u32], &str)] = &[
            (&[], ""),
            (&[0], "0"),
            (&[0, 1], "0,1"),
            (&[0, 1, 2, 4], "0-2,4"),
            (&[1, 3, 5, 6, 7, 9], "1,3,5-7,9"),
            (&[4, 2, 0, 1], "0-2,4"),
        ];
        for (indexes, text) in cases {
            assert_eq!(
                Intervals::default()
                    .with(indexes.iter().copied())
                    .to_string(),
                *text
            );
        }
    }

    #[test]
    fn parsing_is_lenient_and_bounded_by_completions() {
        let parsed = Intervals::parse("0-2,4", 10);
        assert_eq!(parsed.total(), 4);
        assert!(parsed.has(0) && parsed.has(2) && parsed.has(4));
        assert!(!parsed.has(3) && !parsed.has(5));
        assert_eq!(Intervals::parse("0,1", 10).to_string(), "0,1");
        // Adjacent pieces merge; corrupt ones are skipped.
        assert_eq!(Intervals::parse("0,1,2,x,5-a,7", 10).to_string(), "0-2,7");
        // Indexes beyond completions go; a range is cut short.
        assert_eq!(Intervals::parse("1-8", 5).to_string(), "1-4");
        assert_eq!(Intervals::parse("1,6-8", 5).to_string(), "1");
        assert!(Intervals::parse("", 3).is_empty());
    }

    #[test]
    fn merging_and_membership() {
        let a = Intervals::parse("0-2,8", 20);
        let b = Intervals::parse("3,5-6,9-10", 20);
        assert_eq!(a.merge(&b).to_string(), "0-3,5,6,8-10");
        assert_eq!(a.with([4, 5, 3]).to_string(), "0-5,8");
        assert_eq!(a.merge(&b).total(), 9);
    }

    #[test]
    fn first_missing_indexes_skip_those_taken() {
        let taken = Intervals::parse("0,2-3,6", 10);
        assert_eq!(taken.first_missing(3, 10), [1, 4, 5]);
        assert_eq!(taken.first_missing(10, 8), [1, 4, 5, 7]);
        assert_eq!(Intervals::default().first_missing(2, 5), [0, 1]);
        assert_eq!(
            Intervals::parse("0-4", 5).first_missing(2, 5),
            Vec::<u32>::new()
        );
    }

    fn pod(name: &str, index: Option<&str>) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: index.map(|i| [(COMPLETION_INDEX.to_owned(), i.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        })
    }

    #[test]
    fn repeated_missing_and_out_of_range_indexes_are_removed() {
        let pods = [
            pod("a", Some("0")),
            pod("b", Some("0")),
            pod("c", Some("1")),
            pod("d", None),
            pod("e", Some("7")),
            pod("f", Some("-1")),
        ];
        // Sort by name: the last of a group is the one kept.
        let (remove, keep) = duplicates(&pods, 3, |p| p.sort_by_key(|p| p.metadata.name.clone()));
        let names = |v: &[Arc<Pod>]| {
            let mut n: Vec<String> = v.iter().filter_map(|p| p.metadata.name.clone()).collect();
            n.sort();
            n
        };
        assert_eq!(names(&remove), ["a", "d", "e", "f"]);
        assert_eq!(names(&keep), ["b", "c"]);
    }
}
