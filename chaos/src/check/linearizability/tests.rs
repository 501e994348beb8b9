use super::*;
use crate::check::kv::*;
use std::collections::BTreeMap;
use std::time::Instant;

type Op = Operation<KvInput, KvOutput>;

const BUDGET: u64 = 10_000_000;

fn read(client: usize, key: &str, seen: Option<u64>, call: u64, ret: u64) -> Op {
    Operation {
        client,
        input: KvInput::Read { key: key.into() },
        call,
        output: Some(KvOutput::Read(seen)),
        ret,
    }
}

fn write(client: usize, key: &str, value: u64, call: u64, ret: u64) -> Op {
    Operation {
        client,
        input: KvInput::Write {
            key: key.into(),
            value,
        },
        call,
        output: Some(KvOutput::Write),
        ret,
    }
}

fn lost_write(client: usize, key: &str, value: u64, call: u64) -> Op {
    Operation {
        output: None,
        ..write(client, key, value, call, 0)
    }
}

fn cas(
    client: usize,
    key: &str,
    expected: Option<u64>,
    value: u64,
    ok: Option<bool>,
    call: u64,
    ret: u64,
) -> Op {
    Operation {
        client,
        input: KvInput::Cas {
            key: key.into(),
            expected,
            value,
        },
        call,
        output: ok.map(KvOutput::Cas),
        ret,
    }
}

fn verdict(history: &[Op]) -> Verdict {
    check(&Register, history, BUDGET)
}

fn assert_linearizable(history: &[Op]) {
    assert_eq!(verdict(history), Verdict::Linearizable, "{history:#?}");
}

fn assert_not_linearizable(history: &[Op]) -> (Vec<usize>, Vec<usize>) {
    match verdict(history) {
        Verdict::NotLinearizable { linearized, stuck } => {
            assert!(!stuck.is_empty());
            (linearized, stuck)
        }
        other => panic!("expected NotLinearizable, got {other:?} for {history:#?}"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    assert_eq!(verdict(&[]), Verdict::Linearizable);
    assert_eq!(check(&Register, &[], 0), Verdict::Linearizable);
    let report = check_kv(&[], BUDGET);
    assert_eq!((report.operations, report.keys), (0, 0));
    assert!(report.violations.is_empty() && report.unknown_keys.is_empty());
}

#[test]
fn write_then_read() {
    assert_linearizable(&[write(0, "x", 1, 0, 10), read(1, "x", Some(1), 20, 30)]);
    // Reading nothing after the write returned is not.
    let (linearized, stuck) =
        assert_not_linearizable(&[write(0, "x", 1, 0, 10), read(1, "x", None, 20, 30)]);
    assert_eq!((linearized, stuck), (vec![0], vec![1]));
}

#[test]
fn read_before_any_write_sees_nothing() {
    assert_linearizable(&[read(0, "x", None, 0, 10), write(0, "x", 1, 20, 30)]);
    assert_not_linearizable(&[read(0, "x", Some(1), 0, 10), write(0, "x", 1, 20, 30)]);
}

#[test]
fn concurrent_read_may_see_old_or_new() {
    for seen in [None, Some(1)] {
        assert_linearizable(&[write(0, "x", 1, 0, 100), read(1, "x", seen, 10, 50)]);
        assert_linearizable(&[read(1, "x", seen, 0, 50), write(0, "x", 1, 10, 100)]);
    }
}

#[test]
fn touching_intervals_count_as_concurrent() {
    // The read is called at the instant the write returns: calls sort
    // before returns at equal times, so either order is allowed.
    assert_linearizable(&[write(0, "x", 1, 0, 10), read(1, "x", None, 10, 20)]);
    assert_linearizable(&[write(0, "x", 1, 0, 10), read(1, "x", Some(1), 10, 20)]);
}

#[test]
fn stale_read_after_overwrite_is_not_linearizable() {
    // W(1) completes, W(2) completes, then a read (from an old leader,
    // say) returns 1.
    let history = [
        write(0, "x", 1, 0, 10),
        write(1, "x", 2, 20, 30),
        read(2, "x", Some(1), 40, 50),
    ];
    let (linearized, stuck) = assert_not_linearizable(&history);
    assert_eq!(linearized, vec![0, 1]);
    assert_eq!(stuck, vec![2]);
    // The same read overlapping the second write is fine.
    let mut overlapping = history.clone();
    overlapping[2].call = 25;
    assert_linearizable(&overlapping);
}

#[test]
fn read_of_a_value_never_written() {
    let (_, stuck) = assert_not_linearizable(&[
        write(0, "x", 1, 0, 100),
        write(1, "x", 2, 10, 110),
        read(2, "x", Some(3), 20, 120),
    ]);
    assert_eq!(stuck[0], 2);
}

#[test]
fn unknown_write_read_later() {
    // The write timed out but took effect: the later read explains it.
    assert_linearizable(&[
        write(0, "x", 1, 0, 10),
        lost_write(1, "x", 2, 20),
        read(2, "x", Some(2), 1_000, 1_010),
        read(2, "x", Some(2), 2_000, 2_010),
    ]);
    // It can take effect long after its call, between two reads.
    assert_linearizable(&[
        lost_write(1, "x", 2, 0),
        read(2, "x", None, 1_000, 1_010),
        read(2, "x", Some(2), 2_000, 2_010),
    ]);
    // But not before it was called.
    assert_not_linearizable(&[read(2, "x", Some(2), 0, 10), lost_write(1, "x", 2, 20)]);
}

#[test]
fn unknown_write_never_read() {
    // The write may never have happened: reads keep seeing the old value.
    assert_linearizable(&[
        write(0, "x", 1, 0, 10),
        lost_write(1, "x", 2, 20),
        read(2, "x", Some(1), 1_000, 1_010),
        write(0, "x", 3, 2_000, 2_010),
        read(2, "x", Some(3), 3_000, 3_010),
    ]);
    // Its return time is ignored: a bogus one does not matter.
    let mut lost = lost_write(1, "x", 2, 20);
    lost.ret = 5;
    assert_linearizable(&[write(0, "x", 1, 0, 10), lost, read(2, "x", Some(1), 30, 40)]);
}

#[test]
fn unknown_cas_that_must_have_succeeded() {
    assert_linearizable(&[
        write(0, "x", 1, 0, 10),
        cas(1, "x", Some(1), 2, None, 20, 30),
        read(2, "x", Some(2), 100, 110),
    ]);
    // It could not have, if its condition never held.
    assert_not_linearizable(&[
        write(0, "x", 1, 0, 10),
        cas(1, "x", Some(7), 2, None, 20, 30),
        read(2, "x", Some(2), 100, 110),
    ]);
    // And an unknown one that failed (or never ran) is fine too.
    assert_linearizable(&[
        write(0, "x", 1, 0, 10),
        cas(1, "x", Some(7), 2, None, 20, 30),
        read(2, "x", Some(1), 100, 110),
    ]);
}

#[test]
fn cas_outcomes_must_match_the_value() {
    // Creation on an absent key, then a successful swap.
    assert_linearizable(&[
        cas(0, "x", None, 1, Some(true), 0, 10),
        cas(1, "x", Some(1), 2, Some(true), 20, 30),
        cas(2, "x", None, 3, Some(false), 40, 50),
        read(0, "x", Some(2), 60, 70),
    ]);
    // Reported true though the expected value could not have been current.
    let (linearized, stuck) = assert_not_linearizable(&[
        write(0, "x", 1, 0, 10),
        write(1, "x", 2, 20, 30),
        cas(2, "x", Some(1), 3, Some(true), 40, 50),
    ]);
    assert_eq!((linearized, stuck), (vec![0, 1], vec![2]));
    // Reported false though the expected value was current.
    assert_not_linearizable(&[
        write(0, "x", 1, 0, 10),
        cas(2, "x", Some(1), 3, Some(false), 40, 50),
    ]);
    // An output of the wrong kind is never explained.
    let mut odd = write(0, "x", 1, 0, 10);
    odd.output = Some(KvOutput::Cas(true));
    assert_not_linearizable(&[odd]);
}

#[test]
fn three_clients_linearizable() {
    // A Porcupine-style interleaving that needs backtracking: the first
    // write called is not the first linearized.
    //   c0: |--- w1 ---------------------|
    //   c1:    |--- w2 ------|
    //   c2:       |- r -> 2 -|  |- r -> 1 -|   |- r -> 1 -|
    assert_linearizable(&[
        write(0, "x", 1, 0, 100),
        write(1, "x", 2, 10, 50),
        read(2, "x", Some(2), 20, 40),
        read(2, "x", Some(1), 60, 90),
        read(2, "x", Some(1), 110, 120),
    ]);
    // Reads overlapping a write may see old then new.
    assert_linearizable(&[
        write(0, "x", 1, 0, 100),
        read(1, "x", None, 10, 20),
        read(2, "x", Some(1), 30, 40),
        read(1, "x", Some(1), 50, 60),
    ]);
}

#[test]
fn three_clients_new_then_old_is_not_linearizable() {
    //   c0: |--------- w1 ---------|
    //   c1:   |- r -> 1 -|
    //   c2:                |- r -> none -|   (starts after the first read returned)
    let (linearized, stuck) = assert_not_linearizable(&[
        write(0, "x", 1, 0, 100),
        read(1, "x", Some(1), 10, 20),
        read(2, "x", None, 30, 40),
    ]);
    assert_eq!(linearized.len(), 2);
    assert!(stuck.contains(&1) || stuck.contains(&2), "{stuck:?}");
}

#[test]
fn check_kv_partitions_by_key() {
    let history = [
        write(0, "a", 1, 0, 10),
        write(1, "b", 1, 5, 15),
        write(0, "a", 2, 20, 30),
        write(1, "b", 2, 25, 35),
        read(2, "a", Some(2), 40, 50),
        // Stale on "b" only.
        read(3, "b", Some(1), 12_345_000, 13_001_000),
        // Dropped: an unknown read.
        Operation {
            output: None,
            ..read(2, "b", None, 60, 70)
        },
    ];
    let report = check_kv(&history, BUDGET);
    assert_eq!(report.operations, 6);
    assert_eq!(report.keys, 2);
    assert!(report.unknown_keys.is_empty());
    assert_eq!(report.violations.len(), 1, "{report:#?}");
    let violation = &report.violations[0];
    assert_eq!(violation.key, "b");
    let text = &violation.explanation;
    assert!(text.contains("key \"b\""), "{text}");
    assert!(text.contains("Longest linearizable prefix: 2 operations (value after it: 2)"));
    let stuck_part = text.split("Stuck:").nth(1).unwrap_or_default();
    assert!(
        stuck_part.contains("client 3  [12.345 ms .. 13.001 ms]  read -> 1"),
        "{text}"
    );
    assert!(text.contains("client 1  [0.000 ms .. 0.000 ms]  write 2 -> ok"));
    assert!(!text.contains("client 0"), "{text}");
}

#[test]
fn explanation_lines() {
    let op = cas(3, "k", Some(5), 9, Some(false), 12_345_678, 13_001_999);
    assert_eq!(
        describe(&op),
        "client 3  [12.345 ms .. 13.001 ms]  cas 5→9 -> false"
    );
    assert_eq!(
        describe(&lost_write(1, "k", 4, 2_000_000)),
        "client 1  [2.000 ms .. ∞]  write 4 -> ?"
    );
    assert_eq!(
        describe(&read(0, "k", None, 0, 1_000_000_000)),
        "client 0  [0.000 ms .. 1000.000 ms]  read -> absent"
    );
    assert_eq!(
        describe(&cas(2, "k", None, 1, Some(true), 0, 0)),
        "client 2  [0.000 ms .. 0.000 ms]  cas absent→1 -> true"
    );
}

#[test]
fn long_prefix_is_shortened_in_explanations() {
    let mut history: Vec<Op> = (0..20)
        .map(|i| write(0, "k", i, i * 10, i * 10 + 5))
        .collect();
    history.push(read(1, "k", Some(3), 1_000, 1_005));
    let report = check_kv(&history, BUDGET);
    assert_eq!(report.violations.len(), 1);
    let text = &report.violations[0].explanation;
    assert!(
        text.contains("20 operations, the last 8 shown (value after it: 19)"),
        "{text}"
    );
    assert_eq!(text.lines().filter(|l| l.contains("write")).count(), 8);
    assert!(text.contains("read -> 3"));
}

#[test]
fn return_before_call_is_taken_as_the_call() {
    assert_linearizable(&[write(0, "x", 1, 50, 10), read(1, "x", Some(1), 60, 70)]);
    assert_not_linearizable(&[write(0, "x", 1, 50, 10), read(1, "x", None, 60, 70)]);
    // Extreme times do not overflow anything.
    assert_linearizable(&[
        write(0, "x", 1, u64::MAX, u64::MAX),
        lost_write(1, "x", 2, u64::MAX),
        read(2, "x", None, 0, u64::MAX),
    ]);
}

#[test]
fn budget_exhaustion_returns_unknown() {
    let history = [
        write(0, "x", 1, 0, 100),
        write(1, "x", 2, 10, 50),
        read(2, "x", Some(2), 20, 40),
        read(2, "x", Some(1), 60, 90),
    ];
    assert_eq!(check(&Register, &history, 1), Verdict::Unknown);
    assert_eq!(check(&Register, &history, BUDGET), Verdict::Linearizable);
    let report = check_kv(&history, 1);
    assert_eq!(report.unknown_keys, vec!["x".to_owned()]);
    assert!(report.violations.is_empty());
}

/// xorshift64: deterministic and good enough to generate histories.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A linearizable history: `clients` clients each run `per_client`
/// operations one after another on `keys`; each operation takes effect
/// at a random instant within its interval (an unknown-outcome one,
/// `lost_permille` of them, maybe never), and outputs come from
/// replaying the effects in that order.
fn random_history(
    seed: u64,
    clients: usize,
    per_client: usize,
    keys: &[&str],
    lost_permille: u64,
) -> Vec<Op> {
    let mut rng = Rng(seed);
    let mut history = Vec::new();
    let mut effects = Vec::new(); // (instant, index)
    let mut next_value = 1;
    for client in 0..clients {
        let mut now = rng.below(10_000);
        for _ in 0..per_client {
            let call = now + rng.below(20_000);
            let ret = call + 1_000 + rng.below(200_000);
            now = ret;
            let key = keys[rng.below(keys.len() as u64) as usize].to_owned();
            let input = match rng.below(10) {
                0..5 => KvInput::Read { key },
                5..8 => KvInput::Write {
                    key,
                    value: next_value,
                },
                // `expected` is decided while replaying (a lost Cas that
                // never runs keeps None: any value will do).
                _ => KvInput::Cas {
                    key,
                    expected: None,
                    value: next_value,
                },
            };
            next_value += 1;
            let lost = rng.below(1_000) < lost_permille;
            let index = history.len();
            if !lost || rng.below(2) == 0 {
                effects.push((call + rng.below(ret - call + 1), index));
            }
            history.push(Operation {
                client,
                input,
                call,
                output: (!lost).then_some(KvOutput::Write),
                ret,
            });
        }
    }
    effects.sort_unstable();
    let mut values: BTreeMap<String, u64> = BTreeMap::new();
    for (_, index) in effects {
        let op = &mut history[index];
        let output = match &mut op.input {
            KvInput::Read { key } => KvOutput::Read(values.get(key).copied()),
            KvInput::Write { key, value } => {
                values.insert(key.clone(), *value);
                KvOutput::Write
            }
            KvInput::Cas {
                key,
                expected,
                value,
            } => {
                let current = values.get(key).copied();
                *expected = match rng.below(3) {
                    0 | 1 => current,
                    _ => Some(rng.below(next_value)),
                };
                let ok = *expected == current;
                if ok {
                    values.insert(key.clone(), *value);
                }
                KvOutput::Cas(ok)
            }
        };
        if op.output.is_some() {
            op.output = Some(output);
        }
    }
    history
}

#[test]
fn random_linearizable_history_then_corrupted() {
    let mut history = random_history(0x9E37_79B9_7F4A_7C15, 8, 250, &["x"], 20);
    assert_eq!(history.len(), 2_000);
    let start = Instant::now();
    assert_eq!(verdict(&history), Verdict::Linearizable);
    eprintln!(
        "2,000 operations, 8 clients, one key: {:?}",
        start.elapsed()
    );

    // Corrupt one read, in the middle, to a value never written.
    let corrupted = (history.len() / 2..history.len())
        .find(|&i| matches!(history[i].output, Some(KvOutput::Read(_))))
        .unwrap();
    history[corrupted].output = Some(KvOutput::Read(Some(u64::MAX)));
    let start = Instant::now();
    let (linearized, stuck) = assert_not_linearizable(&history);
    eprintln!("... corrupted: {:?}", start.elapsed());
    assert!(!linearized.contains(&corrupted));
    assert!(stuck.contains(&corrupted), "{stuck:?}");
}

#[test]
fn random_multi_key_histories_with_check_kv() {
    for seed in 1..=5 {
        let history = random_history(seed, 6, 200, &["a", "b", "c"], 50);
        let report = check_kv(&history, BUDGET);
        assert!(report.violations.is_empty(), "seed {seed}: {report:#?}");
        assert!(report.unknown_keys.is_empty());
        assert_eq!(report.keys, 3);
        assert!(report.operations <= history.len());
    }
}

/// The register without the read shortcut: the plain search.
struct PlainRegister;

impl Model for PlainRegister {
    type State = Option<u64>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Option<u64> {
        None
    }

    fn step(
        &self,
        state: &Option<u64>,
        input: &KvInput,
        output: Option<&KvOutput>,
    ) -> Option<Option<u64>> {
        Register.step(state, input, output)
    }
}

/// Linearizability by brute force: every order of the operations that
/// respects real time, where an operation with an unknown outcome may
/// also never have happened at all, and a compare-and-swap that happened
/// succeeded iff its condition held.
fn brute_force(history: &[Op]) -> bool {
    fn returned(op: &Op) -> Option<u64> {
        op.output.as_ref().map(|_| op.ret.max(op.call))
    }
    fn search(history: &[Op], left: &mut Vec<usize>, state: Option<u64>) -> bool {
        if left.iter().all(|&i| history[i].output.is_none()) {
            return true;
        }
        for k in 0..left.len() {
            let i = left[k];
            // Nothing left may have returned before this is called.
            if left
                .iter()
                .any(|&j| returned(&history[j]).is_some_and(|r| r < history[i].call))
            {
                continue;
            }
            let op = &history[i];
            let after = match (&op.input, &op.output) {
                (KvInput::Read { .. }, Some(KvOutput::Read(v))) => (*v == state).then_some(state),
                (KvInput::Read { .. }, None) => Some(state),
                (KvInput::Write { value, .. }, Some(KvOutput::Write) | None) => Some(Some(*value)),
                (
                    KvInput::Cas {
                        expected, value, ..
                    },
                    out,
                ) => {
                    let holds = *expected == state;
                    match out {
                        Some(KvOutput::Cas(ok)) => {
                            (*ok == holds).then_some(if holds { Some(*value) } else { state })
                        }
                        None => Some(if holds { Some(*value) } else { state }),
                        Some(_) => None,
                    }
                }
                _ => None,
            };
            // An unknown outcome may also mean it never happened.
            let skip = op.output.is_none();
            left.remove(k);
            let found = after.is_some_and(|after| search(history, left, after))
                || (skip && search(history, left, state));
            left.insert(k, i);
            if found {
                return true;
            }
        }
        false
    }
    search(history, &mut (0..history.len()).collect(), None)
}

/// Whether `linearized` is a valid prefix: real-time order respected
/// (nothing outside it returned before one of it was called, nothing in
/// it was called after a later one in it returned), and the model
/// explains it.
fn valid_prefix(history: &[Op], linearized: &[usize]) -> bool {
    let mut state = None;
    for (k, &i) in linearized.iter().enumerate() {
        let op = &history[i];
        let before_it_returned = |j: usize| {
            let o = &history[j];
            o.output.is_some() && o.ret.max(o.call) < op.call
        };
        if (0..history.len())
            .any(|j| !linearized[..k].contains(&j) && j != i && before_it_returned(j))
        {
            return false;
        }
        match Register.step(&state, &op.input, op.output.as_ref()) {
            Some(after) => state = after,
            None => return false,
        }
    }
    true
}

#[test]
fn agrees_with_brute_force_on_small_random_histories() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let (mut yes, mut no) = (0, 0);
    for round in 0..4_000 {
        let n = 1 + rng.below(7) as usize;
        let value = |rng: &mut Rng| 1 + rng.below(3);
        let maybe = |rng: &mut Rng| match rng.below(4) {
            0 => None,
            _ => Some(1 + rng.below(3)),
        };
        let history: Vec<Op> = (0..n)
            .map(|k| {
                let call = rng.below(20);
                // Sometimes before the call: taken as the call.
                let ret = if rng.below(20) == 0 {
                    rng.below(20)
                } else {
                    call + rng.below(10)
                };
                let unknown = rng.below(6) == 0;
                let (input, output) = match rng.below(3) {
                    0 => (
                        KvInput::Read { key: "x".into() },
                        KvOutput::Read(maybe(&mut rng)),
                    ),
                    1 => (
                        KvInput::Write {
                            key: "x".into(),
                            value: value(&mut rng),
                        },
                        KvOutput::Write,
                    ),
                    _ => (
                        KvInput::Cas {
                            key: "x".into(),
                            expected: maybe(&mut rng),
                            value: value(&mut rng),
                        },
                        KvOutput::Cas(rng.below(2) == 0),
                    ),
                };
                Operation {
                    client: k,
                    input,
                    call,
                    output: (!unknown).then_some(output),
                    ret,
                }
            })
            .collect();
        let expected = brute_force(&history);
        let fast = check(&Register, &history, BUDGET);
        let plain = check(&PlainRegister, &history, BUDGET);
        match &fast {
            Verdict::Linearizable => yes += 1,
            Verdict::NotLinearizable { linearized, stuck } => {
                no += 1;
                assert!(!stuck.is_empty(), "round {round}");
                assert!(
                    valid_prefix(&history, linearized),
                    "round {round}: {linearized:?} {history:#?}"
                );
                assert!(stuck.iter().all(|i| !linearized.contains(i)));
            }
            Verdict::Unknown => panic!("round {round}: budget"),
        }
        assert_eq!(
            fast == Verdict::Linearizable,
            expected,
            "round {round}: {history:#?}"
        );
        assert_eq!(
            plain == Verdict::Linearizable,
            expected,
            "round {round}: {history:#?}"
        );
    }
    // Both kinds were exercised.
    assert!(yes > 500 && no > 500, "{yes} linearizable, {no} not");
}

#[test]
fn ten_thousand_operations_ten_clients_one_key() {
    let history = random_history(42, 10, 1_000, &["x"], 5);
    let start = Instant::now();
    assert_eq!(verdict(&history), Verdict::Linearizable);
    eprintln!(
        "10,000 operations, 10 clients, one key: {:?}",
        start.elapsed()
    );
}
