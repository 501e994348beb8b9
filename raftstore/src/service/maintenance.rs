//! The Maintenance service: status, snapshots, hashes, defragmentation,
//! alarms, leader moves and downgrades.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use keelson_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse, alarm_request::AlarmAction, downgrade_request::DowngradeAction,
    maintenance_server::Maintenance,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::node::Node;

/// The etcd version Keelson reports. Tools and Kubernetes check it; Keelson
/// implements the 3.5 API.
pub const ETCD_VERSION: &str = "3.5.16";
/// The storage version etcd 3.5 reports.
const STORAGE_VERSION: &str = "3.5.0";
const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;

#[derive(Debug)]
pub(super) struct MaintenanceService {
    node: Arc<Node>,
    /// Raised alarms, as (member, alarm type). Nothing raises one by itself
    /// yet (no quota), but operators can, as with etcd.
    alarms: Mutex<BTreeSet<(u64, i32)>>,
}

impl MaintenanceService {
    pub(super) fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            alarms: Mutex::new(BTreeSet::new()),
        }
    }

    fn header(&self) -> Option<keelson_proto::etcdserverpb::ResponseHeader> {
        Some(self.node.header(self.node.store().revision()))
    }

    fn alarm_list(&self) -> Vec<AlarmMember> {
        let alarms = self.alarms.lock().unwrap_or_else(|p| p.into_inner());
        alarms
            .iter()
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }
}

fn blocking_failed(error: tokio::task::JoinError) -> Status {
    Status::internal(format!("etcdserver: background task failed: {error}"))
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let request = request.into_inner();
        let alarm = AlarmType::try_from(request.alarm).unwrap_or(AlarmType::None);
        let action = AlarmAction::try_from(request.action).unwrap_or(AlarmAction::Get);
        let alarms = match action {
            AlarmAction::Get => self.alarm_list(),
            AlarmAction::Activate | AlarmAction::Deactivate if alarm == AlarmType::None => {
                Vec::new()
            }
            AlarmAction::Activate | AlarmAction::Deactivate => {
                let entry = (request.member_id, alarm as i32);
                let mut raised = self.alarms.lock().unwrap_or_else(|p| p.into_inner());
                let changed = if action == AlarmAction::Activate {
                    raised.insert(entry)
                } else {
                    raised.remove(&entry)
                };
                if changed {
                    vec![AlarmMember {
                        member_id: entry.0,
                        alarm: entry.1,
                    }]
                } else {
                    Vec::new()
                }
            }
        };
        Ok(Response::new(AlarmResponse {
            header: self.header(),
            alarms,
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let store = self.node.store();
        let (db_size, db_size_in_use) = store.db_size();
        let (raft_index, raft_applied_index) = self.node.raft_indexes();
        let me = self.node.identity_record().member_id;
        let is_learner = self
            .node
            .members()
            .iter()
            .any(|(id, _, learner)| *id == me && *learner);
        let errors = self
            .alarm_list()
            .into_iter()
            .map(|a| {
                let name = AlarmType::try_from(a.alarm).map_or("UNKNOWN", |t| t.as_str_name());
                format!("memberID:{} alarm:{name} ", a.member_id)
            })
            .collect();
        Ok(Response::new(StatusResponse {
            header: self.header(),
            version: ETCD_VERSION.into(),
            db_size: db_size as i64,
            leader: self.node.leader(),
            raft_index,
            raft_term: self.node.term(),
            raft_applied_index,
            errors,
            db_size_in_use: db_size_in_use as i64,
            is_learner,
            storage_version: STORAGE_VERSION.into(),
            db_size_quota: 0,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let store = self.node.store().clone();
        tokio::task::spawn_blocking(move || store.defragment())
            .await
            .map_err(blocking_failed)?;
        Ok(Response::new(DefragmentResponse {
            header: self.header(),
        }))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let store = self.node.store().clone();
        let (hash, _, _) = tokio::task::spawn_blocking(move || store.hash(0))
            .await
            .map_err(blocking_failed)??;
        Ok(Response::new(HashResponse {
            header: self.header(),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let store = self.node.store().clone();
        let at = request.into_inner().revision;
        let (hash, hash_revision, compact_revision) =
            tokio::task::spawn_blocking(move || store.hash(at))
                .await
                .map_err(blocking_failed)??;
        Ok(Response::new(HashKvResponse {
            header: self.header(),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = ReceiverStream<Result<SnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let (sender, receiver) = mpsc::channel(4);
        let store = self.node.store().clone();
        let mut header = self.header();
        tokio::task::spawn_blocking(move || {
            let mut emit = |blob: Vec<u8>, remaining_bytes: u64| {
                let chunk = SnapshotResponse {
                    header: header.take(),
                    remaining_bytes,
                    blob,
                    version: STORAGE_VERSION.into(),
                };
                // The client hung up: stop reading the store.
                sender.blocking_send(Ok(chunk)).map_err(|_| Error::Stopped)
            };
            match store.snapshot(SNAPSHOT_CHUNK_BYTES, &mut emit) {
                Ok(bytes) => tracing::info!(bytes, "snapshot sent"),
                Err(Error::Stopped) => tracing::info!("snapshot receiver went away"),
                Err(error) => {
                    let _ = sender.blocking_send(Err(error.to_status()));
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        // Leadership moves only to where it already is: the Raft library
        // this release uses has no leader transfer.
        let target = request.into_inner().target_id;
        if target != self.node.leader() {
            return Err(Error::BadLeaderTransferee { id: target }.into());
        }
        Ok(Response::new(MoveLeaderResponse {
            header: self.header(),
        }))
    }

    async fn downgrade(
        &self,
        request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        let request = request.into_inner();
        // Keelson's data format has no earlier version to go back to.
        Err(match DowngradeAction::try_from(request.action) {
            Ok(DowngradeAction::Cancel) => Error::NoInflightDowngrade,
            _ => Error::InvalidDowngradeTarget {
                target: request.version,
            },
        }
        .into())
    }
}
