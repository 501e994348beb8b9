//! The cluster's certificates: one CA, the API server's serving
//! certificates and client certificates, and the admin kubeconfig.
//!
//! ```text
//!  store key /keelson/pki/ca ──► ClusterCa ──issue_server(hosts)──► apiserver.crt (each member)
//!        (created once,                     └─issue_client(cn, o)──► admin.crt ─► admin.kubeconfig
//!         shared by all members)
//! ```
//!
//! The CA is made by whichever member first finds none in the store and is
//! then read by every other member, so a certificate issued by one member is
//! trusted by all. The CA's parameters are fixed ([`ca_params`]), so a CA read
//! back from its PEM signs exactly as the one that made it.

use std::net::IpAddr;

use base64::Engine;
use chrono::{Datelike, Duration, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make the {what}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("the stored cluster CA is unreadable")]
    CorruptCa {
        #[source]
        source: rcgen::Error,
    },
    #[error("{host:?} is neither an IP address nor a DNS name")]
    BadHost { host: String },
}

type Result<T, E = PkiError> = std::result::Result<T, E>;

const CA_NAME: &str = "keelson-ca";

/// The cluster CA: its certificate and private key, as PEM.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClusterCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

/// A certificate issued by the CA, and its key, as PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// From a day ago (clock skew between machines) to `years` from now.
fn validity(params: &mut CertificateParams, years: i32) {
    let from = Utc::now() - Duration::days(1);
    params.not_before = rcgen::date_time_ymd(from.year(), from.month() as u8, from.day() as u8);
    params.not_after = rcgen::date_time_ymd(
        from.year() + years,
        from.month() as u8,
        from.day().min(28) as u8,
    );
}

/// The CA's fixed parameters: what makes a CA read back from PEM sign as
/// the one that was generated.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The groups (subject organizations) of a DER certificate, as Kubernetes
/// reads them; none if it does not parse.
pub fn groups(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    cert.subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect()
}

/// The user a client certificate (DER) names: its subject's common name.
pub fn user(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok().map(str::to_owned))
}

/// When the first certificate in `pem` expires; `None` if there is none
/// that parses.
pub fn expiry(pem: &str) -> Option<chrono::DateTime<Utc>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
}

impl ClusterCa {
    /// A new CA, valid for ten years.
    pub fn generate() -> Result<Self> {
        let generate = |source| PkiError::Generate {
            what: "cluster CA",
            source,
        };
        let key = KeyPair::generate().map_err(generate)?;
        let mut params = ca_params();
        validity(&mut params, 10);
        let cert = params.self_signed(&key).map_err(generate)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key =
            KeyPair::from_pem(&self.key_pem).map_err(|source| PkiError::CorruptCa { source })?;
        Ok(Issuer::new(ca_params(), key))
    }

    fn issue(&self, mut params: CertificateParams, what: &'static str) -> Result<Issued> {
        let generate = |source| PkiError::Generate { what, source };
        validity(&mut params, 1);
        let key = KeyPair::generate().map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer()?).map_err(generate)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A serving certificate for `hosts` (IP addresses or DNS names).
    pub fn issue_server(&self, hosts: &[String]) -> Result<Issued> {
        self.issue_serving("kube-apiserver", hosts)
    }

    /// A serving certificate named `common_name` for `hosts` (IP addresses
    /// or DNS names): the API server's, or a node agent's.
    pub fn issue_serving(&self, common_name: &str, hosts: &[String]) -> Result<Issued> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        name_hosts(&mut params, hosts)?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, "API serving certificate")
    }

    /// A store member's certificate for `hosts`: it serves the member's
    /// peer and client ports and identifies it to the other members'.
    pub fn issue_member(&self, name: &str, hosts: &[String]) -> Result<Issued> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        name_hosts(&mut params, hosts)?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params, "member certificate")
    }

    /// A client certificate: Kubernetes reads the user from the common name
    /// and the groups from the organizations.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<Issued> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, "client certificate")
    }
}

/// Makes the certificate valid for `hosts` (IP addresses or DNS names).
fn name_hosts(params: &mut CertificateParams, hosts: &[String]) -> Result<()> {
    for host in hosts {
        let bad = || PkiError::BadHost { host: host.clone() };
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if is_dns_name(host) => {
                SanType::DnsName(host.clone().try_into().map_err(|_| bad())?)
            }
            Err(_) => return Err(bad()),
        };
        params.subject_alt_names.push(san);
    }
    Ok(())
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A kubeconfig for `user`, trusting the cluster CA, pointed at `server`,
/// with one context named `name` selected.
pub fn kubeconfig(name: &str, server: &str, ca_pem: &str, user: &str, client: &Issued) -> String {
    let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {user}
current-context: {name}
preferences: {{}}
",
        ca = b64(ca_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_read_from_the_organizations() {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let ca = ClusterCa::generate().unwrap();
        let der = |pem: &str| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .next()
                .unwrap()
                .unwrap()
                .to_vec()
        };
        let admin = ca.issue_client("admin", &["system:masters"]).unwrap();
        assert_eq!(groups(&der(&admin.cert_pem)), ["system:masters"]);
        let node = ca
            .issue_client("system:node:n1", &["system:nodes"])
            .unwrap();
        assert_eq!(groups(&der(&node.cert_pem)), ["system:nodes"]);
        assert_eq!(
            user(&der(&node.cert_pem)).as_deref(),
            Some("system:node:n1")
        );
        assert!(groups(b"junk").is_empty());
    }

    #[test]
    fn expiry_reads_the_certificates_made_here() {
        let ca = ClusterCa::generate().unwrap();
        let in_ten_years = expiry(&ca.cert_pem).unwrap() - Utc::now();
        assert!((3640..=3660).contains(&in_ten_years.num_days()));
        let client = ca.issue_client("u", &[]).unwrap();
        let in_a_year = expiry(&client.cert_pem).unwrap() - Utc::now();
        assert!((360..=370).contains(&in_a_year.num_days()));
        assert_eq!(expiry("not a certificate"), None);
    }

    #[test]
    fn a_ca_read_back_issues_certificates() {
        let ca = ClusterCa::generate().unwrap();
        let again: ClusterCa = serde_json::from_str(&serde_json::to_string(&ca).unwrap()).unwrap();
        let server = again
            .issue_server(&["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        assert!(server.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let client = again.issue_client("admin", &["system:masters"]).unwrap();
        let config = kubeconfig(
            "keelson",
            "https://127.0.0.1:6443",
            &ca.cert_pem,
            "admin",
            &client,
        );
        assert!(config.contains("current-context: keelson"));
    }

    #[test]
    fn a_host_that_is_no_name_is_refused() {
        let ca = ClusterCa::generate().unwrap();
        assert!(matches!(
            ca.issue_server(&["not a host!".into()]),
            Err(PkiError::BadHost { .. })
        ));
    }
}
