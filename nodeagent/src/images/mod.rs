//! The node's image store: content-addressed blobs and the names that
//! point at them, as an OCI image layout keeps them.
//!
//! ```text
//!  ROOT/blobs/sha256/<hex>   every manifest, config and layer, named by its digest (checked on write)
//!  ROOT/images.json          name:tag → manifest digest, config digest, layer digests, size
//!  ROOT/rootfs/<hex>         an image's layers flattened (see [`unpack`]), by manifest digest
//! ```
//!
//! Images come in through [`Store::import`] (OCI layout or `docker save`
//! tarballs, possibly gzip-compressed, for air-gapped nodes) and
//! [`Store::pull`] (from registries speaking the OCI distribution API;
//! see [`registry`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod import;
pub mod reference;
pub mod registry;
pub mod unpack;

pub use reference::Reference;
pub use registry::{Credentials, Keyring, PullError, PullOptions, credentials_for};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Reference(#[from] reference::BadReference),
    #[error("{file} is neither an OCI image layout nor a `docker save` archive: {reason}")]
    Format { file: PathBuf, reason: String },
    #[error("blob {expected} has digest {actual}")]
    Digest { expected: String, actual: String },
    #[error("no image {0}")]
    NotFound(String),
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_owned();
    move |source| ImageError::Io {
        action,
        path,
        source,
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One image the store knows by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `docker.io/library/busybox:1.36`.
    pub name: String,
    pub manifest: String,
    /// The config blob's digest: the image's ID.
    pub config: String,
    /// Layer blob digests, bottom first, with their media types.
    pub layers: Vec<(String, String)>,
    /// Bytes of its layers (as stored: compressed when they are).
    pub size: u64,
    /// What a registry serves the image as (for a multi-platform image,
    /// its index: `manifest` is this platform's manifest in it); `None`
    /// for imported images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_digest: Option<String>,
}

/// The image store under one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store at `root` (made if missing).
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join("blobs/sha256")).map_err(io("create", root))?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Stores `bytes` as the blob `expected` (checked), or under their
    /// own digest when `expected` is `None`; the digest.
    pub fn put_blob(&self, bytes: &[u8], expected: Option<&str>) -> Result<String> {
        let digest = digest_of(bytes);
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(ImageError::Digest {
                expected: expected.to_owned(),
                actual: digest,
            });
        }
        let path = self.blob_path(&digest);
        if !path.is_file() {
            write_atomically(&path, bytes)?;
        }
        Ok(digest)
    }

    /// Copies a file into the store as a blob, hashing as it goes; the digest and size.
    pub fn put_blob_file(&self, file: &Path) -> Result<(String, u64)> {
        let mut input = std::fs::File::open(file).map_err(io("open", file))?;
        let temporary = self
            .root
            .join(format!("blobs/.incoming-{}", uuid::Uuid::new_v4().simple()));
        let mut output = std::fs::File::create(&temporary).map_err(io("create", &temporary))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let read = input.read(&mut buffer).map_err(io("read", file))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            output
                .write_all(&buffer[..read])
                .map_err(io("write", &temporary))?;
            size += read as u64;
        }
        output.sync_all().map_err(io("sync", &temporary))?;
        let digest = format!("sha256:{}", hex(&hasher.finalize()));
        let path = self.blob_path(&digest);
        std::fs::rename(&temporary, &path).map_err(io("rename", &path))?;
        Ok((digest, size))
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        std::fs::read(&path).map_err(io("read", &path))
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    /// Every image, by name.
    pub fn list(&self) -> Result<BTreeMap<String, Image>> {
        let path = self.index_path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| ImageError::Json { path, source })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(ImageError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// The image `reference` names, if present.
    pub fn get(&self, reference: &Reference) -> Result<Option<Image>> {
        Ok(self.list()?.remove(&reference.to_string()))
    }

    /// Records `image` under its name (replacing what the name pointed at).
    pub fn tag(&self, image: Image) -> Result<()> {
        // Pulls and imports run concurrently: one read-modify-write at a time.
        static INDEX: Mutex<()> = Mutex::new(());
        let _guard = INDEX.lock().unwrap_or_else(PoisonError::into_inner);
        let mut images = self.list()?;
        images.insert(image.name.clone(), image);
        let bytes = serde_json::to_vec_pretty(&images).map_err(|source| ImageError::Json {
            path: self.index_path(),
            source,
        })?;
        write_atomically(&self.index_path(), &bytes)
    }
}

/// Writes through a temporary file and a rename, so readers never see half a file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    {
        let mut file = std::fs::File::create(&temporary).map_err(io("create", &temporary))?;
        file.write_all(bytes).map_err(io("write", &temporary))?;
        file.sync_all().map_err(io("sync", &temporary))?;
    }
    std::fs::rename(&temporary, path).map_err(io("rename", path))
}

/// `crictl images`-style rows: image, tag, short ID, size.
pub fn table(images: &BTreeMap<String, Image>) -> String {
    let mut rows = vec![[
        "IMAGE".to_owned(),
        "TAG".to_owned(),
        "IMAGE ID".to_owned(),
        "SIZE".to_owned(),
    ]];
    for image in images.values() {
        // `NAME[:TAG][@DIGEST]`: images pulled by digest alone have no tag.
        let named = image.name.split('@').next().unwrap_or(&image.name);
        let (name, tag) = named
            .rsplit_once(':')
            .filter(|(n, t)| !n.ends_with('/') && !t.contains('/'))
            .unwrap_or((named, "<none>"));
        let id: String = image
            .config
            .trim_start_matches("sha256:")
            .chars()
            .take(13)
            .collect();
        rows.push([name.to_owned(), tag.to_owned(), id, human_size(image.size)]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            line.join("   ").trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.3}MB", b as f64 / 1e6),
        b if b >= 1 << 10 => format!("{:.3}kB", b as f64 / 1e3),
        b => format!("{b}B"),
    }
}
