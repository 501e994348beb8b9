//! One question in, one answer out: the index for the cluster's zones,
//! upstreams (when configured) for the rest, and the metrics and log line
//! of every query.
//!
//! ```text
//!  question ─┬─ not a QUERY / not one question / not IN ─► NOTIMP / FORMERR / REFUSED
//!            ├─ cluster domain, in-addr.arpa, ip6.arpa ─► Index::lookup (SERVFAIL before the first index)
//!            │     ├─ NXDOMAIN in a reverse zone + upstreams ─► forward (CoreDNS's fallthrough)
//!            │     └─ CNAME leaving the zones + upstreams ─► resolve the target upstream
//!            └─ anything else ─► upstreams, or REFUSED when there are none
//! ```

use std::time::Instant;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, Message, Metadata, OpCode, Query, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use super::forward::Forwarder;
use super::index::{self, Zone};
use super::metrics::{self, Observation};
use super::source::SharedIndex;

/// The largest UDP answer offered to EDNS clients (DNS flag day 2020).
const MAX_UDP_PAYLOAD: u16 = 1232;

/// The server's request handler.
#[derive(Debug)]
pub(crate) struct Handler {
    pub(crate) index: SharedIndex,
    /// The cluster domain, as configured.
    pub(crate) cluster_domain: String,
    pub(crate) forwarder: Option<Forwarder>,
    /// The `server` metric label.
    pub(crate) server_label: String,
}

/// What to send back.
#[derive(Debug)]
struct Reply {
    zone: Option<Zone>,
    rcode: ResponseCode,
    authoritative: bool,
    recursion_available: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Reply {
    fn error(zone: Option<Zone>, rcode: ResponseCode) -> Self {
        Self {
            zone,
            rcode,
            authoritative: false,
            recursion_available: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let tcp = !request.protocol().is_datagram();
        let query = request
            .request_info()
            .ok()
            .map(|info| info.query.original().clone());
        let reply = self.resolve(request, query.as_ref(), tcp).await;
        let info = self.send(request, &reply, tcp, response_handle).await;

        let elapsed = started.elapsed();
        let zone = self.zone_label(reply.zone, query.as_ref());
        metrics::record(&Observation {
            server: &self.server_label,
            zone: &zone,
            tcp,
            ipv6_client: request.src().is_ipv6(),
            qtype: query.as_ref().map(Query::query_type),
            rcode: info.response_code,
            elapsed,
        });
        tracing::debug!(
            name = %query.as_ref().map(|q| q.name().to_string()).unwrap_or_default(),
            qtype = %query.as_ref().map(|q| q.query_type().to_string()).unwrap_or_default(),
            client = %request.src(),
            proto = if tcp { "tcp" } else { "udp" },
            rcode = metrics::rcode_label(info.response_code),
            answers = info.counts().answers,
            truncated = info.truncation,
            elapsed_us = elapsed.as_micros() as u64,
            "dns query"
        );
        info
    }
}

impl Handler {
    async fn resolve(&self, request: &Request, query: Option<&Query>, tcp: bool) -> Reply {
        if request.metadata.op_code != OpCode::Query {
            return Reply::error(None, ResponseCode::NotImp);
        }
        let Some(query) = query else {
            return Reply::error(None, ResponseCode::FormErr);
        };
        let zone = index::zone_for(&self.cluster_domain, query.name());
        if query.query_class() != DNSClass::IN
            || matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR)
        {
            return Reply::error(zone, ResponseCode::Refused);
        }
        let Some(zone) = zone else {
            return match &self.forwarder {
                Some(forwarder) => forward(forwarder, query, tcp).await,
                None => Reply::error(None, ResponseCode::Refused),
            };
        };
        let Some(index) = self.index.current() else {
            return Reply::error(Some(zone), ResponseCode::ServFail);
        };
        let Some(answer) = index.lookup(query.name(), query.query_type()) else {
            return Reply::error(Some(zone), ResponseCode::ServFail);
        };
        if let Some(forwarder) = &self.forwarder
            && answer.rcode == ResponseCode::NXDomain
            && zone != Zone::Cluster
        {
            return forward(forwarder, query, tcp).await;
        }
        let mut reply = Reply {
            zone: Some(zone),
            rcode: answer.rcode,
            authoritative: true,
            recursion_available: self.forwarder.is_some(),
            answers: answer.answers,
            authorities: answer.authorities,
            additionals: answer.additionals,
        };
        if let (Some(forwarder), Some(target)) = (&self.forwarder, answer.external_target) {
            let chased = Query::query(target, query.query_type());
            match forwarder.ask(&chased, tcp).await {
                Ok(message) => {
                    reply.rcode = message.metadata.response_code;
                    if message.answers.is_empty() {
                        reply.authorities = message.authorities;
                    }
                    reply.answers.extend(message.answers);
                }
                Err(error) => tracing::debug!(
                    target = %chased.name(),
                    error = %keelson_control::runtime::chain(&error),
                    "cannot resolve an ExternalName's target; answering with the CNAME alone"
                ),
            }
        }
        reply
    }

    async fn send<R: ResponseHandler>(
        &self,
        request: &Request,
        reply: &Reply,
        tcp: bool,
        mut handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.rcode;
        metadata.authoritative = reply.authoritative;
        metadata.recursion_available = reply.recursion_available;
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns
        });
        // Additional records are a courtesy: leave them out rather than
        // set TC (and send the client to TCP) when they do not fit.
        let mut additionals = reply.additionals.as_slice();
        if !tcp && !additionals.is_empty() {
            let limit = edns.as_ref().map_or(512, Edns::max_payload);
            if encoded_len(request, reply) > usize::from(limit) {
                additionals = &[];
            }
        }
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            additionals.iter(),
        );
        match handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(client = %request.src(), %error, "cannot send a dns response");
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }

    /// The `zone` metric label.
    fn zone_label(&self, zone: Option<Zone>, query: Option<&Query>) -> String {
        match zone.or_else(|| query.and_then(|q| index::zone_for(&self.cluster_domain, q.name()))) {
            Some(Zone::Cluster) => {
                format!(
                    "{}.",
                    self.cluster_domain
                        .trim_end_matches('.')
                        .to_ascii_lowercase()
                )
            }
            Some(Zone::ReverseV4) => "in-addr.arpa.".into(),
            Some(Zone::ReverseV6) => "ip6.arpa.".into(),
            None => ".".into(),
        }
    }
}

/// The upstreams' answer, relayed; `SERVFAIL` when none answers.
async fn forward(forwarder: &Forwarder, query: &Query, tcp: bool) -> Reply {
    match forwarder.ask(query, tcp).await {
        Ok(message) => Reply {
            zone: None,
            rcode: message.metadata.response_code,
            authoritative: false,
            recursion_available: true,
            answers: message.answers,
            authorities: message.authorities,
            additionals: message.additionals,
        },
        Err(error) => {
            tracing::debug!(
                name = %query.name(),
                error = %keelson_control::runtime::chain(&error),
                "no upstream answered"
            );
            Reply::error(None, ResponseCode::ServFail)
        }
    }
}

/// How long the reply would be on the wire, with every section.
fn encoded_len(request: &Request, reply: &Reply) -> usize {
    let mut message = Message::response(request.metadata.id, OpCode::Query);
    message.add_queries(
        request
            .queries
            .queries()
            .iter()
            .map(|q| q.original().clone()),
    );
    message.add_answers(reply.answers.iter().cloned());
    message.add_authorities(reply.authorities.iter().cloned());
    message.add_additionals(reply.additionals.iter().cloned());
    message
        .to_vec()
        .map_or(usize::MAX, |bytes| bytes.len() + 11)
}
