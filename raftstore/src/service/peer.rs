//! The peer service: what other members send this one.
//!
//! openraft's RPCs (append, vote, streamed snapshots), writes forwarded by
//! followers, read-index requests, and lease questions that only the leader
//! can answer. Messages that do not decode get `InvalidArgument`.

use std::io::Cursor;
use std::sync::Arc;

use keelson_proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use keelson_proto::keelsonpb::{self as pb, raft_server::Raft};
use openraft::Snapshot;
use tonic::{Request, Response, Status, Streaming};

use crate::node::Node;
use crate::propose::forward_result;
use crate::raft::codec;

#[derive(Debug)]
pub(super) struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    pub(super) fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn malformed(error: codec::DecodeError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn raft_failed(error: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft: {error}"))
}

#[tonic::async_trait]
impl Raft for PeerService {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let request = codec::from_append_entries(request.into_inner()).map_err(malformed)?;
        let response = self
            .node
            .raft()
            .append_entries(request)
            .await
            .map_err(raft_failed)?;
        Ok(Response::new(codec::append_entries_response(&response)))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let request = codec::from_vote_request(&request.into_inner()).map_err(malformed)?;
        let response = self.node.raft().vote(request).await.map_err(raft_failed)?;
        Ok(Response::new(codec::vote_response(&response)))
    }

    /// Receives a streamed snapshot whole, then hands it to Raft, which
    /// installs it unless the sender's vote is stale.
    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let mut stream = request.into_inner();
        let head = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let (vote, meta) = codec::from_snapshot_head(&head).map_err(malformed)?;
        let mut data = head.data;
        while let Some(chunk) = stream.message().await? {
            if chunk.vote.is_some() || chunk.meta.is_some() {
                return Err(Status::invalid_argument(
                    "snapshot chunk after the first names a vote or snapshot",
                ));
            }
            data.extend_from_slice(&chunk.data);
        }
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "snapshot received");
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        };
        let response = self
            .node
            .raft()
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(raft_failed)?;
        Ok(Response::new(pb::InstallSnapshotResponse {
            vote: Some(codec::vote(&response.vote)),
        }))
    }

    async fn forward(
        &self,
        request: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        let commands = request.into_inner().commands;
        if commands.is_empty() {
            return Err(Status::invalid_argument("no command"));
        }
        // Batched with this member's own writes. Should leadership have
        // moved meanwhile, they are forwarded once more, like any write.
        let results = self.node.propose_forwarded(commands).await;
        Ok(Response::new(pb::ForwardResponse {
            results: results.into_iter().map(forward_result).collect(),
        }))
    }

    async fn read_index(
        &self,
        _request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let index = self.node.read_index().await?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        let id = request.into_inner().id;
        let ttl = self.node.lease_renew(id).await?;
        Ok(Response::new(LeaseKeepAliveResponse {
            header: None,
            id,
            ttl,
        }))
    }

    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let request = request.into_inner();
        let member = request
            .member
            .ok_or_else(|| Status::invalid_argument("no member"))?;
        let info = crate::raft::MemberInfo {
            name: member.name,
            peer_urls: member.peer_urls,
            client_urls: member.client_urls,
        };
        self.node.set_member_info(request.member_id, info).await?;
        Ok(Response::new(pb::PublishResponse {}))
    }

    async fn members(
        &self,
        _: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let members = self
            .node
            .members()
            .into_iter()
            .map(|(id, info, _)| {
                let member = pb::Member {
                    name: info.name,
                    peer_urls: info.peer_urls,
                    client_urls: info.client_urls,
                };
                (id, member)
            })
            .collect();
        Ok(Response::new(pb::MembersResponse {
            cluster_id: self.node.identity_record().cluster_id,
            members,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let id = request.into_inner().id;
        let ttl = self.node.lease_remaining(id).await?.unwrap_or(-1);
        Ok(Response::new(LeaseTimeToLiveResponse {
            id,
            ttl,
            ..Default::default()
        }))
    }
}
