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
//! [`check_kv`](crate::check::kv::check_kv) checks each key on its own, which keeps each search small.

use std::collections::HashSet;
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

#[cfg(test)]
mod tests;
