//! Joining with a token: how agents (and operators adding members) get
//! certificates from the cluster CA without having one yet.
//!
//! ```text
//!  first member: secret (random) ──sealed──► store /keelson/bootstrap/secret
//!  every member writes DATA_DIR/token:  K10<sha256 of the CA>::keelson:<secret>
//!
//!  joiner ── GET  /keelson/v1/cacerts ─────────────► CA (checked against the token's hash)
//!         ── POST /keelson/v1/join {token, name, role} ► CA, certificate, key
//! ```
//!
//! The token's first part pins the cluster CA (as k3s's `K10…` tokens do), so
//! a joiner can trust the server it talks to before it has any certificate;
//! the second part is the secret the server checks. Both endpoints are the
//! only ones served without a client certificate.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::client::{Client, ClientError, Https, Kubeconfig, KubeconfigError};

use crate::pki::ClusterCa;
use crate::secrets::{Sealer, SecretsError};
use crate::status::ApiError;
use crate::storage::{Store, Written};

const SECRET_KEY: &[u8] = b"/keelson/bootstrap/secret";

/// The cluster's join token and the CA it pins.
#[derive(Clone)]
pub struct Bootstrap {
    secret: String,
    ca: ClusterCa,
    /// The cluster token Secrets' key is sealed with (and the store's IDs
    /// are made unique by): members that join need it.
    cluster_token: String,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap").finish_non_exhaustive()
    }
}

/// Hex SHA-256 of the CA certificate, as the token carries it.
fn ca_hash(ca: &ClusterCa) -> String {
    pem_hash(&ca.cert_pem)
}

fn pem_hash(pem: &str) -> String {
    Sha256::digest(pem.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// This release, as joiners announce it and members compare it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `MAJOR.MINOR` of a release string like `0.3.1`.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether a joiner of `version` may join a cluster member of `ours` in
/// `role`: members may differ by one minor release (a rolling upgrade goes
/// one step at a time); node agents may be up to three minor releases
/// older than the control plane, never newer, as Kubernetes allows
/// kubelets. A joiner that says nothing is let in (older releases did not).
pub fn version_skew(role: &str, ours: &str, version: Option<&str>) -> Result<(), String> {
    let Some(version) = version else {
        return Ok(());
    };
    let (Some((major, minor)), Some((our_major, our_minor))) =
        (major_minor(version), major_minor(ours))
    else {
        return Err(format!("version {version:?} is not MAJOR.MINOR.PATCH"));
    };
    let fits = major == our_major
        && match role {
            "server" => minor.abs_diff(our_minor) <= 1,
            _ => minor <= our_minor && our_minor - minor <= 3,
        };
    if fits {
        Ok(())
    } else if role == "server" {
        Err(format!(
            "this member runs {version} and the cluster {ours}: members may differ by one minor release; upgrade one release at a time"
        ))
    } else {
        Err(format!(
            "this agent runs {version} and the control plane {ours}: agents may be up to three minor releases older than the control plane, never newer"
        ))
    }
}

/// Why joining a cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "the token is not a full join token (K10<CA hash>::keelson:<secret>): copy it from a member's DATA_DIR/token"
    )]
    Unpinned,
    #[error("{server} is not an https:// URL of a member's API")]
    BadServer {
        server: String,
        #[source]
        source: KubeconfigError,
    },
    #[error("cannot reach the cluster at {server}")]
    Unreachable {
        server: String,
        #[source]
        source: ClientError,
    },
    #[error(
        "the cluster at {server} has a CA other than the one the token names: wrong server, or a token from another cluster"
    )]
    WrongCa { server: String },
    #[error("the cluster at {server} refused the join")]
    Refused {
        server: String,
        #[source]
        source: ClientError,
    },
    #[error("the cluster at {server} answered the join with something else: {reason}")]
    BadAnswer { server: String, reason: String },
}

/// What a cluster gave a joiner: its CA and its answer to the join
/// (`user`, `certificate`, `key`; for a member also `memberID`, `members`
/// and `clusterToken`).
#[derive(Debug)]
pub struct Joined {
    pub ca_pem: String,
    pub answer: Value,
}

impl Joined {
    /// A string field of the answer.
    pub fn field(&self, name: &str) -> &str {
        self.answer[name].as_str().unwrap_or_default()
    }

    /// A kubeconfig for `server` with the credentials issued.
    pub fn kubeconfig(&self, cluster: &str, server: &str) -> String {
        crate::pki::kubeconfig(
            cluster,
            server,
            &self.ca_pem,
            self.field("user"),
            &crate::pki::Issued {
                cert_pem: self.field("certificate").to_owned(),
                key_pem: self.field("key").to_owned(),
            },
        )
    }
}

impl JoinError {
    /// Whether trying again later may succeed: the cluster was not there
    /// or not ready, rather than refusing.
    pub fn is_transient(&self) -> bool {
        match self {
            JoinError::Unreachable { .. } => true,
            JoinError::Refused { source, .. } => {
                source.code().is_none_or(|code| code >= 500 || code == 429)
            }
            _ => false,
        }
    }
}

/// [`join_cluster`], tried again while the cluster is not there yet (a
/// member started before the one it joins through), every two seconds,
/// until it answers or refuses.
pub async fn join_cluster_patiently(
    server: &str,
    token: &str,
    request: Value,
) -> Result<Joined, JoinError> {
    let mut attempts = 0u32;
    loop {
        match join_cluster(server, token, request.clone()).await {
            Err(error) if error.is_transient() => {
                attempts += 1;
                if attempts == 1 || attempts.is_multiple_of(15) {
                    tracing::info!(%server, error = %crate::runtime::chain(&error), "the cluster does not answer yet; trying again");
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            outcome => return outcome,
        }
    }
}

/// Joins the cluster whose API is at `server` (`https://HOST:PORT`) with
/// `token`: fetches the CA, trusts it only if its hash is the token's, and
/// asks for credentials with `request` (`name`, `role`, …; the token is
/// added).
pub async fn join_cluster(
    server: &str,
    token: &str,
    mut request: Value,
) -> Result<Joined, JoinError> {
    let pin = token
        .split_once("::")
        .and_then(|(pin, _)| pin.strip_prefix("K10"))
        .filter(|pin| pin.len() == 64)
        .ok_or(JoinError::Unpinned)?;
    let bad_server = |source| JoinError::BadServer {
        server: server.to_owned(),
        source,
    };
    let unverified = Client::https(Https::unverified(server).map_err(bad_server)?);
    let ca = unverified
        .request(hyper::Method::GET, "/keelson/v1/cacerts", "", Vec::new())
        .await
        .map_err(|source| JoinError::Unreachable {
            server: server.to_owned(),
            source,
        })?;
    let ca_pem = String::from_utf8_lossy(&ca).into_owned();
    if !same(&pem_hash(&ca_pem), pin) {
        return Err(JoinError::WrongCa {
            server: server.to_owned(),
        });
    }
    let trusted = Client::https(
        Https::new(&Kubeconfig {
            server: server.to_owned(),
            ca_pem: ca_pem.clone(),
            cert_pem: String::new(),
            key_pem: String::new(),
        })
        .map_err(bad_server)?,
    );
    request["token"] = json!(token);
    let answer = trusted
        .request(
            hyper::Method::POST,
            "/keelson/v1/join",
            "application/json",
            request.to_string().into_bytes(),
        )
        .await
        .map_err(|source| JoinError::Refused {
            server: server.to_owned(),
            source,
        })?;
    let answer: Value = serde_json::from_slice(&answer).map_err(|e| JoinError::BadAnswer {
        server: server.to_owned(),
        reason: e.to_string(),
    })?;
    if answer["certificate"].as_str().is_none() {
        return Err(JoinError::BadAnswer {
            server: server.to_owned(),
            reason: "no certificate".into(),
        });
    }
    Ok(Joined { ca_pem, answer })
}

/// Equal strings, compared in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Bootstrap {
    /// The cluster's bootstrap secret: from the store, or new (made by the
    /// first member to look: `new_secret`, else random).
    pub async fn from_store(
        store: &Store,
        sealer: &Sealer,
        ca: ClusterCa,
        cluster_token: &str,
        new_secret: Option<&str>,
    ) -> Result<Self, SecretsError> {
        let open = |raw: &[u8]| -> Result<String, SecretsError> {
            Ok(String::from_utf8_lossy(&sealer.open(raw)?).into_owned())
        };
        let secret = match store.get(SECRET_KEY).await? {
            Some(stored) => open(&stored.value)?,
            None => {
                let secret = new_secret
                    .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
                match store
                    .create(SECRET_KEY, sealer.seal(secret.as_bytes()))
                    .await?
                {
                    Written::Ok(_) => secret,
                    Written::Conflict(Some(stored)) => open(&stored.value)?,
                    Written::Conflict(None) => return Err(SecretsError::Undecryptable),
                }
            }
        };
        Ok(Bootstrap {
            secret,
            ca,
            cluster_token: cluster_token.to_owned(),
        })
    }

    pub fn cluster_token(&self) -> &str {
        &self.cluster_token
    }

    /// `K10<CA hash>::keelson:<secret>`.
    pub fn token(&self) -> String {
        format!("K10{}::keelson:{}", ca_hash(&self.ca), self.secret)
    }

    /// Whether `token` is this cluster's: its secret must match, and its CA
    /// hash too when it has one (a bare secret is accepted as well).
    pub fn accepts(&self, token: &str) -> bool {
        let (pin, secret) = match token.split_once("::") {
            Some((pin, rest)) => (
                pin.strip_prefix("K10"),
                rest.strip_prefix("keelson:").unwrap_or(rest),
            ),
            None => (None, token),
        };
        same(secret, &self.secret) && pin.is_none_or(|pin| same(pin, &ca_hash(&self.ca)))
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// Answers a join request: a certificate for `name` in its role.
    pub fn join(&self, body: &[u8]) -> Result<Value, ApiError> {
        let request: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?;
        let token = request["token"].as_str().unwrap_or_default();
        if !self.accepts(token) {
            return Err(ApiError::unauthorized());
        }
        let name = request["name"].as_str().unwrap_or_default();
        if !crate::object::is_dns_subdomain(name) {
            return Err(ApiError::bad_request(format!(
                "name {name:?} must be a lowercase RFC 1123 subdomain"
            )));
        }
        let role = request["role"].as_str().unwrap_or("agent");
        version_skew(role, VERSION, request["version"].as_str()).map_err(ApiError::bad_request)?;
        // Kubernetes' identities: a node's kubelet, or a control-plane member.
        let (user, groups): (String, &[&str]) = match role {
            "agent" => (format!("system:node:{name}"), &["system:nodes"]),
            "server" => (format!("system:keelson-server:{name}"), &["system:masters"]),
            other => {
                return Err(ApiError::bad_request(format!(
                    "role {other:?} is neither \"agent\" nor \"server\""
                )));
            }
        };
        let issued = self
            .ca
            .issue_client(&user, groups)
            .map_err(|e| ApiError::internal(format!("cannot issue a certificate: {e}")))?;
        tracing::info!(%user, "issued a certificate to a joiner");
        let mut answer = json!({
            "user": user,
            "ca": self.ca.cert_pem,
            "certificate": issued.cert_pem,
            "key": issued.key_pem,
        });
        // A member issues its own store certificates from the CA, as every
        // member's API server does from the copy in the store.
        if role == "server" {
            answer["caKey"] = json!(self.ca.key_pem);
        }
        Ok(answer)
    }
}

impl Bootstrap {
    /// Answers a node agent's request for the certificate its own HTTPS
    /// endpoint serves (`{"node": NAME, "hosts": [ADDRESS, …]}`), as the
    /// kubelet's serving certificate is signed by the cluster: the API
    /// server verifies it when it proxies logs and exec.
    pub fn serving_certificate(&self, body: &[u8]) -> Result<Value, ApiError> {
        let request: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?;
        let node = request["node"].as_str().unwrap_or_default();
        if !crate::object::is_dns_subdomain(node) {
            return Err(ApiError::bad_request(format!(
                "node {node:?} must be a lowercase RFC 1123 subdomain"
            )));
        }
        let hosts: Vec<String> = request["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h.as_str().map(str::to_owned))
            .collect();
        if hosts.is_empty() {
            return Err(ApiError::bad_request(
                "hosts: at least one address or name the certificate is for",
            ));
        }
        let issued = self
            .ca
            .issue_serving(&format!("system:node:{node}"), &hosts)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(json!({
            "ca": self.ca.cert_pem,
            "certificate": issued.cert_pem,
            "key": issued.key_pem,
        }))
    }

    /// The API server's client certificate towards node agents (as
    /// kube-apiserver's `--kubelet-client-certificate`), and the CA.
    pub fn kubelet_client(&self) -> Result<(String, crate::pki::Issued), crate::pki::PkiError> {
        let issued = self
            .ca
            .issue_client("kube-apiserver-kubelet-client", &["system:masters"])?;
        Ok((self.ca.cert_pem.clone(), issued))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap() -> Bootstrap {
        Bootstrap {
            secret: "s3cret".into(),
            ca: ClusterCa::generate().unwrap(),
            cluster_token: "keelson".into(),
        }
    }

    #[test]
    fn versions_may_differ_as_far_as_an_upgrade_goes() {
        assert!(version_skew("server", "0.3.0", Some("0.3.7")).is_ok());
        assert!(version_skew("server", "0.3.0", Some("0.4.0")).is_ok());
        assert!(version_skew("server", "0.3.0", Some("0.2.1")).is_ok());
        let far = version_skew("server", "0.3.0", Some("0.5.0")).unwrap_err();
        assert!(far.contains("one minor release"), "{far}");
        assert!(version_skew("server", "1.0.0", Some("0.9.0")).is_err());
        assert!(version_skew("agent", "0.5.0", Some("0.2.0")).is_ok());
        assert!(version_skew("agent", "0.5.0", Some("0.1.0")).is_err());
        assert!(version_skew("agent", "0.5.0", Some("0.6.0")).is_err());
        assert!(version_skew("agent", "0.5.0", None).is_ok());
        assert!(version_skew("agent", "0.5.0", Some("five")).is_err());
    }

    #[test]
    fn tokens_pin_the_ca_and_carry_the_secret() {
        let b = bootstrap();
        assert!(b.accepts(&b.token()));
        assert!(b.accepts("s3cret"));
        assert!(!b.accepts("guess"));
        assert!(!b.accepts(&b.token().replace("K10", "K10f")));
        let other = Bootstrap {
            ca: ClusterCa::generate().unwrap(),
            ..bootstrap()
        };
        assert!(!b.accepts(&other.token()), "another cluster's CA");
    }

    #[test]
    fn a_joiner_gets_a_certificate_for_its_role() {
        let b = bootstrap();
        let answer = b
            .join(format!(r#"{{"token":"{}","name":"node-1"}}"#, b.token()).as_bytes())
            .unwrap();
        assert_eq!(answer["user"], "system:node:node-1");
        assert!(
            answer["certificate"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert_eq!(
            b.join(br#"{"token":"guess","name":"n"}"#).unwrap_err().code,
            401
        );
        assert_eq!(
            b.join(br#"{"token":"s3cret","name":"Bad_Name"}"#)
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            b.join(br#"{"token":"s3cret","name":"n","role":"king"}"#)
                .unwrap_err()
                .code,
            400
        );
    }
}
