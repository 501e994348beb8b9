//! TLS on a member's store ports, both ways: a member founded with
//! `--cluster-init` or joined with `--join` serves its peer and client ports
//! over TLS and asks every client for a certificate of the cluster CA, as
//! etcd does with `--peer-client-cert-auth` and `--client-cert-auth`. The
//! same certificate identifies it to its peers and to the other members'
//! client ports.
//!
//! ```text
//!  DATA_DIR/pki/ca.crt        the cluster CA (ca.key too on the member that made it)
//!  DATA_DIR/pki/member.crt    this member: server and client, its addresses as names
//!  DATA_DIR/pki/member.key
//! ```

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// A member's certificate and the CA its peers' and clients' must chain to.
#[derive(Clone)]
pub struct MemberTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for MemberTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberTls").finish_non_exhaustive()
    }
}

/// Where a member keeps them, under its data directory.
pub const CA_FILE: &str = "pki/ca.crt";
pub const CERT_FILE: &str = "pki/member.crt";
pub const KEY_FILE: &str = "pki/member.key";

impl MemberTls {
    /// The member's files in `data_dir`, if it has a certificate.
    pub fn read(data_dir: &Path) -> std::io::Result<Option<Self>> {
        let cert = data_dir.join(CERT_FILE);
        if !cert.exists() {
            return Ok(None);
        }
        Ok(Some(Self {
            ca_pem: std::fs::read_to_string(data_dir.join(CA_FILE))?,
            cert_pem: std::fs::read_to_string(cert)?,
            key_pem: std::fs::read_to_string(data_dir.join(KEY_FILE))?,
        }))
    }

    /// The server side: this member's certificate, and clients required
    /// to present one of the cluster CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// The client side: the cluster CA trusted, this member's certificate
    /// presented.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// An endpoint for `url`: over TLS with `tls` when the URL is `https://`.
pub fn endpoint(url: &str, tls: Option<&MemberTls>) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())?;
    match tls {
        Some(tls) if url.starts_with("https://") => endpoint.tls_config(tls.client()),
        _ => Ok(endpoint),
    }
}
