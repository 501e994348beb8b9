//! The client's HTTPS transport: one HTTP/2 connection to the API server,
//! authenticated with a client certificate, made again when it breaks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use base64::Engine;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::sync::Mutex;

use super::{ClientError, Result};

/// Why a kubeconfig cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no {field}")]
    Missing { path: PathBuf, field: &'static str },
    #[error("{field} in {path} is not valid base64")]
    Base64 { path: PathBuf, field: &'static str },
    #[error("the server URL {0} is not https://HOST:PORT")]
    Server(String),
    #[error("TLS configuration from {path}")]
    Tls {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// What a kubeconfig with embedded credentials says: where the server is,
/// the CA that signed it, and the client's certificate and key. Only the
/// first cluster and user are read, as the kubeconfigs Keelson writes have
/// one of each.
#[derive(Clone, Debug)]
pub struct Kubeconfig {
    pub server: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Kubeconfig {
    pub fn read(path: &Path) -> Result<Self, KubeconfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| KubeconfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, KubeconfigError> {
        let field = |field: &'static str| {
            text.lines()
                .filter_map(|line| line.trim().strip_prefix(field))
                .find_map(|rest| rest.strip_prefix(':'))
                .map(|value| value.trim().trim_matches('"').to_owned())
                .ok_or_else(|| KubeconfigError::Missing {
                    path: path.to_owned(),
                    field,
                })
        };
        let data = |name: &'static str| {
            let encoded = field(name)?;
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| KubeconfigError::Base64 {
                    path: path.to_owned(),
                    field: name,
                })
        };
        Ok(Self {
            server: field("server")?,
            ca_pem: data("certificate-authority-data")?,
            cert_pem: data("client-certificate-data")?,
            key_pem: data("client-key-data")?,
        })
    }
}

/// HTTPS to one API server.
#[derive(Clone)]
pub struct Https {
    /// `host:port`.
    authority: String,
    host: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
    connection: Arc<Mutex<Option<SendRequest<Body>>>>,
}

impl std::fmt::Debug for Https {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Https")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Https {
    /// HTTPS to `config.server`, trusting its CA and presenting its
    /// client certificate (none when `cert_pem` is empty: only the join
    /// endpoints and the health checks answer such a client).
    pub fn new(config: &Kubeconfig) -> Result<Self, KubeconfigError> {
        let tls = |source| KubeconfigError::Tls {
            path: PathBuf::from(&config.server),
            source,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(config.ca_pem.as_bytes()).flatten() {
            roots.add(cert).map_err(tls)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .with_root_certificates(roots);
        let client = if config.cert_pem.is_empty() {
            builder.with_no_client_auth()
        } else {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(config.cert_pem.as_bytes())
                    .flatten()
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(config.key_pem.as_bytes())
                .map_err(|e| tls(rustls::Error::General(format!("client key: {e}"))))?;
            builder.with_client_auth_cert(chain, key).map_err(tls)?
        };
        Self::with_tls(&config.server, client)
    }

    /// HTTPS to `server` without checking who answers. Only for fetching
    /// the cluster CA before it is known, whose hash the caller then checks
    /// against the one the join token carries.
    pub fn unverified(server: &str) -> Result<Self, KubeconfigError> {
        let tls = |source| KubeconfigError::Tls {
            path: PathBuf::from(server),
            source,
        };
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
            .with_no_client_auth();
        Self::with_tls(server, client)
    }

    fn with_tls(server: &str, mut client: rustls::ClientConfig) -> Result<Self, KubeconfigError> {
        let authority = server
            .strip_prefix("https://")
            .map(|rest| rest.trim_end_matches('/').to_owned())
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| KubeconfigError::Server(server.to_owned()))?;
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host,
            _ => authority.as_str(),
        };
        let host = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|_| KubeconfigError::Server(server.to_owned()))?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            authority,
            host,
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            connection: Arc::new(Mutex::new(None)),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Body>> {
        let server = self.authority.clone();
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|source| ClientError::Connect {
                server: server.clone(),
                source,
            })?;
        drop(tcp.set_nodelay(true));
        let tls = self
            .connector
            .connect(self.host.clone(), tcp)
            .await
            .map_err(|source| ClientError::Tls { server, source })?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "API connection ended");
            }
        });
        Ok(sender)
    }

    /// The open connection, or a new one.
    async fn sender(&self) -> Result<SendRequest<Body>> {
        let mut connection = self.connection.lock().await;
        if let Some(sender) = connection.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let sender = self.connect().await?;
        *connection = Some(sender.clone());
        Ok(sender)
    }

    pub(super) async fn send(&self, request: Request<Body>) -> Result<Response<Body>> {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        parts.uri = format!("https://{}{path}", self.authority)
            .parse()
            .map_err(
                |source: hyper::http::uri::InvalidUri| ClientError::Request {
                    path: path.clone(),
                    source: source.into(),
                },
            )?;
        let mut sender = self.sender().await?;
        sender.ready().await?;
        let response = sender
            .send_request(Request::from_parts(parts, body))
            .await?;
        Ok(response.map(Body::new))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate whose signature is sound (see
/// [`Https::unverified`]).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kubeconfigs_keelson_writes() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let text = format!(
            "clusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64("CA"),
            b64("CERT"),
            b64("KEY")
        );
        let config = Kubeconfig::parse(Path::new("k"), &text).unwrap();
        assert_eq!(config.server, "https://127.0.0.1:6443");
        assert_eq!(
            (
                config.ca_pem.as_str(),
                config.cert_pem.as_str(),
                config.key_pem.as_str()
            ),
            ("CA", "CERT", "KEY")
        );
        let missing = Kubeconfig::parse(Path::new("k"), "server: https://x:1\n").unwrap_err();
        assert!(matches!(
            missing,
            KubeconfigError::Missing {
                field: "certificate-authority-data",
                ..
            }
        ));
    }
}
