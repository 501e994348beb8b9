//! Importing image tarballs: an OCI image layout (`index.json`,
//! `oci-layout`, `blobs/sha256/…`, as `skopeo copy … oci-archive:` or
//! `docker save` of recent Docker writes) or a classic `docker save`
//! archive (`manifest.json` naming each image's config and layer tars);
//! either possibly gzip-compressed as a whole (`docker save | gzip`).

use std::path::Path;

use serde_json::{Value, json};

use super::{Image, ImageError, Reference, Result, Store, io};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

fn format_error(file: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Format {
        file: file.to_owned(),
        reason: reason.into(),
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(io("read", path))?;
    serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
        path: path.to_owned(),
        source,
    })
}

/// The layer media type of a blob: gzip- or zstd-compressed, or plain tar.
fn layer_type(store: &Store, digest: &str) -> Result<&'static str> {
    let path = store.blob_path(digest);
    let mut magic = [0u8; 4];
    use std::io::Read;
    let read = std::fs::File::open(&path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(io("read", &path))?;
    Ok(if read >= 2 && magic[..2] == GZIP_MAGIC {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else if read == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    })
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl Store {
    /// Imports every image of the tarball `file` (plain or gzip-compressed);
    /// the images it named.
    ///
    /// # Errors
    /// [`ImageError::Format`] if it is neither layout, [`ImageError::Digest`]
    /// if a blob does not match its name, [`ImageError::Io`] and
    /// [`ImageError::Json`] if it cannot be read.
    pub fn import(&self, file: &Path) -> Result<Vec<Image>> {
        let scratch = self
            .root
            .join(format!("import-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&scratch).map_err(io("create", &scratch))?;
        let outcome = self.import_unpacked(file, &scratch);
        drop(std::fs::remove_dir_all(&scratch));
        outcome
    }

    fn import_unpacked(&self, file: &Path, scratch: &Path) -> Result<Vec<Image>> {
        use std::io::{BufRead, Read};
        let input = std::fs::File::open(file).map_err(io("open", file))?;
        let mut input = std::io::BufReader::new(input);
        let gzip = input
            .fill_buf()
            .map_err(io("read", file))?
            .starts_with(&GZIP_MAGIC);
        let input: Box<dyn Read> = if gzip {
            Box::new(flate2::bufread::MultiGzDecoder::new(input))
        } else {
            Box::new(input)
        };
        // tar refuses entries that would land outside `scratch`.
        tar::Archive::new(input)
            .unpack(scratch)
            .map_err(io("unpack", file))?;
        if scratch.join("index.json").is_file() && scratch.join("oci-layout").is_file() {
            self.import_oci(file, scratch)
        } else if scratch.join("manifest.json").is_file() {
            self.import_docker(file, scratch)
        } else {
            Err(format_error(
                file,
                "it has neither index.json and oci-layout, nor manifest.json",
            ))
        }
    }

    fn import_oci(&self, file: &Path, dir: &Path) -> Result<Vec<Image>> {
        let blobs = dir.join("blobs/sha256");
        for entry in std::fs::read_dir(&blobs).map_err(io("read", &blobs))? {
            let path = entry.map_err(io("read", &blobs))?.path();
            let expected = format!(
                "sha256:{}",
                path.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
            );
            let (digest, _) = self.put_blob_file(&path)?;
            if digest != expected {
                return Err(ImageError::Digest {
                    expected,
                    actual: digest,
                });
            }
        }
        let index = read_json(&dir.join("index.json"))?;
        let mut images = Vec::new();
        for descriptor in index["manifests"].as_array().into_iter().flatten() {
            let annotations = &descriptor["annotations"];
            let name = annotations["io.containerd.image.name"]
                .as_str()
                .or_else(|| annotations["org.opencontainers.image.ref.name"].as_str())
                .ok_or_else(|| {
                    format_error(
                        file,
                        "a manifest in index.json has no image name annotation",
                    )
                })?;
            let reference = Reference::parse(name)?;
            let digest = descriptor["digest"]
                .as_str()
                .ok_or_else(|| format_error(file, "a manifest has no digest"))?;
            images.push(self.register(file, &reference, digest)?);
        }
        if images.is_empty() {
            return Err(format_error(file, "index.json lists no image"));
        }
        Ok(images)
    }

    /// Names `reference` the manifest `digest` (an index resolves to this
    /// machine's platform).
    fn register(&self, file: &Path, reference: &Reference, digest: &str) -> Result<Image> {
        let mut digest = digest.to_owned();
        let mut manifest: Value =
            serde_json::from_slice(&self.read_blob(&digest)?).map_err(|source| {
                ImageError::Json {
                    path: self.blob_path(&digest),
                    source,
                }
            })?;
        let kind = manifest["mediaType"]
            .as_str()
            .unwrap_or(OCI_MANIFEST)
            .to_owned();
        if kind == OCI_INDEX || kind == DOCKER_LIST {
            let chosen = manifest["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| {
                    m["platform"]["os"] == "linux"
                        && m["platform"]["architecture"] == architecture()
                })
                .and_then(|m| m["digest"].as_str())
                .ok_or_else(|| {
                    format_error(
                        file,
                        format!("no linux/{} image in its index", architecture()),
                    )
                })?
                .to_owned();
            digest = chosen;
            manifest = serde_json::from_slice(&self.read_blob(&digest)?).map_err(|source| {
                ImageError::Json {
                    path: self.blob_path(&digest),
                    source,
                }
            })?;
        }
        let config = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| format_error(file, "a manifest has no config"))?
            .to_owned();
        let mut layers = Vec::new();
        let mut size = 0;
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let layer_digest = layer["digest"]
                .as_str()
                .ok_or_else(|| format_error(file, "a layer has no digest"))?;
            if !self.has_blob(layer_digest) {
                return Err(format_error(
                    file,
                    format!("layer {layer_digest} is missing"),
                ));
            }
            size += layer["size"].as_u64().unwrap_or(0);
            layers.push((
                layer_digest.to_owned(),
                layer["mediaType"].as_str().unwrap_or(LAYER_TAR).to_owned(),
            ));
        }
        let image = Image {
            name: reference.to_string(),
            manifest: digest,
            config,
            layers,
            size,
            repo_digest: None,
        };
        self.tag(image.clone())?;
        Ok(image)
    }

    fn import_docker(&self, file: &Path, dir: &Path) -> Result<Vec<Image>> {
        let manifest = read_json(&dir.join("manifest.json"))?;
        let mut images = Vec::new();
        for entry in manifest.as_array().into_iter().flatten() {
            let config_file = entry["Config"]
                .as_str()
                .ok_or_else(|| format_error(file, "an image in manifest.json has no Config"))?;
            let (config, config_size) = self.put_blob_file(&dir.join(config_file))?;
            let mut layers = Vec::new();
            for layer in entry["Layers"].as_array().into_iter().flatten() {
                let path = layer
                    .as_str()
                    .ok_or_else(|| format_error(file, "a layer path is not a string"))?;
                let (digest, size) = self.put_blob_file(&dir.join(path))?;
                layers.push(json!({"mediaType": layer_type(self, &digest)?, "digest": digest, "size": size}));
            }
            let oci = json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
                "layers": layers,
            });
            let manifest_digest = self.put_blob(oci.to_string().as_bytes(), None)?;
            let tags: Vec<&str> = entry["RepoTags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if tags.is_empty() {
                return Err(format_error(
                    file,
                    "an image in manifest.json has no RepoTags to name it by",
                ));
            }
            for tag in tags {
                images.push(self.register(file, &Reference::parse(tag)?, &manifest_digest)?);
            }
        }
        if images.is_empty() {
            return Err(format_error(file, "manifest.json lists no image"));
        }
        Ok(images)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of `files` (path, contents).
    fn tarball(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, contents) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(contents.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, path, contents.as_slice())
                .unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn layer() -> Vec<u8> {
        tarball(&[("hello", b"hello from a layer\n".to_vec())])
    }

    #[test]
    fn docker_save_archives_import_under_their_tags() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
        let archive = tarball(&[
            (
                "manifest.json",
                br#"[{"Config":"abc.json","RepoTags":["busybox:test"],"Layers":["l1/layer.tar"]}]"#
                    .to_vec(),
            ),
            ("abc.json", config.clone()),
            ("l1/layer.tar", layer()),
        ]);
        let file = root.path().join("busybox.tar");
        std::fs::write(&file, archive).unwrap();
        let images = store.import(&file).unwrap();
        assert_eq!(images.len(), 1);
        let image = &images[0];
        assert_eq!(image.name, "docker.io/library/busybox:test");
        assert_eq!(image.config, super::super::digest_of(&config));
        assert_eq!(image.layers[0].1, "application/vnd.oci.image.layer.v1.tar");
        assert_eq!(store.read_blob(&image.layers[0].0).unwrap(), layer());
        let found = store
            .get(&Reference::parse("busybox:test").unwrap())
            .unwrap();
        assert_eq!(found.as_ref(), Some(image));
        let listed = super::super::table(&store.list().unwrap());
        assert!(
            listed
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("docker.io/library/busybox   test"),
            "{listed}"
        );
        // Importing again changes nothing.
        assert_eq!(&store.import(&file).unwrap()[0], image);
        // `docker save | gzip` imports the same.
        let gzipped = root.path().join("busybox.tar.gz");
        let mut encoder = flate2::write::GzEncoder::new(
            std::fs::File::create(&gzipped).unwrap(),
            flate2::Compression::fast(),
        );
        std::io::copy(&mut std::fs::File::open(&file).unwrap(), &mut encoder).unwrap();
        encoder.finish().unwrap();
        assert_eq!(&store.import(&gzipped).unwrap()[0], image);
    }

    #[test]
    fn oci_layouts_import_and_blobs_are_checked() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let layer = layer();
        let layer_digest = super::super::digest_of(&layer);
        let config = br#"{"os":"linux"}"#.to_vec();
        let config_digest = super::super::digest_of(&config);
        let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]})
        .to_string()
        .into_bytes();
        let manifest_digest = super::super::digest_of(&manifest);
        let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest.len(),
            "annotations": {"io.containerd.image.name": "registry.local:5000/app:v1"}}]});
        let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
        let file = root.path().join("app.tar");
        std::fs::write(
            &file,
            tarball(&[
                ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
                ("index.json", index.to_string().into_bytes()),
                (&blob(&manifest_digest), manifest.clone()),
                (&blob(&config_digest), config.clone()),
                (&blob(&layer_digest), layer.clone()),
            ]),
        )
        .unwrap();
        let images = store.import(&file).unwrap();
        assert_eq!(images[0].name, "registry.local:5000/app:v1");
        assert_eq!(images[0].manifest, manifest_digest);

        // A blob whose content does not match its name is refused.
        let bad = root.path().join("bad.tar");
        std::fs::write(
            &bad,
            tarball(&[
                ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
                ("index.json", index.to_string().into_bytes()),
                (&blob(&layer_digest), b"tampered".to_vec()),
            ]),
        )
        .unwrap();
        assert!(matches!(store.import(&bad), Err(ImageError::Digest { .. })));
        let junk = root.path().join("junk.tar");
        std::fs::write(&junk, tarball(&[("readme", b"hi".to_vec())])).unwrap();
        assert!(matches!(
            store.import(&junk),
            Err(ImageError::Format { .. })
        ));
    }
}
