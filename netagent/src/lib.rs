//! The node's share of the cluster network beyond pod interfaces (which
//! the node agent's runtime makes through CNI): the service proxy and the
//! cluster DNS, both run by `keelson agent` in its node's namespace.
//!
//! ```text
//!  Services, EndpointSlices (watch) ─┬─► proxy::render ─► iptables-restore (KEELSON-… chains)
//!                                    └─► dns::Index ─► hickory-server on the cluster DNS address
//! ```
//!
//! - [`proxy`]: kube-proxy's iptables mode (see `docs/service-proxy.md`).
//! - [`dns`]: Kubernetes' DNS specification (see `docs/dns.md`).

pub mod dns;
pub mod proxy;
