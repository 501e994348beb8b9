//! Linearizability checking of recorded client histories.
//!
//! A history is linearizable when every operation can be given a single
//! instant, somewhere between its call and its return, such that performing
//! the operations one at a time in the order of those instants, against a
//! sequential specification (a [`Model`]), yields exactly the results the
//! clients saw.
//!
//! # The search (Wing & Gong, with Lowe's memoization)
//!
//! Every operation becomes two entries, its call and its return, and all
//! entries go into one doubly linked list sorted by time (calls before
//! returns at equal times, so that touching operations count as concurrent;
//! an operation whose outcome is unknown returns at +infinity):
//!
//! ```text
//!   client 0:  |------ write 1 ------|
//!   client 1:      |-- read -> 1 --|
//!   client 2:                          |-- read -> none --|
//!
//!   head -> call(w1) -> call(r1) -> ret(r1) -> ret(w1) -> call(r2) -> ret(r2)
//! ```
//!
//! The search walks the list from its head, carrying the model's state:
//!
//! - at a **call** entry it tries to linearize that operation next: if the
//!   model accepts it (the operation could have returned what it returned in
//!   the current state), and this (set of linearized operations, state) pair
//!   has not been explored before, both of the operation's entries are lifted
//!   out of the list, the old state is pushed on a stack, and the walk
//!   restarts from the head. Otherwise the walk moves on to the next entry,
//!   trying the next concurrent operation instead;
//! - at a **return** entry the walk is stuck: that operation returned, yet it
//!   has not been linearized, and nothing after its return may go first. The
//!   last choice is undone (its entries are put back, the state restored) and
//!   the walk goes on with the operation after the undone one.
//!
//! The history is linearizable as soon as the list is empty, and is not when
//! the walk is stuck with nothing left to undo. In the sketch above:
//! `write 1` first, then `read -> 1`; `read -> none` is refused (the value is
//! 1), the walk reaches `ret(r2)` and backtracks; `read -> 1` cannot go first
//! (it would read nothing), and `write 1` cannot be put anywhere else, so the
//! history is not linearizable.
//!
//! Memoizing the (linearized set, state) pairs already explored (Lowe) keeps
//! the search from exploring the same situation twice, which is what makes it
//! practical; the worst case is still exponential, hence the step budget.
//! Two refinements keep it fast on register-like histories: the linearized
//! set is stored in the memo compactly (the highest linearized operation and
//! the pending ones below it, rather than a bitset over the whole history),
//! and an operation the model declares read-only ([`Model::is_read_only`])
//! is linearized as soon as the current state explains it, with no
//! alternative tried (doing so never loses a linearization).
//!
//! Checking a key-value store is P-compositional (Horn & Kroening): a
//! history is linearizable iff its sub-history on each key is, so
//! [`check_kv`] checks each key on its own, which keeps each search small.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};

/// One operation of a history, as a client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Which client ran it (only used to explain a violation).
    pub client: usize,
    /// What was asked.
    pub input: I,
    /// When it was invoked (any monotonic unit, e.g. ns since the run began).
    pub call: u64,
    /// What it returned; None when its outcome is unknown (timed out, connection lost):
    /// it may or may not have taken effect. Such an operation's return time is +infinity.
    pub output: Option<O>,
    /// When it returned; ignored (treated as +infinity) when `output` is None.
    pub ret: u64,
}

/// A sequential specification.
pub trait Model {
    /// The state of the specified object.
    type State: Clone + Eq + std::hash::Hash + std::fmt::Debug;
    /// What an operation asks.
    type Input: std::fmt::Debug;
    /// What an operation returns.
    type Output: std::fmt::Debug;
    /// The state before any operation.
    fn init(&self) -> Self::State;
    /// The state after applying `input` in `state`, if the operation could have
    /// returned `output` there (None output = unknown outcome: any result is acceptable,
    /// but the state change must still be one the operation could make).
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// Whether the operation, given what it returned, never changes the state
    /// (a read, or a compare-and-swap that reported failure): `step` returns
    /// the state unchanged whenever it accepts it. False by default, which is
    /// always correct; saying true when it is so makes the search much faster
    /// (saying it of an operation that can change the state would make the
    /// verdicts wrong).
    ///
    /// Such an operation, when the current state explains it and it may come
    /// next, is linearized at once and no alternative is tried: if any
    /// linearization exists, so does one with it moved to the front, since
    /// it neither changes the state for the operations it jumps over nor
    /// (being callable now, before any pending return) breaks real-time order.
    fn is_read_only(&self, input: &Self::Input, output: Option<&Self::Output>) -> bool {
        let _ = (input, output);
        false
    }
}

/// What [`check`] concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some sequential order explains every operation.
    Linearizable,
    /// None does. `stuck` lists the indexes (into the checked history) of the operations whose
    /// return the search could never get past in the longest linearizable prefix it found,
    /// and `linearized` the indexes of that longest prefix in order — enough to print a
    /// readable explanation.
    ///
    /// The first index of `stuck` is the operation whose return blocked the search; the
    /// others are the operations that were pending (called before that return, not in the
    /// prefix), in call order: none of them could be linearized next either.
    NotLinearizable {
        /// The longest linearizable prefix found, in linearization order.
        linearized: Vec<usize>,
        /// The blocking operation, then the other pending ones.
        stuck: Vec<usize>,
    },
    /// The search gave up after `budget` steps (exponential worst case).
    Unknown,
}

/// The list's sentinels; operation `rank` has its call entry at node
/// `FIRST + 2 * rank` and its return entry at the node after.
const HEAD: usize = 0;
const TAIL: usize = 1;
const FIRST: usize = 2;

fn is_call(node: usize) -> bool {
    (node - FIRST).is_multiple_of(2)
}

fn rank_of(node: usize) -> usize {
    (node - FIRST) / 2
}

/// The call and return entries of the not yet linearized operations, as a
/// doubly linked list over vectors of indexes. Operations are numbered by
/// rank, their position in call order, so the call entries in the list are
/// always in rank order.
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl Entries {
    fn remove(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    /// Puts back a removed node: its own links still point at its old
    /// neighbours, as removals are undone in reverse order.
    fn restore(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }

    /// Removes an operation (given its call entry) from the list.
    fn lift(&mut self, call: usize) {
        self.remove(call);
        self.remove(call + 1);
    }

    /// Undoes [`Entries::lift`].
    fn unlift(&mut self, call: usize) {
        self.restore(call + 1);
        self.restore(call);
    }

    /// The first entry that is not a call (a return, or the tail).
    fn first_return(&self) -> usize {
        let mut node = self.next[HEAD];
        while node != TAIL && is_call(node) {
            node = self.next[node];
        }
        node
    }

    /// The ranks below `high` still in the list, except `skip`; see [`SetKey`].
    fn holes(&self, high: usize, skip: usize) -> Box<[usize]> {
        let mut holes = Vec::new();
        let mut node = self.next[HEAD];
        while node != TAIL {
            if is_call(node) {
                let rank = rank_of(node);
                if rank >= high {
                    break;
                }
                if rank != skip {
                    holes.push(rank);
                }
            }
            node = self.next[node];
        }
        holes.into_boxed_slice()
    }
}

/// A set of linearized operations (by rank), stored compactly for the memo:
/// every rank up to `high` (the largest one in the set) except the `holes`.
///
/// This is a canonical encoding of the set (equal sets, equal keys), like a
/// bitset over the whole history, but its size is the number of operations
/// still pending below the highest linearized one — about the number of
/// concurrent clients, plus unknown-outcome operations not yet placed —
/// instead of the length of the history. It is computed by walking the list
/// from its head: every entry met before the first call above `high` belongs
/// to a hole.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SetKey {
    high: usize,
    holes: Box<[usize]>,
}

/// The memo's hasher: a multiply-rotate hash (as in Firefox and rustc) with a
/// final mix. The keys are small integers, not attacker-chosen, and the
/// default SipHash made the whole search about 40% slower.
#[derive(Clone, Copy, Default)]
struct MemoHasher(u64);

impl Hasher for MemoHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        // The finalizer of MurmurHash3: spreads the entropy to the low bits,
        // which pick the bucket.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

/// One choice of the search: the operation linearized (its call entry), the
/// state before it, the highest rank linearized so far (this one included),
/// and whether it was a read taken without alternatives (see
/// [`Model::is_read_only`]).
struct Frame<S> {
    call: usize,
    before: S,
    high: usize,
    forced: bool,
}

/// The state of one search.
struct Search<'a, M: Model> {
    model: &'a M,
    history: &'a [Operation<M::Input, M::Output>],
    /// History indexes by rank.
    by_call: Vec<usize>,
    list: Entries,
    state: M::State,
    stack: Vec<Frame<M::State>>,
    memo: HashSet<(SetKey, M::State), BuildHasherDefault<MemoHasher>>,
    /// The longest prefix found (ranks), how much of the stack agrees with
    /// it (so that recording a new one copies only what changed), and the
    /// operation whose return blocked it.
    best: Vec<usize>,
    agree: usize,
    blocked: Option<usize>,
}

impl<M: Model> Search<'_, M> {
    fn op(&self, call: usize) -> &Operation<M::Input, M::Output> {
        &self.history[self.by_call[rank_of(call)]]
    }

    /// Whether the operation at call entry `call` is a read, given what it returned.
    fn is_read(&self, call: usize) -> bool {
        let op = self.op(call);
        self.model.is_read_only(&op.input, op.output.as_ref())
    }

    /// The state after linearizing the operation at call entry `call` next,
    /// if the model accepts it.
    fn try_step(&self, call: usize) -> Option<M::State> {
        let op = self.op(call);
        self.model.step(&self.state, &op.input, op.output.as_ref())
    }

    /// Linearizes the operation at call entry `call` next, moving to state
    /// `after`, unless the resulting configuration was explored before (and
    /// so leads nowhere). Returns whether it did.
    fn push(&mut self, call: usize, after: M::State, forced: bool) -> bool {
        let rank = rank_of(call);
        let high = self.stack.last().map_or(rank, |f| f.high.max(rank));
        let key = SetKey {
            high,
            holes: self.list.holes(high, rank),
        };
        if !self.memo.insert((key, after.clone())) {
            return false;
        }
        let depth = self.stack.len();
        if self.agree == depth && self.best.get(depth) == Some(&rank) {
            self.agree += 1;
        }
        let before = std::mem::replace(&mut self.state, after);
        self.stack.push(Frame {
            call,
            before,
            high,
            forced,
        });
        self.list.lift(call);
        true
    }

    /// A read the current state explains, among the operations that may
    /// come next (those called before the first return in the list), with
    /// the number of entries looked at.
    fn explained_read(&self) -> (Option<(usize, M::State)>, u64) {
        let mut looked = 0;
        let mut node = self.list.next[HEAD];
        while node != TAIL && is_call(node) {
            looked += 1;
            if self.is_read(node)
                && let Some(after) = self.try_step(node)
                && after == self.state
            {
                return (Some((node, after)), looked);
            }
            node = self.list.next[node];
        }
        (None, looked)
    }

    /// Undoes the last choice after the walk got stuck at return entry
    /// `stuck` (and the forced reads before it, see [`Model::is_read_only`]).
    /// Returns the entry to go on from, or None when there is nothing left
    /// to undo.
    fn backtrack(&mut self, stuck: usize) -> Option<usize> {
        if self.blocked.is_none() || self.stack.len() > self.best.len() {
            self.best.truncate(self.agree);
            self.best
                .extend(self.stack[self.agree..].iter().map(|f| rank_of(f.call)));
            self.agree = self.stack.len();
            self.blocked = (stuck != TAIL).then(|| rank_of(stuck));
        }
        loop {
            let frame = self.stack.pop()?;
            self.agree = self.agree.min(self.stack.len());
            self.state = frame.before;
            self.list.unlift(frame.call);
            if !frame.forced {
                return Some(self.list.next[frame.call]);
            }
        }
    }

    /// The verdict after a failed search, in indexes of the history.
    fn failure(&self, call_pos: &[usize], ret_pos: &[usize]) -> Verdict {
        let n = self.by_call.len();
        let mut in_best = vec![false; n];
        for &rank in &self.best {
            in_best[rank] = true;
        }
        let mut stuck = Vec::new();
        if let Some(b) = self.blocked {
            stuck.push(self.by_call[b]);
            // Calls are in rank order, so the pending ones are among the
            // first ranks.
            for rank in (0..n).take_while(|&r| call_pos[r] < ret_pos[b]) {
                if rank != b && !in_best[rank] {
                    stuck.push(self.by_call[rank]);
                }
            }
        }
        Verdict::NotLinearizable {
            linearized: self.best.iter().map(|&rank| self.by_call[rank]).collect(),
            stuck,
        }
    }
}

/// Checks whether `history` is linearizable with respect to `model`, giving
/// up (with [`Verdict::Unknown`]) after `budget` search steps (an entry
/// looked at, or a choice undone).
///
/// An operation whose `ret` is before its `call` is taken to have returned
/// when it was called. Never panics; an empty history is linearizable.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Verdict {
    let n = history.len();

    // Ranks: positions in call order (ties by index, so the order is total).
    let mut by_call: Vec<usize> = (0..n).collect();
    by_call.sort_by_key(|&i| (history[i].call, i));

    // Entries sorted by (time, call before return, rank).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (rank, &i) in by_call.iter().enumerate() {
        let op = &history[i];
        let returned = match op.output {
            Some(_) => op.ret.max(op.call),
            None => u64::MAX,
        };
        order.push((op.call, false, rank));
        order.push((returned, true, rank));
    }
    order.sort_unstable();

    let mut list = Entries {
        next: vec![TAIL; FIRST + 2 * n],
        prev: vec![HEAD; FIRST + 2 * n],
    };
    // Where each rank's entries sit in time order, to explain a failure.
    let mut call_pos = vec![0; n];
    let mut ret_pos = vec![0; n];
    let mut last = HEAD;
    for (pos, &(_, is_ret, rank)) in order.iter().enumerate() {
        let node = FIRST + 2 * rank + usize::from(is_ret);
        if is_ret {
            ret_pos[rank] = pos;
        } else {
            call_pos[rank] = pos;
        }
        list.next[last] = node;
        list.prev[node] = last;
        last = node;
    }
    list.next[last] = TAIL;
    list.prev[TAIL] = last;

    let mut search = Search {
        model,
        history,
        by_call,
        list,
        state: model.init(),
        stack: Vec::new(),
        memo: HashSet::default(),
        best: Vec::new(),
        agree: 0,
        blocked: None,
    };

    let mut steps: u64 = 0;
    // Whether the current configuration was just reached: then a read it
    // explains, if any, goes first and alone.
    let mut fresh = true;
    let mut entry = HEAD;
    while search.list.next[HEAD] != TAIL {
        if steps >= budget {
            return Verdict::Unknown;
        }
        steps += 1;
        if fresh {
            fresh = false;
            let (read, looked) = search.explained_read();
            steps += looked;
            entry = search.list.next[HEAD];
            if let Some((call, after)) = read {
                if search.push(call, after, true) {
                    fresh = true;
                    continue;
                }
                // Explored before, without success: so is this configuration.
                entry = search.list.first_return();
            }
        }
        if entry != TAIL && is_call(entry) {
            // Reads were tried first, when the configuration was reached.
            if !search.is_read(entry)
                && let Some(after) = search.try_step(entry)
                && search.push(entry, after, false)
            {
                fresh = true;
                continue;
            }
            entry = search.list.next[entry];
        } else {
            // A return entry (the tail cannot come before one: every call
            // left in the list has its return after it).
            match search.backtrack(entry) {
                Some(next) => entry = next,
                None => return search.failure(&call_pos, &ret_pos),
            }
        }
    }
    Verdict::Linearizable
}

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
fn describe(op: &Operation<KvInput, KvOutput>) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
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
                    (KvInput::Read { .. }, Some(KvOutput::Read(v))) => {
                        (*v == state).then_some(state)
                    }
                    (KvInput::Read { .. }, None) => Some(state),
                    (KvInput::Write { value, .. }, Some(KvOutput::Write) | None) => {
                        Some(Some(*value))
                    }
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
}
