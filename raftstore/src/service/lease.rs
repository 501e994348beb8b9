//! The Lease service: grant, revoke, keep-alive, time-to-live, list.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keelson_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use keelson_proto::keelsonpb::command::Op;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::propose;
use crate::node::Node;
use crate::store::CommandResponse;

#[derive(Debug)]
pub(super) struct LeaseService {
    node: Arc<Node>,
}

impl LeaseService {
    pub(super) fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let (response, revision) = self.node.lease_grant(request.into_inner()).await?;
        let CommandResponse::LeaseGrant(mut response) = response else {
            return Err(Status::internal("etcdserver: unexpected response kind"));
        };
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let pick = |r| {
            if let CommandResponse::LeaseRevoke(r) = r {
                Some(r)
            } else {
                None
            }
        };
        let (mut response, revision) =
            propose(&self.node, Op::LeaseRevoke(request.into_inner()), pick).await?;
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let node = self.node.clone();
        let responses = request.into_inner().then(move |request| {
            let node = node.clone();
            async move {
                let id = request?.id;
                // An unknown or expired lease is answered with TTL 0, as etcd does.
                let ttl = node.lease_renew(id).await?;
                Ok(LeaseKeepAliveResponse {
                    header: Some(node.header(node.store().revision())),
                    id,
                    ttl,
                })
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        let header = Some(self.node.header(self.node.store().revision()));
        let response = match self.node.store().lease(request.id) {
            // etcd answers an unknown lease with TTL -1 rather than an error.
            None => LeaseTimeToLiveResponse {
                header,
                id: request.id,
                ttl: -1,
                ..Default::default()
            },
            Some(info) => LeaseTimeToLiveResponse {
                header,
                id: request.id,
                ttl: self
                    .node
                    .lease_remaining(request.id)
                    .await?
                    .unwrap_or(info.ttl),
                granted_ttl: info.ttl,
                keys: if request.keys {
                    info.keys.into_iter().collect()
                } else {
                    Vec::new()
                },
            },
        };
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self
            .node
            .store()
            .leases()
            .into_iter()
            .map(|(id, _)| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.node.header(self.node.store().revision())),
            leases,
        }))
    }
}
