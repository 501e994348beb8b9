//! The Cluster service: the member list.
//!
//! A store without replication has exactly one member; adding, removing,
//! updating or promoting members needs the replicated store, and is refused
//! with a status that says so.

use std::sync::Arc;

use keelson_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, cluster_server::Cluster,
};
use tonic::{Request, Response, Status};

use crate::node::Node;

#[derive(Debug)]
pub(super) struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub(super) fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn members(&self) -> Vec<Member> {
        let identity = self.node.identity_record();
        vec![Member {
            id: identity.member_id,
            name: identity.name.clone(),
            peer_ur_ls: identity.peer_urls.clone(),
            client_ur_ls: identity.client_urls.clone(),
            is_learner: false,
        }]
    }
}

/// Membership changes need peers to replicate to.
fn single_member() -> Status {
    Status::failed_precondition(
        "etcdserver: membership changes need a replicated cluster; this member runs alone",
    )
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(single_member())
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(single_member())
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(single_member())
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            // etcd's member list header carries no revision.
            header: Some(self.node.header(0)),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(single_member())
    }
}
