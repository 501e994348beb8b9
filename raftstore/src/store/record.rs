//! The value format of revision records in the `kv` column family.
//!
//! `[format version][kind][KeyValue protobuf]`: the version byte lets a later
//! release read older records; the kind tells a put from a tombstone, whose
//! `KeyValue` holds only the key and the deleting revision.

use keelson_proto::mvccpb::KeyValue;
use prost::Message;

use crate::error::{Error, Result};
use crate::revision::Revision;

const FORMAT_V1: u8 = 1;
const KIND_PUT: u8 = 0;
const KIND_TOMBSTONE: u8 = 1;

/// A decoded revision record.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Record {
    Put(KeyValue),
    Tombstone(KeyValue),
}

impl Record {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let (kind, kv) = match self {
            Record::Put(kv) => (KIND_PUT, kv),
            Record::Tombstone(kv) => (KIND_TOMBSTONE, kv),
        };
        let mut out = Vec::with_capacity(2 + kv.encoded_len());
        out.push(FORMAT_V1);
        out.push(kind);
        kv.encode(&mut out)
            .unwrap_or_else(|_| unreachable!("a Vec grows as needed"));
        out
    }

    pub(crate) fn decode(rev: Revision, raw: &[u8]) -> Result<Self> {
        let corrupt = |reason| Error::CorruptRecord { rev, reason };
        let [format, kind, body @ ..] = raw else {
            return Err(corrupt("shorter than its header"));
        };
        if *format != FORMAT_V1 {
            return Err(corrupt("unknown record format"));
        }
        let kv = KeyValue::decode(body).map_err(|_| corrupt("undecodable KeyValue"))?;
        match *kind {
            KIND_PUT => Ok(Record::Put(kv)),
            KIND_TOMBSTONE => Ok(Record::Tombstone(kv)),
            _ => Err(corrupt("unknown record kind")),
        }
    }

    pub(crate) fn kv(&self) -> &KeyValue {
        match self {
            Record::Put(kv) | Record::Tombstone(kv) => kv,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            lease: 5,
        };
        let rev = Revision::new(3, 0);
        for record in [Record::Put(kv.clone()), Record::Tombstone(kv)] {
            assert_eq!(Record::decode(rev, &record.encode()).unwrap(), record);
        }
        for garbage in [&[][..], &[1], &[2, 0], &[1, 9], &[1, 0, 0xff, 0xff]] {
            assert!(matches!(
                Record::decode(rev, garbage),
                Err(Error::CorruptRecord { .. })
            ));
        }
    }
}
