//! A registry for the pull tests: Debian's `docker-registry` (the CNCF
//! distribution registry) serving a temporary directory on loopback, on a
//! port it picks, optionally behind htpasswd (Basic) authentication; and a
//! client of its push API that uploads the busybox image built offline by
//! [`super::images`], with a gzip-compressed layer, as an OCI index (this
//! machine's platform and one other) and as a Docker schema 2 manifest.

#![allow(dead_code, reason = "only the registry tests start registries")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use super::{Spawned, wait_until};

/// Debian's package `docker-registry` installs it here.
const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// `sha256:<hex>` of `bytes`.
pub(crate) fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// This machine's architecture as images name it.
pub(crate) fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An HTTP/1.1 response, read whole.
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl HttpResponse {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on its own connection (`Connection: close`, so the
/// response ends with it).
pub(crate) fn http(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// The data of a chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        let start = line_end + 2;
        if size == 0 || start + size > raw.len() {
            break;
        }
        data.extend_from_slice(&raw[start..start + size]);
        raw = raw.get(start + size + 2..).unwrap_or_default();
    }
    data
}

/// What [`Registry::push_busybox`] pushed.
#[derive(Debug, Clone)]
pub(crate) struct Pushed {
    /// The OCI index the tag names.
    pub(crate) index: String,
    /// Its manifest for this machine's platform.
    pub(crate) manifest: String,
    /// The Docker schema 2 manifest, tagged `TAG-docker`.
    pub(crate) docker_manifest: String,
}

/// A running `docker-registry`, killed (and its storage removed) on drop.
pub(crate) struct Registry {
    /// Declared first: the process goes before its directory.
    process: Spawned,
    address: String,
    /// Basic credentials the pushes use.
    credentials: Option<(String, String)>,
    _dir: TempDir,
}

impl Registry {
    /// An anonymous registry.
    pub(crate) fn start() -> Registry {
        Registry::launch(None)
    }

    /// A registry that wants `username` and `password` (htpasswd, bcrypt).
    pub(crate) fn start_with_htpasswd(username: &str, password: &str) -> Registry {
        Registry::launch(Some((username.to_owned(), password.to_owned())))
    }

    fn launch(credentials: Option<(String, String)>) -> Registry {
        assert!(
            Path::new(DOCKER_REGISTRY).is_file(),
            "{DOCKER_REGISTRY} is missing: deploy/install-deps.sh installs Debian's docker-registry"
        );
        let dir = tempfile::tempdir().expect("a registry directory");
        let auth = match &credentials {
            Some((username, password)) => {
                let htpasswd = dir.path().join("htpasswd");
                let output = Command::new("htpasswd")
                    .args(["-nbB", username, password])
                    .output()
                    .expect("run htpasswd (apache2-utils; deploy/install-deps.sh installs it)");
                assert!(output.status.success(), "htpasswd failed: {output:?}");
                std::fs::write(&htpasswd, &output.stdout).expect("write the htpasswd file");
                format!(
                    "auth:\n  htpasswd:\n    realm: keelson-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:0\n  secret: keelson-test-secret\n\
                 {auth}",
                dir.path().join("data").display()
            ),
        )
        .expect("write the registry config");
        let mut command = Command::new(DOCKER_REGISTRY);
        command.arg("serve").arg(&config);
        let process = Spawned::start(command, "docker-registry");
        // It logs the address it bound (port 0: one of its choosing).
        let line = process.await_line("listening on ");
        let address = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(['"', ' ']).next())
            .expect("an address after `listening on`")
            .to_owned();
        let registry = Registry {
            process,
            address,
            credentials,
            _dir: dir,
        };
        wait_until(STARTUP_DEADLINE, "the registry to answer GET /v2/", || {
            http(&registry.address, "GET", "/v2/", &[], b"")
                .is_ok_and(|response| matches!(response.status, 200 | 401))
        });
        registry
    }

    /// `127.0.0.1:PORT`.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> HttpResponse {
        let mut headers = headers.to_vec();
        if let Some((username, password)) = &self.credentials {
            use base64::Engine;
            let pair =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            headers.push(("Authorization", format!("Basic {pair}")));
        }
        http(&self.address, method, path, &headers, body)
            .unwrap_or_else(|error| panic!("{method} {path} on the registry: {error}"))
    }

    /// Uploads a blob (a POST opening an upload, a PUT closing it with
    /// the content); its digest.
    pub(crate) fn push_blob(&self, repository: &str, bytes: &[u8]) -> String {
        let digest = digest(bytes);
        let opened = self.request(
            "POST",
            &format!("/v2/{repository}/blobs/uploads/"),
            &[],
            b"",
        );
        assert_eq!(opened.status, 202, "opening an upload: {}", opened.text());
        let location = opened.header("location").expect("an upload location");
        let location = location
            .strip_prefix(&format!("http://{}", self.address))
            .unwrap_or(location);
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = self.request(
            "PUT",
            &format!("{location}{separator}digest={digest}"),
            &[("Content-Type", "application/octet-stream".to_owned())],
            bytes,
        );
        assert_eq!(put.status, 201, "uploading {digest}: {}", put.text());
        digest
    }

    /// Puts a manifest under `reference` (a tag or its digest); its digest.
    pub(crate) fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let put = self.request(
            "PUT",
            &format!("/v2/{repository}/manifests/{reference}"),
            &[("Content-Type", media_type.to_owned())],
            bytes,
        );
        assert_eq!(
            put.status,
            201,
            "pushing {repository}:{reference}: {}",
            put.text()
        );
        let digest = digest(bytes);
        assert_eq!(put.header("docker-content-digest"), Some(digest.as_str()));
        digest
    }

    /// Pushes the busybox image as `repository:tag` (an OCI index of this
    /// machine's platform and one other) and `repository:tag-docker` (a
    /// Docker schema 2 manifest); the layer is gzip-compressed.
    pub(crate) fn push_busybox(&self, repository: &str, tag: &str) -> Pushed {
        let layer = busybox_layer();
        let diff_id = digest(&layer);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&layer).expect("gzip the layer");
        let compressed = encoder.finish().expect("gzip the layer");
        let layer_digest = self.push_blob(repository, &compressed);
        let config = |architecture: &str| {
            json!({
                "architecture": architecture,
                "os": "linux",
                "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            })
            .to_string()
            .into_bytes()
        };
        let manifest = |media_type: &str, config: &[u8], config_type: &str, layer_type: &str| {
            json!({
                "schemaVersion": 2,
                "mediaType": media_type,
                "config": {"mediaType": config_type, "digest": digest(config), "size": config.len()},
                "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": compressed.len()}],
            })
            .to_string()
            .into_bytes()
        };
        let host = host_architecture();
        let other = if host == "arm64" { "amd64" } else { "arm64" };
        let mut entries = Vec::new();
        let mut host_manifest = String::new();
        for architecture in [other, host] {
            let config = config(architecture);
            self.push_blob(repository, &config);
            let bytes = manifest(
                OCI_MANIFEST,
                &config,
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar+gzip",
            );
            let digest = self.push_manifest(repository, &digest(&bytes), OCI_MANIFEST, &bytes);
            entries.push(json!({
                "mediaType": OCI_MANIFEST, "digest": digest, "size": bytes.len(),
                "platform": {"os": "linux", "architecture": architecture},
            }));
            host_manifest = digest;
        }
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
            .to_string()
            .into_bytes();
        let index = self.push_manifest(repository, tag, OCI_INDEX, &index);
        let config = config(host);
        self.push_blob(repository, &config);
        let docker = manifest(
            DOCKER_MANIFEST,
            &config,
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        );
        let docker_manifest = self.push_manifest(
            repository,
            &format!("{tag}-docker"),
            DOCKER_MANIFEST,
            &docker,
        );
        Pushed {
            index,
            manifest: host_manifest,
            docker_manifest,
        }
    }
}

/// The layer tar of the busybox image [`super::images`] builds.
fn busybox_layer() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let archive = dir.path().join("busybox.tar");
    super::images::busybox_archive(&archive, "keelson.test/busybox:1");
    let file = std::fs::File::open(&archive).expect("open the archive");
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().expect("read the archive") {
        let mut entry = entry.expect("an archive entry");
        if entry.path().expect("an entry path").ends_with("layer.tar") {
            let mut layer = Vec::new();
            entry.read_to_end(&mut layer).expect("read the layer");
            return layer;
        }
    }
    panic!("the busybox archive has no layer.tar");
}
