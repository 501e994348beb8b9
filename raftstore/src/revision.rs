//! Revisions and their on-disk encoding.
//!
//! A store write gets one *main* revision (the store's global revision after
//! the write); each key it touches gets a *sub* revision inside it, in the
//! order the operations ran. Records are stored under the 16-byte big-endian
//! encoding of `(main, sub)`, so RocksDB's key order is revision order.

use std::fmt;

/// A point in the store's history: `main` is the global revision, `sub` the
/// position of a change within the write that made it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// Length of an encoded [`Revision`].
pub const REVISION_BYTES: usize = 16;

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    /// The encoded form, which sorts like the revision itself for
    /// non-negative revisions (the only ones the store produces).
    pub fn to_bytes(self) -> [u8; REVISION_BYTES] {
        let mut out = [0u8; REVISION_BYTES];
        out[..8].copy_from_slice(&self.main.to_be_bytes());
        out[8..].copy_from_slice(&self.sub.to_be_bytes());
        out
    }

    /// Decodes a key written by [`Revision::to_bytes`]; `None` if it is not 16 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let main = i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let sub = i64::from_be_bytes(bytes.get(8..REVISION_BYTES)?.try_into().ok()?);
        (bytes.len() == REVISION_BYTES).then_some(Self { main, sub })
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.main, self.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_sorts_like_revisions() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(2, 0),
            Revision::new(256, 3),
            Revision::new(i64::MAX, 0),
        ];
        for pair in revs.windows(2) {
            assert!(pair[0].to_bytes() < pair[1].to_bytes());
        }
        for rev in revs {
            assert_eq!(Revision::from_bytes(&rev.to_bytes()), Some(rev));
        }
        assert_eq!(Revision::from_bytes(&[0; 15]), None);
        assert_eq!(Revision::from_bytes(&[0; 17]), None);
    }
}
