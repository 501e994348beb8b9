//! Cluster DNS: every node agent answers for `*.<cluster domain>` and the
//! reverse zones at the cluster DNS address (say `10.43.0.10:53`, on a
//! dummy interface in the node's namespace), following the Kubernetes DNS
//! specification, with hickory-server doing the wire work.
//!
//! ```text
//!  API server ──watch──► Informer<Service>, Informer<EndpointSlice>
//!                              │ on_event → rebuild
//!                              ▼
//!                        ClusterSource ──Index::build──► SharedIndex
//!                                                           │ current()
//!  pod: "web.ns" + search list ──UDP/TCP :53──► DnsServer ──┤
//!                                                 │         └► Index::lookup → A / AAAA / SRV / PTR / CNAME / TXT,
//!                                                 │                            NXDOMAIN or NODATA with the SOA
//!                                                 └► other names: REFUSED, or the configured upstreams
//! ```
//!
//! The index ([`index`]) is pure and table-tested; [`source`] keeps one
//! current from informers; `handler` answers one question; the server
//! ([`DnsServer`]) owns the sockets. Search-path expansion (`web` →
//! `web.ns.svc.cluster.local`) is the client's, from the resolv.conf the
//! node agent writes; the server only answers fully qualified names.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_control::client::Client;
use keelson_control::runtime::Informer;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

mod forward;
mod handler;
pub mod index;
pub mod metrics;
pub mod source;

pub use forward::{ForwardError, Forwarder};
pub use index::{Answer, Index, IndexConfig, IndexError, PodRecords, Zone};
pub use source::{ClusterSource, SharedIndex};

/// How many responses may wait to be written on one TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;

/// What the DNS server needs, apart from its sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Where [`DnsServer::run`] listens, on UDP and TCP alike (the cluster
    /// DNS address, `10.43.0.10:53`). Unused by [`DnsServer::serve`],
    /// which is handed bound sockets.
    pub listen: Vec<SocketAddr>,
    /// The cluster domain (kubelet's `--cluster-domain`).
    pub cluster_domain: String,
    /// The TTL of answers and of negative answers (CoreDNS: 5 s).
    pub ttl: u32,
    pub pod_records: PodRecords,
    /// Resolvers for names outside the cluster's zones, tried in order.
    /// Empty (the default): such names are `REFUSED` and nothing is sent
    /// anywhere.
    pub upstreams: Vec<SocketAddr>,
    /// How long one upstream gets to answer.
    pub upstream_timeout: Duration,
    /// How long a TCP client may stay idle before it is disconnected.
    pub tcp_idle_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            cluster_domain: "cluster.local".into(),
            ttl: 5,
            pod_records: PodRecords::Insecure,
            upstreams: Vec::new(),
            upstream_timeout: Duration::from_secs(2),
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a [`DnsConfig`] is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cluster domain")]
    ClusterDomain(#[source] IndexError),
    #[error("ttl {ttl} s is above the 3600 s limit")]
    Ttl { ttl: u32 },
    #[error("upstream {upstream} is one of the server's own addresses: queries would loop")]
    UpstreamLoop { upstream: SocketAddr },
    #[error("{what} must be longer than zero")]
    ZeroTimeout { what: &'static str },
}

impl DnsConfig {
    /// Checks the configuration before anything is bound.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Index::build(&self.index_config(), [], []).map_err(ConfigError::ClusterDomain)?;
        if self.ttl > 3600 {
            return Err(ConfigError::Ttl { ttl: self.ttl });
        }
        if let Some(&upstream) = self.upstreams.iter().find(|u| self.listen.contains(u)) {
            return Err(ConfigError::UpstreamLoop { upstream });
        }
        if !self.upstreams.is_empty() && self.upstream_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout {
                what: "upstream timeout",
            });
        }
        if self.tcp_idle_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout {
                what: "TCP idle timeout",
            });
        }
        Ok(())
    }

    /// What the index is built with (serial 1; [`ClusterSource`] sets its own).
    pub fn index_config(&self) -> IndexConfig {
        IndexConfig {
            cluster_domain: self.cluster_domain.clone(),
            ttl: self.ttl,
            pod_records: self.pod_records,
            serial: 1,
        }
    }
}

/// Why the DNS server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid DNS configuration")]
    Config(#[from] ConfigError),
    #[error("no address to listen on")]
    NoListenAddress,
    #[error("cannot bind {proto} {addr}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the DNS index")]
    Index(#[from] IndexError),
    #[error("serving DNS")]
    Serve(#[source] hickory_server::net::NetError),
}

/// Bound sockets for the server: UDP sockets and TCP listeners.
#[derive(Debug, Default)]
pub struct Sockets {
    pub udp: Vec<UdpSocket>,
    pub tcp: Vec<TcpListener>,
}

impl Sockets {
    /// A UDP socket and a TCP listener on each address; with port 0 the
    /// TCP listener takes the port the UDP socket got.
    ///
    /// # Errors
    ///
    /// [`DnsError::Bind`] for the first address that cannot be bound
    /// (binding port 53 needs `CAP_NET_BIND_SERVICE`; a specific address
    /// must be on an interface).
    pub async fn bind(addrs: &[SocketAddr]) -> Result<Self, DnsError> {
        let mut sockets = Self::default();
        for &addr in addrs {
            let udp = UdpSocket::bind(addr)
                .await
                .map_err(|source| DnsError::Bind {
                    addr,
                    proto: "udp",
                    source,
                })?;
            let bound = udp.local_addr().map_err(|source| DnsError::Bind {
                addr,
                proto: "udp",
                source,
            })?;
            let tcp = TcpListener::bind(bound)
                .await
                .map_err(|source| DnsError::Bind {
                    addr: bound,
                    proto: "tcp",
                    source,
                })?;
            sockets.udp.push(udp);
            sockets.tcp.push(tcp);
        }
        Ok(sockets)
    }

    /// The addresses of the UDP sockets.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// The addresses of the TCP listeners.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.udp.is_empty() && self.tcp.is_empty()
    }
}

/// The cluster DNS server.
#[derive(Debug)]
pub struct DnsServer {
    config: DnsConfig,
    index: SharedIndex,
}

impl DnsServer {
    /// A server answering from `index`.
    ///
    /// # Errors
    ///
    /// [`DnsError::Config`] when `config` does not validate.
    pub fn new(config: DnsConfig, index: SharedIndex) -> Result<Self, DnsError> {
        config.validate()?;
        Ok(Self { config, index })
    }

    /// Binds `config.listen`, watches Services and EndpointSlices through
    /// `client`, and serves until `shutdown`: everything a node agent that
    /// shares no informers needs.
    ///
    /// # Errors
    ///
    /// [`DnsError`] when the configuration is invalid, an address cannot
    /// be bound, or a socket fails while serving.
    pub async fn run(
        client: Client,
        config: DnsConfig,
        shutdown: CancellationToken,
    ) -> Result<(), DnsError> {
        config.validate()?;
        if config.listen.is_empty() {
            return Err(DnsError::NoListenAddress);
        }
        let sockets = Sockets::bind(&config.listen).await?;
        let services: Informer<Service> = Informer::new(None);
        let slices: Informer<EndpointSlice> = Informer::new(None);
        let server = Self::new(config, SharedIndex::new())?;
        // The informers stop with the server, whichever stops first.
        let stop = shutdown.child_token();
        let mut informers = tokio::task::JoinSet::new();
        informers.spawn(services.clone().run(client.clone(), stop.clone()));
        informers.spawn(slices.clone().run(client, stop.clone()));
        let result = server
            .serve_cluster(&services, &slices, sockets, stop.clone())
            .await;
        stop.cancel();
        while informers.join_next().await.is_some() {}
        result
    }

    /// Keeps the index current from `services` and `slices` (which the
    /// caller runs, and may share with the service proxy) and serves on
    /// `sockets` until `shutdown`.
    ///
    /// # Errors
    ///
    /// [`DnsError::Index`] for an unusable cluster domain, or what
    /// [`DnsServer::serve`] returns.
    pub async fn serve_cluster(
        self,
        services: &Informer<Service>,
        slices: &Informer<EndpointSlice>,
        sockets: Sockets,
        shutdown: CancellationToken,
    ) -> Result<(), DnsError> {
        let source = ClusterSource::new(services, slices);
        let stop = shutdown.child_token();
        let maintain = source.run(self.config.index_config(), self.index.clone(), stop.clone());
        let serve = async {
            let result = self.serve(sockets, stop.clone()).await;
            stop.cancel();
            result
        };
        let (maintained, served) = tokio::join!(
            async {
                let result = maintain.await;
                if result.is_err() {
                    stop.cancel();
                }
                result
            },
            serve
        );
        maintained?;
        served
    }

    /// Serves questions on `sockets` from the index until `shutdown`.
    ///
    /// # Errors
    ///
    /// [`DnsError::NoListenAddress`] without sockets; [`DnsError::Serve`]
    /// when a socket fails for good.
    pub async fn serve(
        self,
        sockets: Sockets,
        shutdown: CancellationToken,
    ) -> Result<(), DnsError> {
        if sockets.is_empty() {
            return Err(DnsError::NoListenAddress);
        }
        let first = sockets
            .udp_addrs()
            .into_iter()
            .chain(sockets.tcp_addrs())
            .next()
            .map_or_else(|| ":53".to_owned(), |a| a.to_string());
        metrics::describe();
        let forwarder = (!self.config.upstreams.is_empty())
            .then(|| Forwarder::new(self.config.upstreams.clone(), self.config.upstream_timeout));
        tracing::info!(
            udp = ?sockets.udp_addrs(),
            tcp = ?sockets.tcp_addrs(),
            domain = %self.config.cluster_domain,
            upstreams = ?self.config.upstreams,
            "serving cluster DNS"
        );
        let mut server = hickory_server::Server::new(handler::Handler {
            index: self.index,
            cluster_domain: self.config.cluster_domain.clone(),
            forwarder,
            server_label: format!("dns://{first}"),
        });
        for socket in sockets.udp {
            server.register_socket(socket);
        }
        for listener in sockets.tcp {
            server.register_listener(listener, self.config.tcp_idle_timeout, TCP_RESPONSE_BUFFER);
        }
        let token = server.shutdown_token().clone();
        let result = {
            let done = server.block_until_done();
            tokio::pin!(done);
            tokio::select! {
                result = &mut done => result,
                () = shutdown.cancelled() => {
                    token.cancel();
                    done.await
                }
            }
        };
        result.map_err(DnsError::Serve)
    }
}

#[cfg(test)]
mod tests;
