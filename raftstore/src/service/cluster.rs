//! The Cluster service: the members, and changes to them through Raft.
//!
//! Membership changes are made by the leader; a member that does not lead
//! passes the request on to the leader's client URL (and answers
//! `etcdserver: not leader` if it knows of none). A new member is added as a
//! learner and, unless asked to stay one, made a voter right away (etcd's
//! `member add`).

use std::sync::Arc;

use keelson_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, cluster_client::ClusterClient,
    cluster_server::Cluster,
};
use tonic::transport::Channel;
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
        self.node
            .members()
            .into_iter()
            .map(|(id, info, is_learner)| Member {
                id,
                name: info.name,
                peer_ur_ls: info.peer_urls,
                client_ur_ls: info.client_urls,
                is_learner,
            })
            .collect()
    }

    /// The leader's Cluster service, when this member does not lead.
    async fn leader(&self, error: crate::Error) -> Result<ClusterClient<Channel>, Status> {
        let crate::Error::NotLeader { .. } = error else {
            return Err(error.into());
        };
        let url = self
            .node
            .leader_client_url()
            .ok_or_else(|| Status::from(error))?;
        let channel = crate::tls::endpoint(&url, self.node.config().tls.as_ref())
            .map_err(|e| Status::unavailable(format!("etcdserver: leader URL: {e}")))?
            .connect()
            .await
            .map_err(|e| {
                Status::unavailable(format!("etcdserver: cannot reach the leader: {e}"))
            })?;
        Ok(ClusterClient::new(channel))
    }

    fn header(&self) -> Option<keelson_proto::etcdserverpb::ResponseHeader> {
        // etcd's cluster responses carry no revision.
        Some(self.node.header(0))
    }
}

/// How often a joining learner asks to be promoted.
const PROMOTE_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Makes this member, a learner, a voter once the leader finds it caught
/// up (etcd's `member promote`, asked by the member itself); returns when
/// it votes, or at `stop`.
pub async fn promote_when_caught_up(node: Arc<Node>, stop: tokio_util::sync::CancellationToken) {
    let me = node.identity_record().member_id;
    let service = ClusterService::new(node.clone());
    loop {
        let voter = node
            .members()
            .iter()
            .any(|(id, _, learner)| *id == me && !learner);
        if voter {
            return;
        }
        match service
            .member_promote(Request::new(MemberPromoteRequest { id: me }))
            .await
        {
            Ok(_) => {
                tracing::info!("caught up with the leader: promoted to a voting member");
                return;
            }
            Err(status) => tracing::debug!(%status, "not promoted yet"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PROMOTE_PERIOD) => {}
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let request = request.into_inner();
        if request.peer_ur_ls.is_empty()
            || request.peer_ur_ls.iter().any(|u| !u.starts_with("http"))
        {
            return Err(Status::invalid_argument(
                "etcdserver: given member URLs are invalid",
            ));
        }
        let id = match self
            .node
            .add_member(request.peer_ur_ls.clone(), request.is_learner)
            .await
        {
            Ok(id) => id,
            Err(error) => return self.leader(error).await?.member_add(request).await,
        };
        let members = self.members();
        let member = members
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .unwrap_or(Member {
                id,
                peer_ur_ls: request.peer_ur_ls,
                is_learner: request.is_learner,
                ..Member::default()
            });
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let request = request.into_inner();
        if let Err(error) = self.node.remove_member(request.id).await {
            return self.leader(error).await?.member_remove(request).await;
        }
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let request = request.into_inner();
        let Some((id, mut info, _)) = self
            .node
            .members()
            .into_iter()
            .find(|(known, _, _)| *known == request.id)
        else {
            return Err(crate::Error::MemberNotFound { id: request.id }.into());
        };
        if request.peer_ur_ls.is_empty()
            || request.peer_ur_ls.iter().any(|u| !u.starts_with("http"))
        {
            return Err(Status::invalid_argument(
                "etcdserver: given member URLs are invalid",
            ));
        }
        info.peer_urls = request.peer_ur_ls;
        self.node.set_member_info(id, info).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let request = request.into_inner();
        if let Err(error) = self.node.promote_member(request.id).await {
            return self.leader(error).await?.member_promote(request).await;
        }
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: self.members(),
        }))
    }
}
