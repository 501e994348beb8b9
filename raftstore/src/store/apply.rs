//! The write path: commands applied in log order, deterministically.
//!
//! Every member applies the same commands in the same order and must end in
//! the same state, so nothing here reads a clock, a random source or anything
//! but the store and the command. Decisions that need those (a new lease's ID)
//! are made by the proposer and travel inside the command.
//!
//! A write command gets one main revision; each key it touches gets a sub
//! revision. A command that fails (a missing lease, a compacted revision)
//! changes nothing, and its error is its response.

use std::collections::HashMap;

use keelson_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest,
    PutResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op, response_op,
};
use keelson_proto::keelsonpb::{Command, LeaseRecord, command::Op};
use keelson_proto::mvccpb::{Event, KeyValue, event::EventType};
use prost::Message;
use rocksdb::WriteBatch;

use super::{LeaseInfo, META_COMPACTED, META_REVISION, MvccStore, Record, State, range};
use crate::backend::{Backend, CF_KV, CF_LEASE, CF_META};
use crate::error::{Error, Result};
use crate::index::KeyRange;
use crate::revision::Revision;

/// The response to one applied command, before its header is filled in.
#[derive(Clone, Debug, PartialEq)]
pub enum CommandResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
}

/// The outcome of one command: its response and the store revision after it.
#[derive(Debug)]
pub struct Applied {
    pub index: u64,
    pub revision: i64,
    pub response: Result<CommandResponse>,
}

/// A lease the applied commands created or removed, for the lessor to track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    Granted { id: i64, ttl: i64 },
    Revoked { id: i64 },
}

/// Everything a batch of commands produced.
#[derive(Debug, Default)]
pub struct ApplyOutput {
    pub applied: Vec<Applied>,
    /// The watch events, in revision order.
    pub events: Vec<Event>,
    pub lease_changes: Vec<LeaseChange>,
}

impl MvccStore {
    /// Applies `commands` (log index, command) in order, writing the result
    /// and `meta` (the log's own bookkeeping: last applied log ID,
    /// membership) in one atomic batch, then publishes the new revision.
    ///
    /// The batch is not synced: the log that holds these commands is durable
    /// already, and a crash replays them from the last applied entry that
    /// reached the disk. Whoever relies on applied state outliving the log (a
    /// snapshot, before the log is purged behind it) calls
    /// [`MvccStore::sync`] first.
    ///
    /// A command's own failure (etcd's request errors) is its response; an
    /// `Err` here means storage failed and the member must stop.
    pub fn apply(
        &self,
        commands: &[(u64, Command)],
        meta: &[(&'static str, Vec<u8>)],
    ) -> Result<ApplyOutput> {
        let mut output = ApplyOutput::default();
        let mut batch = WriteBatch::default();
        let revision = {
            let mut state = self.write();
            let compacted = state.compacted;
            let mut writer = Writer {
                state: &mut state,
                backend: &self.backend,
                min_lease_ttl: self.config.min_lease_ttl,
                batch: &mut batch,
                pending: HashMap::new(),
                output: &mut output,
                main: 0,
                sub: 0,
            };
            for (index, command) in commands {
                writer.main = writer.state.revision + 1;
                writer.sub = 0;
                let response = writer.command(*index, command);
                if writer.sub > 0 {
                    writer.state.revision = writer.main;
                }
                let revision = writer.state.revision;
                writer.output.applied.push(Applied {
                    index: *index,
                    revision,
                    response,
                });
            }
            let cf = self.backend.cf(CF_META);
            batch.put_cf(cf, META_REVISION, state.revision.to_be_bytes());
            if state.compacted != compacted {
                batch.put_cf(cf, META_COMPACTED, state.compacted.to_be_bytes());
            }
            for (key, value) in meta {
                batch.put_cf(cf, key, value);
            }
            state.revision
        };
        self.backend.write(batch, false)?;
        self.published
            .store(revision, std::sync::atomic::Ordering::Release);
        Ok(output)
    }
}

/// Applies commands into one write batch. Reads inside it (previous values,
/// txn compares and ranges) see the batch's own earlier writes.
struct Writer<'a> {
    state: &'a mut State,
    backend: &'a Backend,
    min_lease_ttl: i64,
    batch: &'a mut WriteBatch,
    /// Records written by this batch, not yet in RocksDB.
    pending: HashMap<Revision, KeyValue>,
    output: &'a mut ApplyOutput,
    /// The revision the current command writes at.
    main: i64,
    sub: i64,
}

impl Writer<'_> {
    fn command(&mut self, index: u64, command: &Command) -> Result<CommandResponse> {
        match &command.op {
            Some(Op::Put(request)) => {
                self.check_put(request)?;
                self.put(request).map(CommandResponse::Put)
            }
            Some(Op::DeleteRange(request)) => {
                self.delete_range(request).map(CommandResponse::DeleteRange)
            }
            Some(Op::Txn(request)) => self.txn(request).map(CommandResponse::Txn),
            Some(Op::Compaction(request)) => self.compact(request).map(CommandResponse::Compaction),
            Some(Op::LeaseGrant(request)) => {
                self.lease_grant(request).map(CommandResponse::LeaseGrant)
            }
            Some(Op::LeaseRevoke(request)) => {
                self.lease_revoke(request).map(CommandResponse::LeaseRevoke)
            }
            None => Err(Error::MalformedCommand { index }),
        }
    }

    fn next_revision(&mut self) -> Revision {
        let rev = Revision::new(self.main, self.sub);
        self.sub += 1;
        rev
    }

    fn fetch(&self, rev: Revision) -> Result<KeyValue> {
        if let Some(kv) = self.pending.get(&rev) {
            return Ok(kv.clone());
        }
        let raw = self
            .backend
            .get(CF_KV, &rev.to_bytes())?
            .ok_or(Error::CorruptRecord {
                rev,
                reason: "indexed revision missing on disk",
            })?;
        Ok(Record::decode(rev, &raw)?.kv().clone())
    }

    /// The current value of `key`, including this batch's writes.
    fn current(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        self.state
            .index
            .get(key, self.main)
            .map(|entry| self.fetch(entry.modified))
            .transpose()
    }

    fn write_record(&mut self, rev: Revision, record: Record) {
        self.batch
            .put_cf(self.backend.cf(CF_KV), rev.to_bytes(), record.encode());
        let (kind, kv) = match record {
            Record::Put(kv) => (EventType::Put, kv),
            Record::Tombstone(kv) => (EventType::Delete, kv),
        };
        self.pending.insert(rev, kv.clone());
        self.output.events.push(Event {
            r#type: kind as i32,
            kv: Some(kv),
            prev_kv: None,
        });
    }

    fn attach(&mut self, key: &[u8], old_lease: i64, new_lease: i64) {
        if old_lease == new_lease {
            return;
        }
        if let Some(info) = self.state.leases.get_mut(&old_lease) {
            info.keys.remove(key);
        }
        if let Some(info) = self.state.leases.get_mut(&new_lease) {
            info.keys.insert(key.to_vec());
        }
    }

    /// The checks etcd makes before a put changes anything.
    fn check_put(&self, request: &PutRequest) -> Result<()> {
        if request.lease != 0 && !self.state.leases.contains_key(&request.lease) {
            return Err(Error::LeaseNotFound { id: request.lease });
        }
        if (request.ignore_value || request.ignore_lease)
            && self.state.index.get(&request.key, self.main).is_none()
        {
            return Err(Error::KeyNotFound {
                key: String::from_utf8_lossy(&request.key).into_owned(),
            });
        }
        Ok(())
    }

    fn put(&mut self, request: &PutRequest) -> Result<PutResponse> {
        let needs_previous = request.prev_kv || request.ignore_value || request.ignore_lease;
        let previous = if needs_previous {
            self.current(&request.key)?
        } else {
            None
        };
        let entry = self.state.index.get(&request.key, self.main);
        let old_lease = self.state.index.lease_of(&request.key).unwrap_or(0);
        let value = match (&previous, request.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => request.value.clone(),
        };
        let lease = if request.ignore_lease {
            old_lease
        } else {
            request.lease
        };
        let rev = self.next_revision();
        let kv = KeyValue {
            key: request.key.clone(),
            create_revision: entry.map_or(self.main, |e| e.created.main),
            mod_revision: self.main,
            version: entry.map_or(1, |e| e.version + 1),
            value,
            lease,
        };
        self.state.index.put(&request.key, rev, lease);
        self.attach(&request.key, old_lease, lease);
        self.write_record(rev, Record::Put(kv));
        Ok(PutResponse {
            header: None,
            prev_kv: previous.filter(|_| request.prev_kv),
        })
    }

    /// Deletes the live `keys` at the current revision.
    fn delete_keys(&mut self, keys: Vec<Vec<u8>>) {
        for key in keys {
            let rev = self.next_revision();
            let Some(old_lease) = self.state.index.tombstone(&key, rev) else {
                continue;
            };
            self.attach(&key, old_lease, 0);
            let tombstone = KeyValue {
                key,
                mod_revision: self.main,
                ..KeyValue::default()
            };
            self.write_record(rev, Record::Tombstone(tombstone));
        }
    }

    fn delete_range(&mut self, request: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let mut entries = Vec::new();
        let range = KeyRange::new(&request.key, &request.range_end);
        self.state.index.visit(range, self.main, |key, entry| {
            entries.push((key.to_vec(), entry.modified));
            true
        });
        let prev_kvs = if request.prev_kv {
            entries
                .iter()
                .map(|(_, rev)| self.fetch(*rev))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let deleted = entries.len() as i64;
        self.delete_keys(entries.into_iter().map(|(key, _)| key).collect());
        Ok(DeleteRangeResponse {
            header: None,
            deleted,
            prev_kvs,
        })
    }

    fn compare(&self, compare: &Compare) -> Result<bool> {
        let mut kvs = Vec::new();
        let range = KeyRange::new(&compare.key, &compare.range_end);
        self.state.index.visit(range, self.main, |_, entry| {
            kvs.push(entry.modified);
            true
        });
        let target = CompareTarget::try_from(compare.target).ok();
        if kvs.is_empty() {
            // A missing key has no value to compare; its revisions and version are 0.
            return Ok(
                target != Some(CompareTarget::Value) && compare_kv(compare, &KeyValue::default())
            );
        }
        for rev in kvs {
            if !compare_kv(compare, &self.fetch(rev)?) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Decides every (nested) txn branch up front, against the state before
    /// the txn writes anything, as etcd does. `path` gets one entry per txn in
    /// execution order.
    fn decide(&self, request: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
        let mut succeeded = true;
        for compare in &request.compare {
            if !self.compare(compare)? {
                succeeded = false;
                break;
            }
        }
        path.push(succeeded);
        let branch = if succeeded {
            &request.success
        } else {
            &request.failure
        };
        for op in branch {
            if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
                self.decide(nested, path)?;
            }
        }
        Ok(())
    }

    /// The checks etcd makes on the chosen branches before a txn writes anything.
    fn check_branch(&self, request: &TxnRequest, path: &[bool], at: &mut usize) -> Result<()> {
        let succeeded = path[*at];
        *at += 1;
        for op in if succeeded {
            &request.success
        } else {
            &request.failure
        } {
            match &op.request {
                Some(request_op::Request::RequestPut(put)) => self.check_put(put)?,
                Some(request_op::Request::RequestRange(range)) if range.revision > 0 => {
                    if range.revision > self.state.revision {
                        return Err(Error::FutureRevision {
                            requested: range.revision,
                            current: self.state.revision,
                        });
                    }
                    if range.revision < self.state.compacted {
                        return Err(Error::Compacted {
                            requested: range.revision,
                            compacted: self.state.compacted,
                        });
                    }
                }
                Some(request_op::Request::RequestTxn(nested)) => {
                    self.check_branch(nested, path, at)?
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn txn(&mut self, request: &TxnRequest) -> Result<TxnResponse> {
        let mut path = Vec::new();
        self.decide(request, &mut path)?;
        self.check_branch(request, &path, &mut 0)?;
        self.execute(request, &path, &mut 0)
    }

    fn execute(
        &mut self,
        request: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<TxnResponse> {
        let succeeded = path[*at];
        *at += 1;
        let branch = if succeeded {
            &request.success
        } else {
            &request.failure
        };
        let mut responses = Vec::with_capacity(branch.len());
        for RequestOp { request } in branch {
            let response = match request {
                Some(request_op::Request::RequestRange(range)) => {
                    let at_rev = if range.revision > 0 {
                        range.revision
                    } else {
                        self.main
                    };
                    let plan = range::plan(&self.state.index, at_rev, range)?;
                    Some(response_op::Response::ResponseRange(range::finish(
                        plan,
                        range,
                        |rev| self.fetch(rev),
                    )?))
                }
                Some(request_op::Request::RequestPut(put)) => {
                    Some(response_op::Response::ResponsePut(self.put(put)?))
                }
                Some(request_op::Request::RequestDeleteRange(delete)) => Some(
                    response_op::Response::ResponseDeleteRange(self.delete_range(delete)?),
                ),
                Some(request_op::Request::RequestTxn(nested)) => Some(
                    response_op::Response::ResponseTxn(self.execute(nested, path, at)?),
                ),
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        Ok(TxnResponse {
            header: None,
            succeeded,
            responses,
        })
    }

    fn compact(&mut self, request: &CompactionRequest) -> Result<CompactionResponse> {
        let (requested, current) = (request.revision, self.state.revision);
        if requested > current {
            return Err(Error::FutureRevision { requested, current });
        }
        if requested <= self.state.compacted {
            return Err(Error::Compacted {
                requested,
                compacted: self.state.compacted,
            });
        }
        let removed = self.state.index.compact(requested);
        let cf = self.backend.cf(CF_KV);
        for rev in &removed {
            self.batch.delete_cf(cf, rev.to_bytes());
            self.pending.remove(rev);
        }
        self.state.compacted = requested;
        tracing::info!(revision = requested, removed = removed.len(), "compacted");
        Ok(CompactionResponse { header: None })
    }

    fn lease_grant(&mut self, request: &LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        let id = request.id;
        if self.state.leases.contains_key(&id) {
            return Err(Error::LeaseExists { id });
        }
        let ttl = request.ttl.max(self.min_lease_ttl);
        let record = LeaseRecord { id, ttl };
        self.batch.put_cf(
            self.backend.cf(CF_LEASE),
            id.to_be_bytes(),
            record.encode_to_vec(),
        );
        self.state.leases.insert(
            id,
            LeaseInfo {
                ttl,
                keys: Default::default(),
            },
        );
        self.output
            .lease_changes
            .push(LeaseChange::Granted { id, ttl });
        Ok(LeaseGrantResponse {
            header: None,
            id,
            ttl,
            error: String::new(),
        })
    }

    fn lease_revoke(&mut self, request: &LeaseRevokeRequest) -> Result<LeaseRevokeResponse> {
        let id = request.id;
        let info = self
            .state
            .leases
            .remove(&id)
            .ok_or(Error::LeaseNotFound { id })?;
        self.delete_keys(info.keys.into_iter().collect());
        self.batch
            .delete_cf(self.backend.cf(CF_LEASE), id.to_be_bytes());
        self.output.lease_changes.push(LeaseChange::Revoked { id });
        Ok(LeaseRevokeResponse { header: None })
    }
}

fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    // Like etcd, a target reads its own field of the union; a missing or
    // different field reads as zero (proto3 omits zero values on the wire).
    let int = |pick: fn(&TargetUnion) -> Option<i64>| {
        compare.target_union.as_ref().and_then(pick).unwrap_or(0)
    };
    let ordering = match CompareTarget::try_from(compare.target) {
        Ok(CompareTarget::Version) => kv.version.cmp(&int(|u| {
            if let TargetUnion::Version(v) = u {
                Some(*v)
            } else {
                None
            }
        })),
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&int(|u| {
            if let TargetUnion::CreateRevision(v) = u {
                Some(*v)
            } else {
                None
            }
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&int(|u| {
            if let TargetUnion::ModRevision(v) = u {
                Some(*v)
            } else {
                None
            }
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&int(|u| {
            if let TargetUnion::Lease(v) = u {
                Some(*v)
            } else {
                None
            }
        })),
        Ok(CompareTarget::Value) => match &compare.target_union {
            Some(TargetUnion::Value(value)) => kv.value.cmp(value),
            _ => kv.value.as_slice().cmp(&[][..]),
        },
        Err(_) => return false,
    };
    match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => ordering == Ordering::Equal,
        Ok(CompareResult::Greater) => ordering == Ordering::Greater,
        Ok(CompareResult::Less) => ordering == Ordering::Less,
        Ok(CompareResult::NotEqual) => ordering != Ordering::Equal,
        Err(_) => false,
    }
}
