//! The DNS server's metrics, under CoreDNS's names and labels so its
//! dashboards work unchanged.
//!
//! ```text
//!  query ─► coredns_dns_requests_total{server,zone,proto,family,type}
//!        ─► coredns_dns_responses_total{server,zone,rcode}
//!        ─► coredns_dns_request_duration_seconds{server,zone,type}  (histogram)
//! ```
//!
//! `server` is `dns://<first listening address>`; `zone` is the zone the
//! question fell in (`cluster.local.`, `in-addr.arpa.`, `ip6.arpa.`) or `.`
//! for anything else; `family` is `1` for IPv4 clients and `2` for IPv6.

use std::time::Duration;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::RecordType;

pub const REQUESTS_TOTAL: &str = "coredns_dns_requests_total";
pub const RESPONSES_TOTAL: &str = "coredns_dns_responses_total";
pub const REQUEST_DURATION_SECONDS: &str = "coredns_dns_request_duration_seconds";

/// CoreDNS's buckets for [`REQUEST_DURATION_SECONDS`] (0.25 ms doubling
/// 16 times). The process's Prometheus recorder must be given them, for
/// example with
/// `set_buckets_for_metric(Matcher::Full(REQUEST_DURATION_SECONDS.into()), &REQUEST_DURATION_BUCKETS)`.
pub const REQUEST_DURATION_BUCKETS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192,
];

/// Registers the metrics' help texts with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "Counter of DNS requests made per zone, protocol and family."
    );
    metrics::describe_counter!(RESPONSES_TOTAL, "Counter of response status codes.");
    metrics::describe_histogram!(
        REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Histogram of the time (in seconds) each request took per zone."
    );
}

/// One answered question.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Observation<'a> {
    pub server: &'a str,
    pub zone: &'a str,
    pub tcp: bool,
    pub ipv6_client: bool,
    pub qtype: Option<RecordType>,
    pub rcode: ResponseCode,
    pub elapsed: Duration,
}

pub(crate) fn record(o: &Observation<'_>) {
    let qtype = type_label(o.qtype);
    metrics::counter!(
        REQUESTS_TOTAL,
        "server" => o.server.to_owned(),
        "zone" => o.zone.to_owned(),
        "proto" => if o.tcp { "tcp" } else { "udp" },
        "family" => if o.ipv6_client { "2" } else { "1" },
        "type" => qtype,
    )
    .increment(1);
    metrics::counter!(
        RESPONSES_TOTAL,
        "server" => o.server.to_owned(),
        "zone" => o.zone.to_owned(),
        "rcode" => rcode_label(o.rcode),
    )
    .increment(1);
    metrics::histogram!(
        REQUEST_DURATION_SECONDS,
        "server" => o.server.to_owned(),
        "zone" => o.zone.to_owned(),
        "type" => qtype,
    )
    .record(o.elapsed.as_secs_f64());
}

/// The query type as CoreDNS labels it: common types by name, the rest
/// as `other` (so a client cannot blow up the label set).
fn type_label(qtype: Option<RecordType>) -> &'static str {
    match qtype {
        Some(RecordType::A) => "A",
        Some(RecordType::AAAA) => "AAAA",
        Some(RecordType::ANY) => "ANY",
        Some(RecordType::AXFR) => "AXFR",
        Some(RecordType::CNAME) => "CNAME",
        Some(RecordType::HTTPS) => "HTTPS",
        Some(RecordType::IXFR) => "IXFR",
        Some(RecordType::MX) => "MX",
        Some(RecordType::NS) => "NS",
        Some(RecordType::PTR) => "PTR",
        Some(RecordType::SOA) => "SOA",
        Some(RecordType::SRV) => "SRV",
        Some(RecordType::SVCB) => "SVCB",
        Some(RecordType::TXT) => "TXT",
        _ => "other",
    }
}

/// The rcode as CoreDNS labels it (`NOERROR`, `NXDOMAIN`, …).
pub(crate) fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        ResponseCode::BADVERS => "BADVERS",
        _ => "other",
    }
}
