//! The API server's process-level life: certificates, TLS, connections.
//!
//! ```text
//!  run(config, listener, shutdown)
//!    ├─ CA from the store (made by the first member) ─► serving cert, admin kubeconfig
//!    ├─ system namespaces
//!    └─ accept ─► TLS (client certificate optional) ─► HTTP/1.1 or HTTP/2 ─► Api::serve
//! ```
//!
//! A client without a certificate gets through the handshake and is
//! answered `401 Unauthorized`; one whose certificate the cluster CA did not
//! sign fails the handshake.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::join::Bootstrap;
use crate::pki::{ClusterCa, PkiError, kubeconfig};
use crate::secrets::{Sealer, SecretsError};
use crate::storage::{Store, StoreError, Written};

/// The store key of the cluster CA.
/// Where the cluster CA is stored, sealed.
pub const CA_KEY: &[u8] = b"/keelson/pki/ca";
/// The admin's identity in its client certificate (as kubeadm names it).
const ADMIN_USER: &str = "kubernetes-admin";
const ADMIN_GROUP: &str = "system:masters";

/// What the API server needs to start, apart from its listener.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Where `pki/` and `admin.kubeconfig` are written.
    pub data_dir: PathBuf,
    /// etcd endpoints (`http://host:port`) of the store.
    pub store_endpoints: Vec<String>,
    /// TLS towards `https://` store endpoints: the CA and this member's
    /// client certificate.
    pub store_tls: Option<tonic::transport::ClientTlsConfig>,
    /// The CA this member's store TLS uses, stored as the cluster CA if the
    /// store has none yet (the first member of a cluster).
    pub initial_ca: Option<ClusterCa>,
    /// Names and addresses the serving certificate is also valid for.
    pub extra_hosts: Vec<String>,
    /// The kubeconfig's cluster and context name.
    pub cluster_name: String,
    /// Where Service ClusterIPs come from.
    pub service_range: crate::allocate::ServiceRange,
    /// The cluster token: it wraps the key Secrets are encrypted with.
    pub cluster_token: String,
    /// The join token's secret, if the cluster has none yet (`None`: a
    /// random one). A cluster founded with `--cluster-init` uses its
    /// cluster token, so the one token operators keep also restores it.
    pub join_secret: Option<String>,
    /// Take part in the election for running the controllers and the
    /// scheduler (`None`: serve the API only).
    pub controllers: Option<crate::controllers::ControllerConfig>,
    /// What pods tolerate of their node's failures unless they say.
    pub default_tolerations: crate::defaults::DefaultTolerations,
    /// Renders the process's metrics for `GET /metrics`, as Kubernetes'
    /// API server serves its own.
    pub metrics: Option<crate::api::MetricsRender>,
    /// How often the store's history is compacted (kube-apiserver's
    /// `--etcd-compaction-interval`; zero: never).
    pub compaction_interval: Duration,
}

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("cannot reach the store")]
    Store(#[from] StoreError),
    #[error("certificates")]
    Pki(#[from] PkiError),
    #[error("the stored cluster CA is not valid JSON")]
    CorruptCa(#[source] serde_json::Error),
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
    #[error("TLS client verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the listener's address")]
    Listener(#[source] std::io::Error),
    #[error("stopped before the store answered")]
    Stopped,
    #[error("Secrets' key")]
    Secrets(#[from] SecretsError),
}

type Result<T, E = ApiServerError> = std::result::Result<T, E>;

/// Retries `attempt` until it succeeds or `shutdown`: the store may still
/// be electing its first leader when the API server starts.
async fn patiently<T, F, Fut>(shutdown: &CancellationToken, what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(50);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                tracing::debug!(%error, what, "store not ready; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Err(ApiServerError::Stopped),
        }
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// The cluster CA: the one in the store, or a new one stored first; kept
/// sealed, as Secrets are.
/// The cluster CA as stored (sealed) under [`CA_KEY`].
pub fn open_ca(sealer: &Sealer, stored: &[u8]) -> Result<ClusterCa> {
    let opened = sealer.open(stored)?;
    serde_json::from_slice::<ClusterCa>(&opened).map_err(ApiServerError::CorruptCa)
}

/// The cluster CA: from the store, or `initial` (else a new one) stored
/// first by the first member to look.
async fn cluster_ca(
    store: &Store,
    sealer: &Sealer,
    initial: Option<&ClusterCa>,
) -> Result<ClusterCa> {
    let parse = |bytes: &[u8]| open_ca(sealer, bytes);
    if let Some(stored) = store.get(CA_KEY).await? {
        return parse(&stored.value);
    }
    let ca = match initial {
        Some(ca) => ca.clone(),
        None => ClusterCa::generate()?,
    };
    let encoded = serde_json::to_vec(&ca).map_err(ApiServerError::CorruptCa)?;
    match store.create(CA_KEY, sealer.seal(&encoded)).await? {
        Written::Ok(_) => {
            tracing::info!("made the cluster CA");
            Ok(ca)
        }
        // Another member made it first.
        Written::Conflict(Some(stored)) => parse(&stored.value),
        Written::Conflict(None) => Err(ApiServerError::Stopped),
    }
}

fn write(path: &Path, contents: &str, private: bool) -> Result<()> {
    let failed = |source| ApiServerError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    let temporary = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if private { 0o600 } else { 0o644 });
        }
        let mut file = options.open(&temporary).map_err(failed)?;
        file.write_all(contents.as_bytes()).map_err(failed)?;
        file.sync_all().map_err(failed)?;
    }
    std::fs::rename(&temporary, path).map_err(failed)
}

/// The address clients should use: a wildcard listener is reached on loopback.
pub fn reachable(address: SocketAddr) -> SocketAddr {
    let mut address = address;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    address
}

/// The API's serving certificate, replaced while the server runs
/// (`keelson certs rotate`): new handshakes get the new one, established
/// connections keep theirs.
#[derive(Debug)]
struct ServingCertificate(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl ServingCertificate {
    fn certified(issued: &crate::pki::Issued) -> Result<Arc<rustls::sign::CertifiedKey>> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
                .flatten()
                .collect();
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
            .map_err(|e| rustls::Error::General(format!("serving key: {e}")))?;
        let key = rustls::crypto::ring::sign::any_supported_type(&key)?;
        Ok(Arc::new(rustls::sign::CertifiedKey::new(chain, key)))
    }

    fn replace(&self, issued: &crate::pki::Issued) -> Result<()> {
        let certified = Self::certified(issued)?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = certified;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ServingCertificate {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn tls_config(
    ca: &ClusterCa,
    serving: Arc<ServingCertificate>,
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()).flatten() {
        roots.add(cert)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a member issues itself from the cluster CA, at start and on
/// rotation: the API serving certificate, and the admin's credentials.
struct Certificates {
    ca: ClusterCa,
    hosts: Vec<String>,
    data_dir: std::path::PathBuf,
    cluster_name: String,
    server_url: String,
    serving: Arc<ServingCertificate>,
}

impl Certificates {
    /// Issues both, writes them to `DATA_DIR`, serves the new serving
    /// certificate from now on; their expiry dates.
    fn issue(&self) -> Result<serde_json::Value> {
        let serving = self.ca.issue_server(&self.hosts)?;
        let admin = self.ca.issue_client(ADMIN_USER, &[ADMIN_GROUP])?;
        let pki = self.data_dir.join("pki");
        write(&pki.join("ca.crt"), &self.ca.cert_pem, false)?;
        write(&pki.join("apiserver.crt"), &serving.cert_pem, false)?;
        write(&pki.join("apiserver.key"), &serving.key_pem, true)?;
        let admin_config = kubeconfig(
            &self.cluster_name,
            &self.server_url,
            &self.ca.cert_pem,
            ADMIN_USER,
            &admin,
        );
        write(&self.data_dir.join("admin.kubeconfig"), &admin_config, true)?;
        self.serving.replace(&serving)?;
        let expiry = |pem: &str| crate::pki::expiry(pem).map(|at| at.to_rfc3339());
        Ok(serde_json::json!({
            "apiserver": expiry(&serving.cert_pem),
            "admin": expiry(&admin.cert_pem),
            "ca": expiry(&self.ca.cert_pem),
        }))
    }
}

/// Serves the Kubernetes API on `listener` until `shutdown`.
pub async fn run(
    config: ApiConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    crate::metrics::describe();
    let address = reachable(listener.local_addr().map_err(ApiServerError::Listener)?);
    let store = Store::connect(&config.store_endpoints, config.store_tls.clone())?;
    // The key that seals Secrets seals the CA's key too.
    let sealer = patiently(&shutdown, "secrets key", || async {
        match Sealer::from_store(&store, &config.cluster_token).await {
            Err(SecretsError::Store(error)) => Err(ApiServerError::Store(error)),
            other => Ok(other),
        }
    })
    .await??;
    let ca = patiently(&shutdown, "cluster CA", || {
        cluster_ca(&store, &sealer, config.initial_ca.as_ref())
    })
    .await?;
    if let Some(initial) = &config.initial_ca
        && initial.cert_pem != ca.cert_pem
    {
        tracing::error!(
            "the cluster CA in the store is not the one in DATA_DIR/pki: members' store TLS and the API trust different CAs"
        );
    }

    let mut hosts = vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        address.ip().to_string(),
    ];
    hosts.extend(config.extra_hosts.iter().cloned());
    hosts.sort();
    hosts.dedup();
    let placeholder = ca.issue_server(&hosts)?;
    let certificates = Arc::new(Certificates {
        ca: ca.clone(),
        hosts,
        data_dir: config.data_dir.clone(),
        cluster_name: config.cluster_name.clone(),
        server_url: format!("https://{address}"),
        serving: Arc::new(ServingCertificate(std::sync::RwLock::new(
            ServingCertificate::certified(&placeholder)?,
        ))),
    });
    certificates.issue()?;
    let bootstrap = patiently(&shutdown, "join token", || async {
        match Bootstrap::from_store(
            &store,
            &sealer,
            ca.clone(),
            &config.cluster_token,
            config.join_secret.as_deref(),
        )
        .await
        {
            Err(SecretsError::Store(error)) => Err(ApiServerError::Store(error)),
            other => Ok(other),
        }
    })
    .await??;
    let token_file = config.data_dir.join("token");
    write(&token_file, &format!("{}\n", bootstrap.token()), true)?;
    let api = Api::new(
        store,
        sealer,
        bootstrap,
        crate::api::Settings {
            services: config.service_range,
            address: address.to_string(),
            tolerations: config.default_tolerations,
            metrics: config.metrics.clone(),
            rotate: Some(crate::api::RotateCertificates(Arc::new({
                let certificates = certificates.clone();
                move || certificates.issue().map_err(|e| e.to_string())
            }))),
            limits: crate::api::Limits::default(),
            request_timeout: crate::api::REQUEST_TIMEOUT,
        },
        shutdown.clone(),
    );
    patiently(&shutdown, "system objects", || async {
        api.ensure_system_objects().await.map_err(|e| {
            ApiServerError::Store(StoreError::Request(tonic::Status::unavailable(e.message)))
        })
    })
    .await?;

    tokio::spawn(api.clone().count_objects(Duration::from_secs(30)));
    if !config.compaction_interval.is_zero() {
        tokio::spawn(api.clone().compact_history(config.compaction_interval));
    }
    tokio::spawn(api.clone().scrape_resource_metrics());
    tokio::spawn(api.clone().advertise());
    let controllers = config.controllers.clone().map(|controllers| {
        let client = crate::client::Client::in_process(api.clone());
        tokio::spawn(crate::controllers::run(
            client,
            controllers,
            shutdown.clone(),
        ))
    });
    let acceptor = TlsAcceptor::from(tls_config(&ca, certificates.serving.clone())?);
    tracing::info!(address = %address, kubeconfig = %config.data_dir.join("admin.kubeconfig").display(), "serving Kubernetes API");
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        drop(socket.set_nodelay(true));
        let (acceptor, api, shutdown) = (acceptor.clone(), api.clone(), shutdown.clone());
        connections.spawn(async move {
            let tls = match acceptor.accept(socket).await {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::debug!(%peer, %error, "TLS handshake refused");
                    return;
                }
            };
            let certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref());
            let caller = crate::api::Caller::of(certificate);
            let identity = certificate.map(|der| crate::api::Identity {
                user: crate::pki::user(der).unwrap_or_default(),
                groups: crate::pki::groups(der),
            });
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let (api, identity) = (api.clone(), identity.clone());
                    async move {
                        let mut request = request.map(axum::body::Body::new);
                        if let Some(identity) = identity {
                            request.extensions_mut().insert(identity);
                        }
                        Ok::<_, std::convert::Infallible>(api.serve(caller, request).await)
                    }
                },
            );
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            tokio::pin!(connection);
            tokio::select! {
                outcome = connection.as_mut() => {
                    if let Err(error) = outcome {
                        tracing::debug!(%peer, %error, "connection ended");
                    }
                }
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    drop(tokio::time::timeout(Duration::from_secs(5), connection).await);
                }
            }
        });
    }
    if let Some(controllers) = controllers {
        drop(tokio::time::timeout(Duration::from_secs(5), controllers).await);
    }
    connections.close();
    drop(tokio::time::timeout(Duration::from_secs(10), connections.wait()).await);
    tracing::info!("Kubernetes API stopped");
    Ok(())
}
