//! The register model of an etcd-like key-value store, and [`check_kv`]:
//! a history checked key by key (P-compositionality).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::linearizability::{Model, Operation, Verdict, check};

/// An operation on an etcd-like key-value store, as far as the register model
/// is concerned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Read the key's value.
    Read {
        /// The key.
        key: String,
    },
    /// Set the key's value.
    Write {
        /// The key.
        key: String,
        /// The new value.
        value: u64,
    },
    /// Set the key's value to `value` iff its current value is `expected`
    /// (None: iff the key does not exist).
    Cas {
        /// The key.
        key: String,
        /// The value required (None: the key must be absent).
        expected: Option<u64>,
        /// The new value.
        value: u64,
    },
}

impl KvInput {
    /// The key the operation is on.
    pub fn key(&self) -> &str {
        match self {
            KvInput::Read { key } | KvInput::Write { key, .. } | KvInput::Cas { key, .. } => key,
        }
    }
}

/// What a [`KvInput`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOutput {
    /// The value read (None: the key was absent).
    Read(Option<u64>),
    /// The write was acknowledged.
    Write,
    /// Whether the compare-and-swap took effect.
    Cas(bool),
}

/// The sequential specification of one key of a key-value store: a register
/// holding an optional value, initially absent. The key in the inputs is
/// ignored; [`check_kv`] partitions a history by key before using it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Register;

impl Model for Register {
    type State = Option<u64>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Option<u64> {
        None
    }

    fn is_read_only(&self, input: &KvInput, output: Option<&KvOutput>) -> bool {
        matches!(
            (input, output),
            (KvInput::Read { .. }, _) | (KvInput::Cas { .. }, Some(KvOutput::Cas(false)))
        )
    }

    fn step(
        &self,
        state: &Option<u64>,
        input: &KvInput,
        output: Option<&KvOutput>,
    ) -> Option<Option<u64>> {
        match (input, output) {
            (KvInput::Read { .. }, Some(KvOutput::Read(seen))) => (seen == state).then_some(*state),
            (KvInput::Read { .. }, None) => Some(*state),
            (KvInput::Write { value, .. }, Some(KvOutput::Write) | None) => Some(Some(*value)),
            (
                KvInput::Cas {
                    expected, value, ..
                },
                Some(KvOutput::Cas(true)),
            ) => (expected == state).then_some(Some(*value)),
            (KvInput::Cas { expected, .. }, Some(KvOutput::Cas(false))) => {
                (expected != state).then_some(*state)
            }
            // Unknown outcome. A compare-and-swap is deterministic once it
            // executes: it succeeds iff the condition holds. The only other
            // possibility is that it never executed at all, which is the same
            // as linearizing it at +infinity (where its return is), after
            // every other operation, where its effect cannot be observed. So
            // "apply iff the condition holds" covers every real behaviour
            // (complete), and is one a real compare-and-swap has (sound).
            (
                KvInput::Cas {
                    expected, value, ..
                },
                None,
            ) => Some(if expected == state {
                Some(*value)
            } else {
                *state
            }),
            // An output of the wrong kind cannot be explained.
            _ => None,
        }
    }
}

/// The outcome of [`check_kv`].
#[derive(Clone, Debug, Default)]
pub struct KvReport {
    /// Operations checked (after dropping the reads with an unknown outcome).
    pub operations: usize,
    /// Keys checked.
    pub keys: usize,
    /// One per non-linearizable key, in key order.
    pub violations: Vec<KvViolation>,
    /// Keys whose search exceeded the budget, in key order.
    pub unknown_keys: Vec<String>,
}

/// A key whose history is not linearizable.
#[derive(Clone, Debug)]
pub struct KvViolation {
    /// The key.
    pub key: String,
    /// A human-readable, multi-line account: the end of the longest
    /// linearizable prefix found, then the operations that could not follow it.
    pub explanation: String,
}

/// Checks a key-value history, one key at a time (a history of independent
/// registers is linearizable iff each key's sub-history is), with a budget of
/// search steps per key. Reads with an unknown outcome are dropped first:
/// they have no effect and nothing to check.
pub fn check_kv(history: &[Operation<KvInput, KvOutput>], budget_per_key: u64) -> KvReport {
    let mut by_key: BTreeMap<&str, Vec<Operation<KvInput, KvOutput>>> = BTreeMap::new();
    let mut operations = 0;
    for op in history {
        if matches!(op.input, KvInput::Read { .. }) && op.output.is_none() {
            continue;
        }
        by_key.entry(op.input.key()).or_default().push(op.clone());
        operations += 1;
    }
    let mut report = KvReport {
        operations,
        keys: by_key.len(),
        ..KvReport::default()
    };
    for (key, ops) in by_key {
        match check(&Register, &ops, budget_per_key) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { linearized, stuck } => report.violations.push(KvViolation {
                key: key.to_owned(),
                explanation: explain(key, &ops, &linearized, &stuck),
            }),
            Verdict::Unknown => report.unknown_keys.push(key.to_owned()),
        }
    }
    report
}

/// How many operations of the prefix, and of the stuck ones, an explanation shows.
const SHOWN: usize = 8;

fn explain(
    key: &str,
    ops: &[Operation<KvInput, KvOutput>],
    linearized: &[usize],
    stuck: &[usize],
) -> String {
    let mut value = Register.init();
    for &i in linearized {
        match ops
            .get(i)
            .and_then(|op| Register.step(&value, &op.input, op.output.as_ref()))
        {
            Some(after) => value = after,
            None => break,
        }
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "key {key:?}: no sequential order explains its {} operations.",
        ops.len()
    );
    let shown = linearized.len().min(SHOWN);
    let _ = write!(
        text,
        "Longest linearizable prefix: {} operation{}",
        linearized.len(),
        if linearized.len() == 1 { "" } else { "s" }
    );
    if shown < linearized.len() {
        let _ = write!(text, ", the last {shown} shown");
    }
    let _ = writeln!(text, " (value after it: {}):", show_value(value));
    if shown < linearized.len() {
        let _ = writeln!(text, "  ...");
    }
    for &i in &linearized[linearized.len() - shown..] {
        if let Some(op) = ops.get(i) {
            let _ = writeln!(text, "  {}", describe(op));
        }
    }
    let _ = writeln!(
        text,
        "Stuck: none of these can come next (the first returned before any could):"
    );
    for &i in stuck.iter().take(SHOWN) {
        if let Some(op) = ops.get(i) {
            let _ = writeln!(text, "  {}", describe(op));
        }
    }
    if stuck.len() > SHOWN {
        let _ = writeln!(text, "  ... and {} more", stuck.len() - SHOWN);
    }
    text
}

fn show_value(value: Option<u64>) -> String {
    value.map_or_else(|| "absent".to_owned(), |v| v.to_string())
}

/// Nanoseconds as milliseconds with three decimals.
fn show_ms(ns: u64) -> String {
    format!("{}.{:03} ms", ns / 1_000_000, ns / 1_000 % 1_000)
}

/// One line of an explanation, e.g.
/// `client 3  [12.345 ms .. 13.001 ms]  write 17 -> ok`.
pub(crate) fn describe(op: &Operation<KvInput, KvOutput>) -> String {
    let what = match &op.input {
        KvInput::Read { .. } => "read".to_owned(),
        KvInput::Write { value, .. } => format!("write {value}"),
        KvInput::Cas {
            expected, value, ..
        } => format!("cas {}→{value}", show_value(*expected)),
    };
    let (until, result) = match &op.output {
        None => ("∞".to_owned(), "?".to_owned()),
        Some(out) => (
            show_ms(op.ret.max(op.call)),
            match out {
                KvOutput::Read(v) => show_value(*v),
                KvOutput::Write => "ok".to_owned(),
                KvOutput::Cas(ok) => ok.to_string(),
            },
        ),
    };
    format!(
        "client {}  [{} .. {until}]  {what} -> {result}",
        op.client,
        show_ms(op.call)
    )
}
