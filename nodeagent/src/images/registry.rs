//! Pulling images from registries that speak the OCI distribution API
//! (Docker's registry v2) into the [`Store`], as the kubelet's runtime does.
//!
//! ```text
//!  Store::pull(reference, options)
//!    ├─ GET /v2/NAME/manifests/TAG|DIGEST   (Accept: OCI index, OCI manifest,
//!    │                                      Docker manifest list, Docker manifest)
//!    ├─ an index or list → the linux/<this machine's architecture> manifest
//!    ├─ GET /v2/NAME/blobs/DIGEST            config, then layers; redirects followed,
//!    │                                      streamed to disk while hashed, checked
//!    └─ Store::tag                           name → manifest, config, layers
//! ```
//!
//! A `401` is answered as its `WWW-Authenticate` asks: a `Bearer` token
//! from the realm it names (with the credentials, if any), or `Basic`
//! credentials. Registries named insecure, and loopback ones, are spoken
//! to over plain HTTP; the others over TLS checked against the system's CA
//! bundle. [`Keyring`] finds the credentials for an image in the
//! `.dockerconfigjson` (or legacy `.dockercfg`) of Kubernetes'
//! `imagePullSecrets`, matching as the kubelet does.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use base64::Engine;
use bytes::Bytes;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::{Image, ImageError, Reference, Store, digest_of, hex, io};

/// An OCI image index: manifests for several platforms.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// An OCI image manifest: one config and its layers.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's manifest list, its counterpart of the OCI index.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker's image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// The layer types this node unpacks: plain and gzip-compressed tars.
const LAYER_TYPES: [&str; 7] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    // What `docker save` archives imported here are labelled with.
    "application/x-tar",
];

/// The largest manifest or index accepted (what containerd allows too).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The largest token response or error body read.
const MAX_SMALL_BODY: u64 = 1 << 20;
const MAX_REDIRECTS: usize = 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// From a request sent to its response's headers.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Between two pieces of a response body: a stalled download fails.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Where Debian (and derivatives) keep the trusted CAs.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const USER_AGENT: &str = concat!("keelson/", env!("CARGO_PKG_VERSION"));

/// A user name and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    fn basic(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// How to pull.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Tried in order until the registry accepts one (as the kubelet tries
    /// each matching pull secret); empty: anonymous.
    pub credentials: Vec<Credentials>,
    /// Registries (`HOST:PORT`, or `HOST` for any port) spoken to over
    /// plain HTTP, like Docker's and containerd's insecure registries.
    /// Loopback registries (`localhost`, `127.0.0.0/8`, `::1`) always are.
    pub insecure_registries: Vec<String>,
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(
        "{0:?} is not a name a registry serves (lowercase letters, digits, '.', '_', '-', '/')"
    )]
    BadReference(String),
    #[error("cannot connect to registry {registry}")]
    Connect {
        registry: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with registry {registry} failed")]
    Tls {
        registry: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot trust registries: no CA certificate in {path}")]
    CaBundle { path: PathBuf },
    #[error("HTTP exchange with registry {registry} failed")]
    Http {
        registry: String,
        #[source]
        source: hyper::Error,
    },
    #[error("registry {registry} did not answer within {seconds} s ({what})")]
    Timeout {
        registry: String,
        what: &'static str,
        seconds: u64,
    },
    #[error("{reference}: not found ({message})")]
    NotFound { reference: String, message: String },
    #[error(
        "pull access denied for {reference}, repository does not exist or may require authorization: {message}"
    )]
    Unauthorized { reference: String, message: String },
    #[error("{reference}: {what} {expected} arrived with digest {actual}")]
    DigestMismatch {
        reference: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{reference}: {what} {digest} is not {expected} bytes as its descriptor says")]
    SizeMismatch {
        reference: String,
        what: &'static str,
        digest: String,
        expected: u64,
    },
    #[error("{reference}: {digest:?} is not a sha256 digest")]
    BadDigest { reference: String, digest: String },
    #[error("{reference}: the {what} is larger than {limit} bytes")]
    TooLarge {
        reference: String,
        what: &'static str,
        limit: u64,
    },
    #[error("{reference}: unsupported media type {media_type:?}: {reason}")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
        reason: &'static str,
    },
    #[error("{reference}: the {what} is not valid JSON")]
    Json {
        reference: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{reference}: no {platform} image in its index (it has: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("registry {registry} answered {status} to GET {path}: {message}")]
    Status {
        registry: String,
        status: u16,
        path: String,
        message: String,
    },
    #[error("registry {registry}: {reason}")]
    Protocol { registry: String, reason: String },
    #[error("{reference}: cannot store the image")]
    Store {
        reference: String,
        #[source]
        source: ImageError,
    },
}

/// Why an `imagePullSecrets` docker config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DockerConfigError {
    #[error("the docker config is not a JSON object of registries")]
    Json(#[source] serde_json::Error),
    #[error("the docker config entry for {0:?} has an `auth` that is not base64 of USER:PASSWORD")]
    Auth(String),
}

// ---------------------------------------------------------------------------
// Manifests

/// Where a blob or manifest is, as manifests and indexes describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// An operating system and CPU an image is built for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// This machine: `linux` and its architecture as Go (and so images) names it.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Self {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// The variant, with the one an architecture implies when none is given.
    fn normalized_variant(&self) -> &str {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            (_, Some(variant)) if !variant.is_empty() => variant,
            ("arm64", _) => "v8",
            ("amd64", _) => "v1",
            _ => "",
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) if !variant.is_empty() => write!(f, "/{variant}"),
            _ => Ok(()),
        }
    }
}

/// An image manifest or an index, whichever the JSON is.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestJson {
    #[serde(default)]
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Index,
    Manifest,
}

/// What `bytes` (served as `content_type`) is: the media type the JSON
/// names wins; without one, its shape decides.
fn kind_of(
    reference: &str,
    bytes: &[u8],
    content_type: &str,
) -> Result<(Kind, ManifestJson), PullError> {
    let json: ManifestJson = serde_json::from_slice(bytes).map_err(|source| PullError::Json {
        reference: reference.to_owned(),
        what: "manifest",
        source,
    })?;
    let content_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let media_type = json
        .media_type
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or(content_type);
    let unsupported = |reason| PullError::UnsupportedMediaType {
        reference: reference.to_owned(),
        media_type: media_type.clone(),
        reason,
    };
    let kind = match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => Kind::Index,
        OCI_MANIFEST | DOCKER_MANIFEST => Kind::Manifest,
        DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => {
            return Err(unsupported(
                "Docker image manifests of schema 1 are deprecated and not pulled; push the image again",
            ));
        }
        "" | "application/json" | "text/plain" | "application/octet-stream" => {
            if json.schema_version == 1 {
                return Err(unsupported(
                    "Docker image manifests of schema 1 are deprecated and not pulled; push the image again",
                ));
            } else if !json.manifests.is_empty() {
                Kind::Index
            } else if json.config.is_some() {
                Kind::Manifest
            } else {
                return Err(unsupported("neither an image manifest nor an index"));
            }
        }
        _ => return Err(unsupported("not an image manifest or index")),
    };
    Ok((kind, json))
}

/// The entry of an index for `platform`: its os and architecture, the
/// variant preferred; an entry naming no platform only when no entry
/// names this one (as containerd treats them).
pub fn select_manifest<'a>(
    manifests: &'a [Descriptor],
    platform: &Platform,
) -> Option<&'a Descriptor> {
    let matching = manifests.iter().filter(|m| {
        m.platform.as_ref().is_some_and(|p| {
            p.os == platform.os
                && p.architecture == platform.architecture
                && p.normalized_variant() == platform.normalized_variant()
        })
    });
    let same_arch = manifests.iter().filter(|m| {
        m.platform.as_ref().is_some_and(|p| {
            p.os == platform.os
                && p.architecture == platform.architecture
                && p.variant.as_deref().is_none_or(str::is_empty)
        })
    });
    let unlabelled = manifests.iter().filter(|m| {
        m.platform.is_none() && matches!(m.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST)
    });
    matching.chain(same_arch).chain(unlabelled).next()
}

/// `sha256:` and 64 lowercase hex digits: the only digests blobs are
/// stored (and so can be checked) under.
pub fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The layer media types [`Store::rootfs`] unpacks; a reason for the others.
fn check_layer_type(media_type: &str) -> Result<(), &'static str> {
    if LAYER_TYPES.contains(&media_type) {
        Ok(())
    } else if media_type.ends_with("+zstd") {
        Err("zstd-compressed layers are not supported")
    } else if media_type.contains("foreign") {
        Err("foreign (Windows) layers are not supported")
    } else {
        Err("not a container image layer")
    }
}

// ---------------------------------------------------------------------------
// Authentication

/// One challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `bearer`, `basic`, …: lowercased.
    pub scheme: String,
    /// Parameter names lowercased, values unquoted.
    pub params: BTreeMap<String, String>,
}

/// The challenges of a `WWW-Authenticate` value (RFC 7235: a scheme, then
/// comma-separated `name=value` or `name="quoted value"` parameters; a
/// further scheme may follow). Whatever does not parse is skipped.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut challenges: Vec<Challenge> = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        let token_end = rest.find([' ', '\t', ',', '=']).unwrap_or(rest.len());
        let token = &rest[..token_end];
        if token.is_empty() {
            // A stray '=' or the like: skip a character.
            rest = rest.get(1..).unwrap_or_default();
            continue;
        }
        let after = &rest[token_end..];
        let after_trimmed = after.trim_start_matches([' ', '\t']);
        if let Some(value_start) = after_trimmed.strip_prefix('=')
            && !value_start.starts_with('=')
        {
            // A parameter of the current challenge.
            let value_start = value_start.trim_start_matches([' ', '\t']);
            let (value, remaining) = if let Some(quoted) = value_start.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end.min(quoted.len())..])
            } else {
                let end = value_start.find(',').unwrap_or(value_start.len());
                (value_start[..end].trim().to_owned(), &value_start[end..])
            };
            if let Some(challenge) = challenges.last_mut() {
                challenge.params.insert(token.to_ascii_lowercase(), value);
            }
            rest = remaining;
        } else if after_trimmed.starts_with('=') {
            // token68 (`Basic abc==`): kept as no parameter.
            let end = after_trimmed.find(',').unwrap_or(after_trimmed.len());
            rest = &after_trimmed[end..];
        } else {
            challenges.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
            rest = after;
        }
    }
    challenges
}

/// A token endpoint's answer.
#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// `text` percent-encoded for a query string.
fn query_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            escaped.push(byte as char);
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    escaped
}

// ---------------------------------------------------------------------------
// Credentials from imagePullSecrets

/// Credentials for registries, from docker configs, looked up by image as
/// the kubelet's keyring does: a key is a host (globs like `*.example.com`
/// allowed per label, port significant) with an optional path prefix; the
/// most specific keys come first; `index.docker.io` (and
/// `https://index.docker.io/v1/`) serve every Docker Hub image.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    /// `host[:port][/path]` → credentials, in the order they were added.
    entries: BTreeMap<String, Vec<Credentials>>,
}

/// One entry of a docker config.
#[derive(Deserialize)]
struct DockerConfigEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

const DOCKER_HUB_KEY: &str = "index.docker.io";

/// `key` as host and path: scheme dropped, `/v1/` and `/v2/` meaning the
/// registry itself, the host lowercased.
fn keyring_key(location: &str) -> Option<String> {
    let rest = location
        .strip_prefix("https://")
        .or_else(|| location.strip_prefix("http://"))
        .unwrap_or(location);
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return None;
    }
    let path = if path.starts_with("/v1/") || path.starts_with("/v2/") {
        &path[3..]
    } else {
        path
    };
    let host = host.to_ascii_lowercase();
    Some(if path.is_empty() || path == "/" {
        host
    } else {
        format!("{host}{path}")
    })
}

/// `host[:port][/path]` split into host labels, port and path.
fn split_location(location: &str) -> (Vec<&str>, &str, &str) {
    let (authority, path) = match location.find('/') {
        Some(i) => (&location[..i], &location[i..]),
        None => (location, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port))
            if port.bytes().all(|b| b.is_ascii_digit())
                && (!authority.starts_with('[') || host.ends_with(']')) =>
        {
            (host, port)
        }
        _ => (authority, ""),
    };
    (host.split('.').collect(), port, path)
}

/// `*` and `?` glob of one host label.
fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Whether the keyring key `key` covers the image `target` (`host/path`).
fn key_matches(key: &str, target: &str) -> bool {
    let (key_host, key_port, key_path) = split_location(key);
    let (target_host, target_port, target_path) = split_location(target);
    key_port == target_port
        && key_host.len() == target_host.len()
        && target_path.starts_with(key_path)
        && key_host
            .iter()
            .zip(&target_host)
            .all(|(pattern, label)| glob(pattern, label))
}

impl Keyring {
    /// The credentials of a `.dockerconfigjson` (`{"auths": {HOST: …}}`)
    /// or a legacy `.dockercfg` (`{HOST: …}`); each entry has `auth`
    /// (base64 of `user:password`) or `username` and `password`.
    ///
    /// # Errors
    /// [`DockerConfigError`] if it is not such JSON or an `auth` does not decode.
    pub fn from_docker_config(bytes: &[u8]) -> Result<Self, DockerConfigError> {
        let mut top: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(bytes).map_err(DockerConfigError::Json)?;
        let auths = match top.remove("auths") {
            Some(serde_json::Value::Object(auths)) => auths.into_iter().collect(),
            Some(other) => {
                top.insert("auths".to_owned(), other);
                top
            }
            None => top,
        };
        let mut keyring = Self::default();
        for (location, entry) in auths {
            let Ok(entry) = serde_json::from_value::<DockerConfigEntry>(entry) else {
                continue;
            };
            let (mut username, mut password) = (
                entry.username.unwrap_or_default(),
                entry.password.unwrap_or_default(),
            );
            if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| DockerConfigError::Auth(location.clone()))?;
                let (user, pass) = decoded
                    .split_once(':')
                    .ok_or_else(|| DockerConfigError::Auth(location.clone()))?;
                (username, password) = (user.to_owned(), pass.to_owned());
            }
            if username.is_empty() && password.is_empty() {
                continue;
            }
            let Some(key) = keyring_key(&location) else {
                continue;
            };
            keyring.add(key, Credentials { username, password });
        }
        Ok(keyring)
    }

    fn add(&mut self, key: String, credentials: Credentials) {
        let list = self.entries.entry(key).or_default();
        if !list.contains(&credentials) {
            list.push(credentials);
        }
    }

    /// Adds every entry of `other` (the next pull secret of a pod).
    pub fn extend(&mut self, other: Keyring) {
        for (key, list) in other.entries {
            for credentials in list {
                self.add(key.clone(), credentials);
            }
        }
    }

    /// The credentials to try for `image`, most specific key first; for a
    /// Docker Hub image without a match, those of `index.docker.io`.
    pub fn lookup(&self, image: &Reference) -> Vec<Credentials> {
        let target = image.name().to_ascii_lowercase();
        let mut found: Vec<Credentials> = Vec::new();
        for (key, list) in self.entries.iter().rev() {
            if key_matches(key, &target) {
                found.extend(list.iter().cloned());
            }
        }
        if found.is_empty() && matches!(image.registry.as_str(), "docker.io" | "index.docker.io") {
            found = self
                .entries
                .get(DOCKER_HUB_KEY)
                .cloned()
                .unwrap_or_default();
        }
        found
    }
}

/// The credentials a `.dockerconfigjson` or `.dockercfg` holds for
/// `image`'s registry, most specific first (see [`Keyring`]).
///
/// # Errors
/// [`DockerConfigError`] if the config does not parse.
pub fn credentials_for(
    docker_config: &[u8],
    image: &Reference,
) -> Result<Vec<Credentials>, DockerConfigError> {
    Ok(Keyring::from_docker_config(docker_config)?.lookup(image))
}

// ---------------------------------------------------------------------------
// Where registries are

/// The host serving `registry`'s API: Docker Hub's is not `docker.io`.
pub fn registry_host(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        other => other,
    }
}

/// The host part of `HOST[:PORT]` (brackets kept off IPv6 addresses).
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Whether `registry` is spoken to over plain HTTP.
pub fn is_insecure(registry: &str, options: &PullOptions) -> bool {
    let host = host_of(registry);
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback
        || options.insecure_registries.iter().any(|entry| {
            let entry = entry
                .trim()
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/');
            entry == registry || entry == host
        })
}

/// Whether the repository, tag and registry only have characters that
/// are safe in a URL path.
fn check_reference(reference: &Reference) -> Result<(), PullError> {
    let bad = || PullError::BadReference(reference.to_string());
    let repository_ok = !reference.repository.is_empty()
        && reference.repository.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    let tag_ok = reference.tag.as_deref().is_none_or(|tag| {
        tag.len() <= 128
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    let registry_ok = !reference.registry.is_empty()
        && reference
            .registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !(repository_ok && tag_ok && registry_ok) {
        return Err(bad());
    }
    if let Some(digest) = &reference.digest
        && !is_sha256_digest(digest)
    {
        return Err(PullError::BadDigest {
            reference: reference.to_string(),
            digest: digest.clone(),
        });
    }
    Ok(())
}

/// The TLS configuration: the system's CAs, loaded once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, PullError> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let bundle = Path::new(SYSTEM_CA_BUNDLE);
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(certs) = CertificateDer::pem_file_iter(bundle) {
        roots.add_parsable_certificates(certs.flatten());
    }
    if roots.is_empty() {
        return Err(PullError::CaBundle {
            path: bundle.to_owned(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| PullError::Tls {
            registry: String::new(),
            source: std::io::Error::other(error),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

// ---------------------------------------------------------------------------
// The HTTP client

/// Scheme, host and port: what a connection is to.
type Origin = (bool, String, u16);

fn origin(uri: &Uri) -> Option<Origin> {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return None,
    };
    let host = uri.host()?.trim_matches(['[', ']']).to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Some((https, host, port))
}

/// One pull's conversation with one registry: its connections (kept
/// alive, one per origin) and its authorization once obtained.
struct Client {
    /// `127.0.0.1:5000`, `docker.io`: for messages.
    registry: String,
    /// The image, for messages.
    reference: String,
    repository: String,
    /// `https://registry-1.docker.io`.
    base: String,
    base_origin: Origin,
    credentials: Option<Credentials>,
    /// `Bearer …` or `Basic …`, sent to the registry's origin only.
    authorization: Option<String>,
    connections: BTreeMap<Origin, SendRequest<Body>>,
    /// TLS trusting other CAs than the system's (tests).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Bytes fetched from the network, for the log.
    downloaded: u64,
}

impl Client {
    fn new(
        reference: &Reference,
        options: &PullOptions,
        credentials: Option<&Credentials>,
    ) -> Result<Self, PullError> {
        let scheme = if is_insecure(&reference.registry, options) {
            "http"
        } else {
            "https"
        };
        let base = format!("{scheme}://{}", registry_host(&reference.registry));
        let base_origin = base
            .parse::<Uri>()
            .ok()
            .as_ref()
            .and_then(origin)
            .ok_or_else(|| PullError::BadReference(reference.to_string()))?;
        Ok(Self {
            registry: reference.registry.clone(),
            reference: reference.to_string(),
            repository: reference.repository.clone(),
            base,
            base_origin,
            credentials: credentials.cloned(),
            authorization: None,
            connections: BTreeMap::new(),
            tls: None,
            downloaded: 0,
        })
    }

    fn timeout(&self, what: &'static str, limit: Duration) -> PullError {
        PullError::Timeout {
            registry: self.registry.clone(),
            what,
            seconds: limit.as_secs(),
        }
    }

    fn protocol(&self, reason: impl Into<String>) -> PullError {
        PullError::Protocol {
            registry: self.registry.clone(),
            reason: reason.into(),
        }
    }

    fn http(&self, source: hyper::Error) -> PullError {
        PullError::Http {
            registry: self.registry.clone(),
            source,
        }
    }

    async fn connect(&self, origin: &Origin) -> Result<SendRequest<Body>, PullError> {
        let (https, host, port) = origin;
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host.as_str(), *port)),
        )
        .await
        .map_err(|_| self.timeout("connecting", CONNECT_TIMEOUT))?
        .map_err(|source| {
            // Name the address when it is not the registry's own (Docker
            // Hub's, a redirect's).
            let address = format!("{host}:{port}");
            PullError::Connect {
                registry: if address == self.registry {
                    address
                } else {
                    format!("{} ({address})", self.registry)
                },
                source,
            }
        })?;
        drop(tcp.set_nodelay(true));
        if *https {
            let name = ServerName::try_from(host.clone()).map_err(|error| PullError::Tls {
                registry: self.registry.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, error),
            })?;
            let config = match &self.tls {
                Some(config) => config.clone(),
                None => tls_config()?,
            };
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| self.timeout("the TLS handshake", CONNECT_TIMEOUT))?
                .map_err(|source| PullError::Tls {
                    registry: self.registry.clone(),
                    source,
                })?;
            self.handshake(tls).await
        } else {
            self.handshake(tcp).await
        }
    }

    async fn handshake<T>(&self, io: T) -> Result<SendRequest<Body>, PullError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| self.http(source))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "registry connection ended");
            }
        });
        Ok(sender)
    }

    /// One request on a kept-alive connection to `uri`'s origin (a new one
    /// when there is none, or the kept one turns out to be closed).
    async fn send_once(
        &mut self,
        uri: &Uri,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Response<Incoming>, PullError> {
        let origin = origin(uri).ok_or_else(|| self.protocol(format!("cannot fetch {uri}")))?;
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let kept = self.connections.remove(&origin).filter(|s| !s.is_closed());
            let reused = kept.is_some();
            let mut sender = match kept {
                Some(sender) => sender,
                None => self.connect(&origin).await?,
            };
            let ready = tokio::time::timeout(RESPONSE_TIMEOUT, sender.ready())
                .await
                .map_err(|_| self.timeout("a free connection", RESPONSE_TIMEOUT))?;
            if let Err(source) = ready {
                if reused && attempt < 3 {
                    continue;
                }
                return Err(self.http(source));
            }
            let mut request = Request::get(path.as_str())
                .header(header::HOST, authority.as_str())
                .header(header::USER_AGENT, USER_AGENT);
            if let Some(accept) = accept {
                request = request.header(header::ACCEPT, accept);
            }
            if let Some(authorization) = authorization {
                request = request.header(header::AUTHORIZATION, authorization);
            }
            let request = request
                .body(Body::empty())
                .map_err(|error| self.protocol(format!("cannot request {uri}: {error}")))?;
            match tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(request)).await {
                Err(_) => return Err(self.timeout("waiting for a response", RESPONSE_TIMEOUT)),
                // The server closed a kept-alive connection as it was reused.
                Ok(Err(error)) if reused && attempt < 3 && !error.is_timeout() => {
                    tracing::debug!(%error, "kept-alive registry connection failed; reconnecting");
                }
                Ok(Err(source)) => return Err(self.http(source)),
                Ok(Ok(response)) => {
                    self.connections.insert(origin, sender);
                    return Ok(response);
                }
            }
        }
    }

    /// GET `uri`: authorizing as the registry challenges, following redirects
    /// (credentials go to the registry's own origin only).
    async fn get(
        &mut self,
        uri: Uri,
        accept: Option<&str>,
    ) -> Result<Response<Incoming>, PullError> {
        let mut uri = uri;
        let mut challenged = false;
        for _ in 0..=MAX_REDIRECTS {
            let to_registry = origin(&uri).as_ref() == Some(&self.base_origin);
            let authorization = if to_registry {
                self.authorization.clone()
            } else {
                None
            };
            let response = self
                .send_once(&uri, accept, authorization.as_deref())
                .await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && to_registry && !challenged {
                challenged = true;
                let challenges: Vec<Challenge> = response
                    .headers()
                    .get_all(header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(parse_challenges)
                    .collect();
                let message = self.error_message(response).await;
                self.authorize(&challenges, message).await?;
                continue;
            }
            if status.is_redirection()
                && let Some(location) = response.headers().get(header::LOCATION)
            {
                let next = resolve(&uri, location).ok_or_else(|| {
                    self.protocol(format!("cannot follow a redirect to {location:?}"))
                })?;
                drop(self.error_message(response).await);
                uri = next;
                continue;
            }
            return Ok(response);
        }
        Err(self.protocol(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// Answers the challenges of a `401`; `message` is what the registry said.
    async fn authorize(
        &mut self,
        challenges: &[Challenge],
        message: String,
    ) -> Result<(), PullError> {
        let reference = self.reference.clone();
        let unauthorized = |message: String| PullError::Unauthorized {
            reference: reference.clone(),
            message,
        };
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = bearer
                .params
                .get("realm")
                .ok_or_else(|| self.protocol("its Bearer challenge names no realm"))?;
            let mut query = Vec::new();
            if let Some(service) = bearer.params.get("service") {
                query.push(format!("service={}", query_escape(service)));
            }
            let scope = bearer
                .params
                .get("scope")
                .cloned()
                .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
            for scope in scope.split(' ').filter(|s| !s.is_empty()) {
                query.push(format!("scope={}", query_escape(scope)));
            }
            let separator = if realm.contains('?') { '&' } else { '?' };
            let url = format!("{realm}{separator}{}", query.join("&"));
            let uri: Uri = url
                .parse()
                .map_err(|_| self.protocol(format!("its token realm {realm:?} is not a URL")))?;
            let basic = self.credentials.as_ref().map(Credentials::basic);
            let response = self
                .send_once(&uri, Some("application/json"), basic.as_deref())
                .await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                let said = self.error_message(response).await;
                return Err(unauthorized(format!("the token service refused: {said}")));
            }
            if !status.is_success() {
                let said = self.error_message(response).await;
                return Err(self.protocol(format!("its token service answered {status}: {said}")));
            }
            let body = self
                .read_limited(response.into_body(), MAX_SMALL_BODY, "token response")
                .await?;
            let token: TokenResponse =
                serde_json::from_slice(&body).map_err(|source| PullError::Json {
                    reference: self.reference.clone(),
                    what: "token response",
                    source,
                })?;
            let token = token
                .token
                .filter(|t| !t.is_empty())
                .or(token.access_token)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| self.protocol("its token service returned no token"))?;
            self.authorization = Some(format!("Bearer {token}"));
            return Ok(());
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            return match &self.credentials {
                Some(credentials) if self.authorization.is_none() => {
                    self.authorization = Some(credentials.basic());
                    Ok(())
                }
                _ => Err(unauthorized(message)),
            };
        }
        Err(unauthorized(message))
    }

    /// The next piece of `body`; `None` at its end.
    async fn next_chunk(&self, body: &mut Incoming) -> Result<Option<Bytes>, PullError> {
        loop {
            let frame = tokio::time::timeout(
                READ_TIMEOUT,
                std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)),
            )
            .await
            .map_err(|_| self.timeout("sending a response body", READ_TIMEOUT))?;
            match frame {
                None => return Ok(None),
                Some(Err(source)) => return Err(self.http(source)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// All of `body`, failing past `limit` bytes.
    async fn read_limited(
        &mut self,
        mut body: Incoming,
        limit: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, PullError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = self.next_chunk(&mut body).await? {
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(PullError::TooLarge {
                    reference: self.reference.clone(),
                    what,
                    limit,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        self.downloaded += bytes.len() as u64;
        Ok(bytes)
    }

    /// What an error response says: the `errors` of the distribution API
    /// (`CODE: message`), a token service's `details`, or its text.
    async fn error_message(&mut self, response: Response<Incoming>) -> String {
        let status = response.status();
        let body = self
            .read_limited(response.into_body(), MAX_SMALL_BODY, "error response")
            .await
            .unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let said = if let Some(errors) = json["errors"].as_array()
            && !errors.is_empty()
        {
            errors
                .iter()
                .map(|e| {
                    let code = e["code"].as_str().unwrap_or_default();
                    let message = e["message"].as_str().unwrap_or_default();
                    match (code.is_empty(), message.is_empty()) {
                        (false, false) => format!("{code}: {message}"),
                        (false, true) => code.to_owned(),
                        _ => message.to_owned(),
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        } else if let Some(details) = json["details"].as_str().or(json["message"].as_str()) {
            details.to_owned()
        } else {
            String::from_utf8_lossy(&body)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(200)
                .collect()
        };
        if said.is_empty() {
            status.to_string()
        } else {
            said
        }
    }

    /// Fails on anything but a success, as the status means for `what`.
    async fn check(
        &mut self,
        response: Response<Incoming>,
        what: &'static str,
        path: &str,
    ) -> Result<Response<Incoming>, PullError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let message = self.error_message(response).await;
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => PullError::Unauthorized {
                reference: self.reference.clone(),
                message,
            },
            StatusCode::NOT_FOUND if what == "manifest" => PullError::NotFound {
                reference: self.reference.clone(),
                message,
            },
            _ => PullError::Status {
                registry: self.registry.clone(),
                status: status.as_u16(),
                path: path.to_owned(),
                message,
            },
        })
    }

    fn url(&self, kind: &str, target: &str) -> Result<(Uri, String), PullError> {
        let path = format!("/v2/{}/{kind}/{target}", self.repository);
        let uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|_| PullError::BadReference(self.reference.clone()))?;
        Ok((uri, path))
    }

    /// The manifest or index `target` (a tag or digest) names: its bytes
    /// (at most [`MAX_MANIFEST_BYTES`]), content type and announced digest.
    async fn manifest(
        &mut self,
        target: &str,
    ) -> Result<(Vec<u8>, String, Option<String>), PullError> {
        let (uri, path) = self.url("manifests", target)?;
        let accept = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(", ");
        let response = self.get(uri, Some(&accept)).await?;
        let response = self.check(response, "manifest", &path).await?;
        let header_text = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header_text(header::CONTENT_TYPE).unwrap_or_default();
        let announced = header_text(header::HeaderName::from_static("docker-content-digest"));
        let too_large = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|length| length > MAX_MANIFEST_BYTES);
        if too_large {
            return Err(PullError::TooLarge {
                reference: self.reference.clone(),
                what: "manifest",
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let bytes = self
            .read_limited(response.into_body(), MAX_MANIFEST_BYTES, "manifest")
            .await?;
        Ok((bytes, content_type, announced))
    }

    /// Downloads the blob `descriptor` names into `store`, unless it is
    /// there already: streamed to a temporary file while hashed, checked
    /// against its digest and size, then moved into place.
    async fn blob(
        &mut self,
        store: &Store,
        descriptor: &Descriptor,
        what: &'static str,
    ) -> Result<(), PullError> {
        let digest = descriptor.digest.as_str();
        if store.has_blob(digest) {
            tracing::debug!(digest, what, "already in the store");
            return Ok(());
        }
        let (uri, path) = self.url("blobs", digest)?;
        let response = self.get(uri, None).await?;
        let response = self.check(response, what, &path).await?;
        let expected = descriptor.size;
        let temporary = store
            .root
            .join(format!("blobs/.incoming-{}", uuid::Uuid::new_v4().simple()));
        // Gone however this ends: failed, or the pull abandoned mid-way.
        let _cleanup = RemoveOnDrop(temporary.clone());
        let (chunks, mut incoming) = tokio::sync::mpsc::channel::<Bytes>(16);
        let writing = temporary.clone();
        let writer = tokio::task::spawn_blocking(move || -> Result<(String, u64), ImageError> {
            let mut file = std::fs::File::create(&writing).map_err(io("create", &writing))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = incoming.blocking_recv() {
                hasher.update(&chunk);
                file.write_all(&chunk).map_err(io("write", &writing))?;
                size += chunk.len() as u64;
            }
            file.sync_all().map_err(io("sync", &writing))?;
            Ok((format!("sha256:{}", hex(&hasher.finalize())), size))
        });
        let streamed = async {
            let mut body = response.into_body();
            let mut received = 0u64;
            while let Some(chunk) = self.next_chunk(&mut body).await? {
                received += chunk.len() as u64;
                if expected > 0 && received > expected {
                    return Err(PullError::SizeMismatch {
                        reference: self.reference.clone(),
                        what,
                        digest: digest.to_owned(),
                        expected,
                    });
                }
                if chunks.send(chunk).await.is_err() {
                    // The writer failed: its error says why.
                    break;
                }
            }
            self.downloaded += received;
            Ok(())
        }
        .await;
        drop(chunks);
        let written = writer.await;
        streamed?;
        {
            let (actual, size) = written
                .map_err(|error| PullError::Store {
                    reference: self.reference.clone(),
                    source: ImageError::Io {
                        action: "write",
                        path: temporary.clone(),
                        source: std::io::Error::other(error),
                    },
                })?
                .map_err(|source| PullError::Store {
                    reference: self.reference.clone(),
                    source,
                })?;
            if expected > 0 && size != expected {
                return Err(PullError::SizeMismatch {
                    reference: self.reference.clone(),
                    what,
                    digest: digest.to_owned(),
                    expected,
                });
            }
            if actual != digest {
                return Err(PullError::DigestMismatch {
                    reference: self.reference.clone(),
                    what,
                    expected: digest.to_owned(),
                    actual,
                });
            }
            let target = store.blob_path(digest);
            std::fs::rename(&temporary, &target).map_err(|source| PullError::Store {
                reference: self.reference.clone(),
                source: ImageError::Io {
                    action: "rename",
                    path: target,
                    source,
                },
            })
        }
    }
}

/// A temporary file, removed when this is dropped (if it is still there).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        drop(std::fs::remove_file(&self.0));
    }
}

/// Where a redirect's `Location` (absolute, or relative to `base`) points.
fn resolve(base: &Uri, location: &HeaderValue) -> Option<Uri> {
    let location = location.to_str().ok()?;
    let target: Uri = location.parse().ok()?;
    if target.scheme().is_some() {
        return Some(target);
    }
    let path = if location.starts_with('/') {
        location.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{dir}/{location}")
    };
    format!("{}://{}{path}", base.scheme_str()?, base.authority()?)
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// Pulling into the store

/// Kubelet's size buckets of `kubelet_image_pull_duration_seconds`.
fn size_bucket(bytes: u64) -> &'static str {
    const MB: u64 = 1_000_000;
    const GB: u64 = 1_000 * MB;
    match bytes {
        b if b < 10 * MB => "0-10MB",
        b if b < 100 * MB => "10MB-100MB",
        b if b < 500 * MB => "100MB-500MB",
        b if b < GB => "500MB-1GB",
        b if b < 5 * GB => "1GB-5GB",
        b if b < 10 * GB => "5GB-10GB",
        b if b < 20 * GB => "10GB-20GB",
        b if b < 30 * GB => "20GB-30GB",
        b if b < 40 * GB => "30GB-40GB",
        b if b < 60 * GB => "40GB-60GB",
        b if b < 100 * GB => "60GB-100GB",
        _ => "GT100GB",
    }
}

impl Store {
    /// Pulls `reference` from its registry and records it under its name,
    /// as [`Store::import`] does: afterwards [`Store::get`] finds it and
    /// [`Store::rootfs`] unpacks it. An index resolves to this machine's
    /// platform; the image's `manifest` is that platform's manifest and its
    /// `repo_digest` what the registry serves under the tag (the index).
    /// Manifests and blobs already in the store are not fetched again; each
    /// credential of `options` is tried in turn while the registry refuses.
    ///
    /// # Errors
    /// [`PullError`]: the registry unreachable, the image not found or not
    /// accessible, content not matching its digest, a media type this node
    /// cannot run (schema 1 manifests, zstd layers, non-image artifacts),
    /// or the store failing.
    pub async fn pull(
        &self,
        reference: &Reference,
        options: &PullOptions,
    ) -> Result<Image, PullError> {
        let span = tracing::info_span!(
            "image_pull",
            image = %reference,
            registry = %reference.registry
        );
        async {
            check_reference(reference)?;
            let started = Instant::now();
            let attempts: Vec<Option<&Credentials>> = if options.credentials.is_empty() {
                vec![None]
            } else {
                options.credentials.iter().map(Some).collect()
            };
            let mut refused = None;
            for credentials in attempts {
                let mut client = Client::new(reference, options, credentials)?;
                match self.pull_with(&mut client, reference).await {
                    Ok(image) => {
                        metrics::histogram!(
                            "kubelet_image_pull_duration_seconds",
                            "image_size_in_bytes" => size_bucket(image.size)
                        )
                        .record(started.elapsed().as_secs_f64());
                        tracing::info!(
                            manifest = %image.manifest,
                            downloaded = client.downloaded,
                            seconds = started.elapsed().as_secs_f64(),
                            "pulled the image"
                        );
                        return Ok(image);
                    }
                    Err(error @ PullError::Unauthorized { .. }) => refused = Some(error),
                    Err(error) => return Err(error),
                }
            }
            Err(refused.unwrap_or_else(|| PullError::Unauthorized {
                reference: reference.to_string(),
                message: "no credentials were accepted".to_owned(),
            }))
        }
        .instrument(span)
        .await
    }

    /// The manifest `target` names: from the store when it is a digest
    /// held already, else fetched and checked against the digest.
    async fn fetch_manifest(
        &self,
        client: &mut Client,
        target: &str,
    ) -> Result<(String, Kind, ManifestJson), PullError> {
        let reference = client.reference.clone();
        let stored = |source| PullError::Store {
            reference: reference.clone(),
            source,
        };
        let (bytes, content_type) = if is_sha256_digest(target) && self.has_blob(target) {
            (self.read_blob(target).map_err(stored)?, String::new())
        } else {
            let (bytes, content_type, announced) = client.manifest(target).await?;
            let actual = digest_of(&bytes);
            let expected = if target.contains(':') {
                Some(target.to_owned())
            } else {
                announced.filter(|d| d.starts_with("sha256:"))
            };
            if let Some(expected) = expected
                && expected != actual
            {
                return Err(PullError::DigestMismatch {
                    reference,
                    what: "manifest",
                    expected,
                    actual,
                });
            }
            (bytes, content_type)
        };
        let (kind, json) = kind_of(&client.reference, &bytes, &content_type)?;
        let digest = self.put_blob(&bytes, None).map_err(stored)?;
        Ok((digest, kind, json))
    }

    async fn pull_with(
        &self,
        client: &mut Client,
        reference: &Reference,
    ) -> Result<Image, PullError> {
        let name = reference.to_string();
        let bad_digest = |digest: &str| PullError::BadDigest {
            reference: name.clone(),
            digest: digest.to_owned(),
        };
        let target = reference
            .digest
            .clone()
            .or_else(|| reference.tag.clone())
            .unwrap_or_else(|| "latest".to_owned());
        let (repo_digest, kind, json) = self.fetch_manifest(client, &target).await?;
        let (manifest_digest, manifest) = match kind {
            Kind::Manifest => (repo_digest.clone(), json),
            Kind::Index => {
                let platform = Platform::host();
                let chosen = select_manifest(&json.manifests, &platform).ok_or_else(|| {
                    let available: Vec<String> = json
                        .manifests
                        .iter()
                        .filter_map(|m| m.platform.as_ref().map(Platform::to_string))
                        .collect();
                    PullError::NoPlatform {
                        reference: name.clone(),
                        platform: platform.to_string(),
                        available: if available.is_empty() {
                            "no platforms".to_owned()
                        } else {
                            available.join(", ")
                        },
                    }
                })?;
                if !is_sha256_digest(&chosen.digest) {
                    return Err(bad_digest(&chosen.digest));
                }
                tracing::debug!(digest = %chosen.digest, %platform, "chose from the index");
                let (digest, kind, json) = self.fetch_manifest(client, &chosen.digest).await?;
                if kind != Kind::Manifest {
                    return Err(PullError::UnsupportedMediaType {
                        reference: name.clone(),
                        media_type: chosen.media_type.clone(),
                        reason: "an index inside an index",
                    });
                }
                (digest, json)
            }
        };
        let config = manifest.config.clone().unwrap_or_default();
        if !matches!(config.media_type.as_str(), OCI_CONFIG | DOCKER_CONFIG) {
            return Err(PullError::UnsupportedMediaType {
                reference: name.clone(),
                media_type: config.media_type.clone(),
                reason: "not a container image configuration (an artifact of another kind?)",
            });
        }
        for descriptor in std::iter::once(&config).chain(&manifest.layers) {
            if !is_sha256_digest(&descriptor.digest) {
                return Err(bad_digest(&descriptor.digest));
            }
        }
        for layer in &manifest.layers {
            check_layer_type(&layer.media_type).map_err(|reason| {
                PullError::UnsupportedMediaType {
                    reference: name.clone(),
                    media_type: layer.media_type.clone(),
                    reason,
                }
            })?;
        }
        client.blob(self, &config, "config").await?;
        for layer in &manifest.layers {
            client.blob(self, layer, "layer").await?;
        }
        let image = Image {
            name: name.clone(),
            manifest: manifest_digest,
            config: config.digest,
            layers: manifest
                .layers
                .iter()
                .map(|l| (l.digest.clone(), l.media_type.clone()))
                .collect(),
            size: manifest.layers.iter().map(|l| l.size).sum(),
            repo_digest: Some(repo_digest),
        };
        self.tag(image.clone()).map_err(|source| PullError::Store {
            reference: name,
            source,
        })?;
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(text: &str) -> Reference {
        Reference::parse(text).unwrap()
    }

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    #[test]
    fn docker_configs_yield_credentials_as_the_kubelet_matches_them() {
        let auth = |user: &str| format!(r#"{{"auth":"{}"}}"#, b64(&format!("{user}:pw-{user}")));
        let config = format!(
            r#"{{"auths":{{
                "https://index.docker.io/v1/":{hub},
                "registry.local:5000":{local},
                "registry.local":{noport},
                "my.registry/team":{team},
                "my.registry":{whole},
                "*.corp.example":{glob},
                "plain.example":{{"username":"u","password":"p","email":"x@y"}},
                "empty.example":{{}}
            }}}}"#,
            hub = auth("hub"),
            local = auth("local"),
            noport = auth("noport"),
            team = auth("team"),
            whole = auth("whole"),
            glob = auth("glob"),
        );
        let users = |image: &str| -> Vec<String> {
            credentials_for(config.as_bytes(), &reference(image))
                .unwrap()
                .into_iter()
                .map(|c| c.username)
                .collect()
        };
        let cases: [(&str, &[&str]); 11] = [
            ("busybox", &["hub"]),
            ("docker.io/bitnami/redis:7", &["hub"]),
            ("registry.local:5000/app:v1", &["local"]),
            ("registry.local/app", &["noport"]),
            ("registry.local:6000/app", &[]),
            ("my.registry/team/app", &["team", "whole"]),
            ("my.registry/other/app", &["whole"]),
            ("eu.corp.example/app", &["glob"]),
            ("a.eu.corp.example/app", &[]),
            ("plain.example/x", &["u"]),
            ("empty.example/x", &[]),
        ];
        for (image, expected) in cases {
            assert_eq!(users(image), expected, "credentials for {image}");
        }
        let found = credentials_for(config.as_bytes(), &reference("plain.example/x")).unwrap();
        assert_eq!(found[0].password, "p");
        assert!(!format!("{:?}", found[0]).contains("\"p\""));

        // The legacy .dockercfg: the registries at the top level.
        let legacy = format!(r#"{{"docker.io":{}}}"#, auth("legacy"));
        let found = credentials_for(legacy.as_bytes(), &reference("library/busybox")).unwrap();
        assert_eq!(
            found,
            [Credentials {
                username: "legacy".into(),
                password: "pw-legacy".into()
            }]
        );
        // Several secrets: both match, in the order the pod lists them.
        let mut keyring = Keyring::from_docker_config(legacy.as_bytes()).unwrap();
        keyring.extend(Keyring::from_docker_config(config.as_bytes()).unwrap());
        let users: Vec<String> = keyring
            .lookup(&reference("busybox"))
            .into_iter()
            .map(|c| c.username)
            .collect();
        assert_eq!(
            users,
            ["legacy"],
            "docker.io matches before the index.docker.io fallback"
        );

        assert!(matches!(
            credentials_for(b"[1]", &reference("busybox")),
            Err(DockerConfigError::Json(_))
        ));
        assert!(matches!(
            credentials_for(
                br#"{"auths":{"r.example":{"auth":"%%%"}}}"#,
                &reference("busybox")
            ),
            Err(DockerConfigError::Auth(_))
        ));
        let no_colon = format!(
            r#"{{"auths":{{"r.example":{{"auth":"{}"}}}}}}"#,
            b64("nocolon")
        );
        assert!(credentials_for(no_colon.as_bytes(), &reference("busybox")).is_err());
    }

    /// Challenges as schemes and their parameters.
    type Expected<'a> = Vec<(&'a str, Vec<(&'a str, &'a str)>)>;

    #[test]
    fn www_authenticate_headers_parse() {
        let cases: [(&str, Expected); 6] = [
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
                vec![(
                    "bearer",
                    vec![
                        ("realm", "https://auth.docker.io/token"),
                        ("scope", "repository:library/busybox:pull"),
                        ("service", "registry.docker.io"),
                    ],
                )],
            ),
            (
                r#"Basic realm="keelson-test""#,
                vec![("basic", vec![("realm", "keelson-test")])],
            ),
            (
                r#"basic Realm = "a \"quoted\", realm" , charset=UTF-8"#,
                vec![(
                    "basic",
                    vec![("charset", "UTF-8"), ("realm", r#"a "quoted", realm"#)],
                )],
            ),
            (
                r#"Basic realm="r", Bearer realm="https://t/token", service=s"#,
                vec![
                    ("basic", vec![("realm", "r")]),
                    (
                        "bearer",
                        vec![("realm", "https://t/token"), ("service", "s")],
                    ),
                ],
            ),
            (
                "Negotiate abc==, Basic",
                vec![("negotiate", vec![]), ("basic", vec![])],
            ),
            ("", vec![]),
        ];
        for (header, expected) in cases {
            let parsed: Vec<(String, Vec<(String, String)>)> = parse_challenges(header)
                .into_iter()
                .map(|c| (c.scheme, c.params.into_iter().collect()))
                .collect();
            let expected: Vec<(String, Vec<(String, String)>)> = expected
                .into_iter()
                .map(|(s, p)| {
                    (
                        s.to_owned(),
                        p.into_iter()
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect(),
                    )
                })
                .collect();
            assert_eq!(parsed, expected, "{header}");
        }
        // Unterminated quotes and stray '=' never panic.
        for junk in [r#"Bearer realm="open"#, "=,=", "Bearer ,,, =x", "\"\""] {
            drop(parse_challenges(junk));
        }
    }

    fn entry(digest: char, platform: Option<(&str, &str, Option<&str>)>) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.to_owned(),
            digest: format!("sha256:{}", digest.to_string().repeat(64)),
            size: 1,
            platform: platform.map(|(os, architecture, variant)| Platform {
                os: os.into(),
                architecture: architecture.into(),
                variant: variant.map(Into::into),
            }),
        }
    }

    #[test]
    fn indexes_resolve_to_the_host_platform() {
        let amd64 = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        let arm64 = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        let index = [
            entry('a', Some(("unknown", "unknown", None))),
            entry('b', Some(("linux", "arm", Some("v7")))),
            entry('c', Some(("linux", "arm64", None))),
            entry('d', Some(("windows", "amd64", None))),
            entry('e', Some(("linux", "amd64", None))),
        ];
        let chosen = |index: &[Descriptor], platform| {
            select_manifest(index, platform).map(|d| d.digest.chars().nth(7).unwrap())
        };
        assert_eq!(chosen(&index, &amd64), Some('e'));
        assert_eq!(chosen(&index, &arm64), Some('c'), "arm64 means arm64/v8");
        assert_eq!(chosen(&index[..4], &amd64), None);
        // The variant that matches wins over one that does not.
        let variants = [
            entry('f', Some(("linux", "arm64", Some("v9")))),
            entry('g', Some(("linux", "arm64", Some("v8")))),
        ];
        assert_eq!(chosen(&variants, &arm64), Some('g'));
        // Entries naming no platform are a last resort.
        let unlabelled = [
            entry('h', None),
            entry('e', Some(("linux", "amd64", Some("v1")))),
        ];
        assert_eq!(chosen(&unlabelled, &amd64), Some('e'));
        assert_eq!(chosen(&unlabelled[..1], &amd64), Some('h'));
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert!(!host.architecture.is_empty());
    }

    #[test]
    fn media_types_and_names_are_checked() {
        let kind = |json: &str, content_type: &str| {
            kind_of("x", json.as_bytes(), content_type).map(|(k, _)| k)
        };
        assert_eq!(
            kind(
                r#"{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
                ""
            )
            .unwrap(),
            Kind::Index
        );
        assert_eq!(
            kind(
                r#"{"schemaVersion":2,"config":{"digest":"d"}}"#,
                "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"
            )
            .unwrap(),
            Kind::Manifest
        );
        assert_eq!(
            kind(
                r#"{"schemaVersion":2,"manifests":[{"digest":"d"}]}"#,
                "application/json"
            )
            .unwrap(),
            Kind::Index
        );
        assert!(matches!(
            kind(
                r#"{"schemaVersion":1,"fsLayers":[]}"#,
                DOCKER_SCHEMA1_SIGNED
            ),
            Err(PullError::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            kind("<html>", "text/html"),
            Err(PullError::Json { .. })
        ));
        assert!(
            check_layer_type("application/vnd.oci.image.layer.v1.tar+zstd")
                .unwrap_err()
                .contains("zstd")
        );
        assert!(check_layer_type("application/vnd.docker.image.rootfs.diff.tar.gzip").is_ok());

        assert!(is_sha256_digest(&format!("sha256:{}", "0a".repeat(32))));
        assert!(!is_sha256_digest(&format!("sha256:{}", "0A".repeat(32))));
        assert!(!is_sha256_digest(&format!(
            "sha256:{}/../..",
            "0".repeat(57)
        )));
        assert!(!is_sha256_digest("sha512:00"));
        assert!(check_reference(&reference("registry.local:5000/team/app:v1.2_3")).is_ok());
        let mut weird = reference("registry.local/app");
        weird.repository = "app/../../etc".into();
        assert!(matches!(
            check_reference(&weird),
            Err(PullError::BadReference(_))
        ));
        weird.repository = "app?x=1".into();
        assert!(check_reference(&weird).is_err());
        let mut bad_digest = reference("registry.local/app");
        bad_digest.digest = Some(format!("sha256:{}", "../".repeat(21) + "a"));
        assert!(matches!(
            check_reference(&bad_digest),
            Err(PullError::BadDigest { .. })
        ));

        let insecure = PullOptions {
            insecure_registries: vec!["registry.lan:5000".into(), "http://other.lan".into()],
            ..PullOptions::default()
        };
        for (registry, expected) in [
            ("127.0.0.1:5000", true),
            ("localhost:5000", true),
            ("[::1]:5000", true),
            ("registry.lan:5000", true),
            ("registry.lan:6000", false),
            ("other.lan:443", true),
            ("docker.io", false),
            ("127.example.com", false),
        ] {
            assert_eq!(is_insecure(registry, &insecure), expected, "{registry}");
        }
        assert_eq!(registry_host("docker.io"), "registry-1.docker.io");
        assert_eq!(
            query_escape("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
        assert!(glob("*", "eu") && glob("e?", "eu") && !glob("e?", "eux") && glob("*x*", "axb"));
    }

    /// A registry played in-process: Bearer tokens, blobs redirected to
    /// another origin, and content that lies about its digest.
    mod served {
        use std::sync::Mutex;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use axum::extract::{Path as UrlPath, RawQuery, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::{IntoResponse, Response};
        use axum::routing::get;
        use flate2::Compression;
        use flate2::write::GzEncoder;
        use serde_json::json;

        use super::*;

        const TOKEN: &str = "s3cr3t-token";

        #[derive(Default)]
        struct Fake {
            port: u16,
            manifests: BTreeMap<String, (String, Vec<u8>)>,
            blobs: BTreeMap<String, Vec<u8>>,
            blob_fetches: AtomicUsize,
            token_requests: Mutex<Vec<(String, Option<String>)>>,
        }

        fn authorized(headers: &HeaderMap) -> bool {
            headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {TOKEN}"))
        }

        fn challenge(fake: &Fake) -> Response {
            let header = format!(
                r#"Bearer realm="http://127.0.0.1:{}/token",service="fake",scope="repository:app:pull""#,
                fake.port
            );
            (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", header)],
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            )
                .into_response()
        }

        async fn token(
            State(fake): State<Arc<Fake>>,
            RawQuery(query): RawQuery,
            headers: HeaderMap,
        ) -> Response {
            let basic = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let scope = query
                .unwrap_or_default()
                .split('&')
                .find_map(|pair| pair.strip_prefix("scope=").map(str::to_owned))
                .unwrap_or_default();
            fake.token_requests.lock().unwrap().push((scope, basic));
            let body = json!({"access_token": TOKEN, "expires_in": 300}).to_string();
            ([("content-type", "application/json")], body).into_response()
        }

        async fn manifest(
            State(fake): State<Arc<Fake>>,
            UrlPath(target): UrlPath<String>,
            headers: HeaderMap,
        ) -> Response {
            if !authorized(&headers) {
                return challenge(&fake);
            }
            let accept = headers
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(
                accept.contains(OCI_INDEX) && accept.contains(DOCKER_MANIFEST),
                "{accept}"
            );
            match fake.manifests.get(&target) {
                Some((media_type, bytes)) => {
                    ([("content-type", media_type.clone())], bytes.clone()).into_response()
                }
                None => (
                    StatusCode::NOT_FOUND,
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                )
                    .into_response(),
            }
        }

        async fn blob(
            State(fake): State<Arc<Fake>>,
            UrlPath(digest): UrlPath<String>,
            headers: HeaderMap,
        ) -> Response {
            if !authorized(&headers) {
                return challenge(&fake);
            }
            // Another origin, as registries hand blobs to object stores.
            let location = format!("http://localhost:{}/storage/{digest}?signed=1", fake.port);
            (StatusCode::TEMPORARY_REDIRECT, [("location", location)]).into_response()
        }

        async fn storage(
            State(fake): State<Arc<Fake>>,
            UrlPath(digest): UrlPath<String>,
            headers: HeaderMap,
        ) -> Response {
            assert!(
                headers.get("authorization").is_none(),
                "credentials must not follow a redirect to another origin"
            );
            fake.blob_fetches.fetch_add(1, Ordering::SeqCst);
            match fake.blobs.get(&digest) {
                Some(bytes) => bytes.clone().into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }

        fn layer_tar() -> Vec<u8> {
            let mut builder = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            let contents = b"served over HTTP\n";
            header.set_size(contents.len() as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_cksum();
            builder
                .append_data(&mut header, "etc/motd", &contents[..])
                .unwrap();
            builder.into_inner().unwrap()
        }

        fn gzip(bytes: &[u8]) -> Vec<u8> {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
            encoder.write_all(bytes).unwrap();
            encoder.finish().unwrap()
        }

        async fn serve(mut fake: Fake) -> Arc<Fake> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            fake.port = listener.local_addr().unwrap().port();
            let fake = Arc::new(fake);
            let router = axum::Router::new()
                .route("/token", get(token))
                .route("/v2/app/manifests/{target}", get(manifest))
                .route("/v2/app/blobs/{digest}", get(blob))
                .route("/storage/{digest}", get(storage))
                .with_state(fake.clone());
            tokio::spawn(async move { axum::serve(listener, router).await });
            fake
        }

        /// An index with one amd64 and one arm64 manifest (both the host's
        /// platform's content), a manifest whose config lies, and a
        /// zstd-layered one.
        fn fake_registry() -> (Fake, String) {
            let mut fake = Fake::default();
            let layer = gzip(&layer_tar());
            let layer_digest = digest_of(&layer);
            let config = serde_json::to_vec(
                &json!({"os": "linux", "architecture": Platform::host().architecture}),
            )
            .unwrap();
            let config_digest = digest_of(&config);
            fake.blobs.insert(layer_digest.clone(), layer.clone());
            fake.blobs.insert(config_digest.clone(), config.clone());
            let manifest = |config_digest: &str, layer_type: &str| {
                serde_json::to_vec(&json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
                    "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": layer.len()}],
                }))
                .unwrap()
            };
            let good = manifest(
                &config_digest,
                "application/vnd.oci.image.layer.v1.tar+gzip",
            );
            let good_digest = digest_of(&good);
            let index = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {"mediaType": OCI_MANIFEST, "digest": format!("sha256:{}", "0".repeat(64)), "size": 1,
                     "platform": {"os": "linux", "architecture": "s390x"}},
                    {"mediaType": OCI_MANIFEST, "digest": good_digest, "size": good.len(),
                     "platform": {"os": "linux", "architecture": Platform::host().architecture}},
                ],
            }))
            .unwrap();
            let index_digest = digest_of(&index);
            fake.manifests
                .insert("v1".into(), (OCI_INDEX.into(), index.clone()));
            fake.manifests
                .insert(index_digest, (OCI_INDEX.into(), index));
            fake.manifests
                .insert(good_digest.clone(), (OCI_MANIFEST.into(), good));
            // A config blob whose content is not what its digest says.
            let lying_digest = format!("sha256:{}", "1".repeat(64));
            // As long as the real one, so that only its digest tells.
            let mut lie = config.clone();
            lie[0] = b' ';
            fake.blobs.insert(lying_digest.clone(), lie);
            let lying = manifest(&lying_digest, "application/vnd.oci.image.layer.v1.tar+gzip");
            fake.manifests
                .insert("lying".into(), (OCI_MANIFEST.into(), lying));
            let zstd = manifest(
                &config_digest,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            );
            fake.manifests
                .insert("zstd".into(), (OCI_MANIFEST.into(), zstd));
            (fake, good_digest)
        }

        #[tokio::test]
        async fn pulls_through_bearer_tokens_and_redirects() {
            let (fake, good_digest) = fake_registry();
            let fake = serve(fake).await;
            let root = tempfile::tempdir().unwrap();
            let store = Store::open(root.path()).unwrap();
            let options = PullOptions {
                credentials: vec![Credentials {
                    username: "alice".into(),
                    password: "pw".into(),
                }],
                ..PullOptions::default()
            };
            let name = reference(&format!("127.0.0.1:{}/app:v1", fake.port));
            let image = store.pull(&name, &options).await.unwrap();
            assert_eq!(image.name, name.to_string());
            assert_eq!(image.manifest, good_digest);
            assert_ne!(image.repo_digest.as_deref(), Some(good_digest.as_str()));
            assert_eq!(
                image.layers[0].1,
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
            assert_eq!(store.get(&name).unwrap(), Some(image.clone()));
            let rootfs = store.rootfs(&image).unwrap();
            assert_eq!(
                std::fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
                "served over HTTP\n"
            );
            assert_eq!(
                fake.blob_fetches.load(Ordering::SeqCst),
                2,
                "the config and the layer"
            );
            {
                let requests = fake.token_requests.lock().unwrap();
                assert_eq!(requests[0].0, "repository%3Aapp%3Apull");
                assert_eq!(
                    requests[0].1.as_deref(),
                    Some(Credentials::basic(&options.credentials[0]).as_str())
                );
            }

            // Again: the blobs are there, only the tag is resolved.
            store.pull(&name, &options).await.unwrap();
            assert_eq!(fake.blob_fetches.load(Ordering::SeqCst), 2);
            // By digest: found in the store, nothing fetched at all.
            let pinned = reference(&format!(
                "127.0.0.1:{}/app@{}",
                fake.port,
                image.repo_digest.clone().unwrap()
            ));
            let tokens = fake.token_requests.lock().unwrap().len();
            let by_digest = store.pull(&pinned, &PullOptions::default()).await.unwrap();
            assert_eq!(by_digest.manifest, image.manifest);
            assert_eq!(fake.token_requests.lock().unwrap().len(), tokens);

            let error = |tag: &str| {
                let store = store.clone();
                let name = reference(&format!("127.0.0.1:{}/app:{tag}", fake.port));
                async move {
                    store
                        .pull(&name, &PullOptions::default())
                        .await
                        .unwrap_err()
                }
            };
            let missing = error("missing").await;
            assert!(matches!(missing, PullError::NotFound { .. }), "{missing}");
            assert!(
                missing
                    .to_string()
                    .contains("not found (MANIFEST_UNKNOWN: manifest unknown)"),
                "{missing}"
            );
            let lying = error("lying").await;
            assert!(
                matches!(lying, PullError::DigestMismatch { what: "config", .. }),
                "{lying}"
            );
            let zstd = error("zstd").await;
            assert!(
                zstd.to_string()
                    .contains("zstd-compressed layers are not supported"),
                "{zstd}"
            );
            // Nothing half-written is left behind.
            let leftovers: Vec<_> = std::fs::read_dir(root.path().join("blobs"))
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".incoming"))
                .collect();
            assert!(leftovers.is_empty(), "{leftovers:?}");
        }

        #[tokio::test]
        async fn unreachable_registries_fail_cleanly() {
            let port = {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.local_addr().unwrap().port()
            };
            let root = tempfile::tempdir().unwrap();
            let store = Store::open(root.path()).unwrap();
            let name = reference(&format!("127.0.0.1:{port}/app:v1"));
            let error = store
                .pull(&name, &PullOptions::default())
                .await
                .unwrap_err();
            assert!(matches!(error, PullError::Connect { .. }), "{error}");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("cannot connect to registry 127.0.0.1:{port}"))
            );
        }

        #[tokio::test]
        async fn registries_are_spoken_to_over_tls() {
            use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

            let (fake, good_digest) = fake_registry();
            let fake = Arc::new(fake);
            let certified =
                rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
            let certificate = certified.cert.der().clone();
            let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(
                certified.signing_key.serialize_der(),
            ));
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let server = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![certificate.clone()], key)
                .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let served = fake.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, fake) = (acceptor.clone(), served.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service =
                            hyper::service::service_fn(move |request: Request<Incoming>| {
                                let fake = fake.clone();
                                async move {
                                    let path = request.uri().path();
                                    let found = if let Some(tag) =
                                        path.strip_prefix("/v2/app/manifests/")
                                    {
                                        fake.manifests.get(tag).cloned()
                                    } else if let Some(digest) = path.strip_prefix("/v2/app/blobs/")
                                    {
                                        fake.blobs.get(digest).map(|b| {
                                            ("application/octet-stream".to_owned(), b.clone())
                                        })
                                    } else {
                                        None
                                    };
                                    Ok::<_, std::convert::Infallible>(match found {
                                        Some((media_type, bytes)) => Response::builder()
                                            .header("content-type", media_type)
                                            .body(Body::from(bytes))
                                            .unwrap(),
                                        None => Response::builder()
                                            .status(StatusCode::NOT_FOUND)
                                            .body(Body::empty())
                                            .unwrap(),
                                    })
                                }
                            });
                        drop(
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tls), service)
                                .await,
                        );
                    });
                }
            });

            let root = tempfile::tempdir().unwrap();
            let store = Store::open(root.path()).unwrap();
            let name = reference(&format!("localhost:{port}/app:v1"));
            // `localhost` would be plain HTTP: aim the client at HTTPS.
            let client = |tls: Option<Arc<rustls::ClientConfig>>| {
                let mut client = Client::new(&name, &PullOptions::default(), None).unwrap();
                client.base = format!("https://localhost:{port}");
                client.base_origin = (true, "localhost".to_owned(), port);
                client.tls = tls;
                client
            };
            // The system's CAs do not vouch for this certificate.
            let refused = store.pull_with(&mut client(None), &name).await.unwrap_err();
            assert!(
                matches!(refused, PullError::Tls { .. } | PullError::CaBundle { .. }),
                "{refused}"
            );
            let mut roots = rustls::RootCertStore::empty();
            roots.add(certificate).unwrap();
            let trusting = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let image = store
                .pull_with(&mut client(Some(Arc::new(trusting))), &name)
                .await
                .unwrap();
            assert_eq!(image.manifest, good_digest);
            assert!(store.rootfs(&image).unwrap().join("etc/motd").is_file());
        }
    }
}
