//! The KV service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use keelson_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
    kv_server::Kv, response_op::Response as OpResponse,
};
use keelson_proto::keelsonpb::command::Op;
use tonic::{Request, Response, Status};

use super::propose;
use crate::node::Node;
use crate::store::CommandResponse;
use crate::validate;

#[derive(Debug)]
pub(super) struct KvService {
    node: Arc<Node>,
}

impl KvService {
    pub(super) fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let request = request.into_inner();
        validate::range(&request)?;
        if !request.serializable && !self.node.config().unsafe_stale_reads {
            self.node.linearizable_barrier().await?;
        }
        let mut response = self.node.store().range(&request)?;
        response.header = Some(self.node.header(self.node.store().revision()));
        Ok(Response::new(response))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let request = request.into_inner();
        validate::put(&request)?;
        let pick = |r| {
            if let CommandResponse::Put(r) = r {
                Some(r)
            } else {
                None
            }
        };
        let (mut response, revision) = propose(&self.node, Op::Put(request), pick).await?;
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let request = request.into_inner();
        validate::delete_range(&request)?;
        let pick = |r| {
            if let CommandResponse::DeleteRange(r) = r {
                Some(r)
            } else {
                None
            }
        };
        let (mut response, revision) = propose(&self.node, Op::DeleteRange(request), pick).await?;
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let request = request.into_inner();
        validate::txn(&request, self.node.config().max_txn_ops)?;
        let pick = |r| {
            if let CommandResponse::Txn(r) = r {
                Some(r)
            } else {
                None
            }
        };
        let (mut response, revision) = propose(&self.node, Op::Txn(request), pick).await?;
        label_txn_responses(&mut response, revision);
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // Compaction is applied, physically, as part of the command: the
        // response comes after the space is reclaimed, whether or not
        // `physical` was asked for.
        let pick = |r| {
            if let CommandResponse::Compaction(r) = r {
                Some(r)
            } else {
                None
            }
        };
        let (mut response, revision) =
            propose(&self.node, Op::Compaction(request.into_inner()), pick).await?;
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }
}

/// Gives the responses inside a txn the headers etcd gives them: each range,
/// put and delete response carries only the txn's revision, a nested txn
/// response an empty header.
fn label_txn_responses(txn: &mut TxnResponse, revision: i64) {
    let only_revision = || {
        Some(ResponseHeader {
            revision,
            ..ResponseHeader::default()
        })
    };
    for op in &mut txn.responses {
        match &mut op.response {
            Some(OpResponse::ResponseRange(r)) => r.header = only_revision(),
            Some(OpResponse::ResponsePut(r)) => r.header = only_revision(),
            Some(OpResponse::ResponseDeleteRange(r)) => r.header = only_revision(),
            Some(OpResponse::ResponseTxn(nested)) => {
                label_txn_responses(nested, revision);
                nested.header = Some(ResponseHeader::default());
            }
            None => {}
        }
    }
}
