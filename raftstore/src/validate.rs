//! Request checks made before a write is proposed, as etcd's gRPC layer
//! makes them: malformed requests never reach the log.

use std::collections::BTreeSet;

use keelson_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op::Request,
};

use crate::error::{Error, Result};
use crate::index::KeyRange;

/// etcd's defaults for `--max-txn-ops` and the lease TTL ceiling.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

pub fn range(request: &RangeRequest) -> Result<()> {
    if request.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

pub fn put(request: &PutRequest) -> Result<()> {
    if request.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

pub fn delete_range(request: &DeleteRangeRequest) -> Result<()> {
    if request.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

pub fn txn(request: &TxnRequest, max_ops: usize) -> Result<()> {
    for ops in [
        request.compare.len(),
        request.success.len(),
        request.failure.len(),
    ] {
        if ops > max_ops {
            return Err(Error::TooManyOps { ops, max: max_ops });
        }
    }
    if request.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in request.success.iter().chain(&request.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) => range(r)?,
            Some(Request::RequestPut(r)) => put(r)?,
            Some(Request::RequestDeleteRange(r)) => delete_range(r)?,
            Some(Request::RequestTxn(r)) => txn(r, max_ops)?,
            None => {}
        }
    }
    writes(&request.success)?;
    writes(&request.failure)?;
    Ok(())
}

/// The keys a branch puts and the ranges it deletes.
#[derive(Default)]
struct Writes {
    puts: BTreeSet<Vec<u8>>,
    deletes: Vec<(Vec<u8>, Vec<u8>)>,
}

/// etcd's rule: within one branch (nested txns included), no key is put
/// twice and no key is both put and deleted.
fn writes(ops: &[RequestOp]) -> Result<Writes> {
    let duplicate = |key: &[u8]| Error::DuplicateKey {
        key: String::from_utf8_lossy(key).into_owned(),
    };
    let mut own = Writes::default();
    let mut nested = Writes::default();
    for op in ops {
        match &op.request {
            Some(Request::RequestPut(put)) => {
                if !own.puts.insert(put.key.clone()) {
                    return Err(duplicate(&put.key));
                }
            }
            Some(Request::RequestDeleteRange(delete)) => {
                own.deletes
                    .push((delete.key.clone(), delete.range_end.clone()));
            }
            Some(Request::RequestTxn(txn)) => {
                // Only one of a nested txn's branches runs, so they may overlap each other.
                for branch in [writes(&txn.success)?, writes(&txn.failure)?] {
                    nested.puts.extend(branch.puts);
                    nested.deletes.extend(branch.deletes);
                }
            }
            Some(Request::RequestRange(_)) | None => {}
        }
    }
    if let Some(key) = own.puts.intersection(&nested.puts).next() {
        return Err(duplicate(key));
    }
    for (key, end) in own.deletes.iter().chain(&nested.deletes) {
        let range = KeyRange::new(key, end);
        let puts = own.puts.iter().chain(&nested.puts);
        if let Some(put) = puts.into_iter().find(|put| range.contains(put)) {
            return Err(duplicate(put));
        }
    }
    own.puts.extend(nested.puts);
    own.deletes.extend(nested.deletes);
    Ok(own)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(key: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    fn delete_op(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: end.into(),
                prev_kv: false,
            })),
        }
    }

    fn txn_of(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_writes_in_one_branch_are_refused() {
        let dup = |t: TxnRequest| matches!(txn(&t, 128), Err(Error::DuplicateKey { .. }));
        assert!(dup(txn_of(vec![put_op("a"), put_op("a")], vec![])));
        assert!(dup(txn_of(vec![put_op("b"), delete_op("a", "c")], vec![])));
        let nested = RequestOp {
            request: Some(Request::RequestTxn(txn_of(vec![put_op("a")], vec![]))),
        };
        assert!(dup(txn_of(vec![put_op("a"), nested], vec![])));

        assert!(txn(&txn_of(vec![put_op("a")], vec![put_op("a")]), 128).is_ok());
        assert!(txn(&txn_of(vec![put_op("c"), delete_op("a", "c")], vec![]), 128).is_ok());
        let either = RequestOp {
            request: Some(Request::RequestTxn(txn_of(
                vec![put_op("x")],
                vec![put_op("x")],
            ))),
        };
        assert!(txn(&txn_of(vec![either], vec![]), 128).is_ok());
    }

    #[test]
    fn limits_and_empty_keys() {
        let many = txn_of((0..3).map(|i| put_op(&i.to_string())).collect(), vec![]);
        assert!(matches!(
            txn(&many, 2),
            Err(Error::TooManyOps { ops: 3, max: 2 })
        ));
        assert!(matches!(put(&PutRequest::default()), Err(Error::EmptyKey)));
        let both = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert!(matches!(put(&both), Err(Error::ValueProvided)));
        let lease = PutRequest {
            key: b"k".to_vec(),
            lease: 1,
            ignore_lease: true,
            ..Default::default()
        };
        assert!(matches!(put(&lease), Err(Error::LeaseProvided)));
    }
}
