//! The service proxy: kube-proxy's iptables mode, run by the node agent
//! inside its node's network namespace.
//!
//! ```text
//!  API server ──watch──► Informer<Service>, Informer<EndpointSlice>
//!                              │ snapshot (at most once per min_sync_period)
//!                              ▼
//!                  render::render(ProxyInput) ── pure ──► Rendered { *filter … COMMIT, *nat … COMMIT }
//!                              │
//!                              ▼
//!                  iptables::Iptables ── iptables-restore --noflush ──► KEELSON-… chains
//!                                     └─ iptables -C/-I ──► jumps from PREROUTING, OUTPUT, POSTROUTING, INPUT, FORWARD
//! ```
//!
//! - [`render`]: Services and EndpointSlices to one `iptables-restore`
//!   payload, deterministic and in `iptables-save`'s own spelling.
//! - [`iptables`]: running the tools (optionally in another namespace),
//!   applying a render, cleaning everything up.
//! - [`proxier`]: the loop that ties the two to the API.
//! - [`names`]: chain names; [`model`]: the API objects reduced to what
//!   the rules need; [`bench`]: synthetic clusters and timings.
//!
//! The node agent calls [`Proxier::run`] with a [`ProxyConfig`] (node
//! name, node IPs, pod CIDR, the node-local DNS IP) and, for
//! `keelson agent --cleanup`, [`Iptables::cleanup`].

pub mod bench;
pub mod iptables;
pub mod model;
pub mod names;
pub mod proxier;
pub mod render;

pub use iptables::{Applied, Cleaned, Iptables, IptablesError, TableName};
pub use model::{CidrError, Ipv4Cidr, Protocol};
pub use proxier::{ConfigError, Proxier, ProxyConfig, describe_metrics};
pub use render::{NodeContext, ProxyInput, RenderStats, Rendered, Table, render};
