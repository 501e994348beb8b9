//! Secrets encrypted at rest: what the API server writes for a Secret is
//! AES-256-GCM ciphertext, marked as Kubernetes marks it
//! (`k8s:enc:aesgcm:v1:<key name>:` then the nonce and the ciphertext);
//! values without the mark (written before encryption) are read as they are.
//!
//! ```text
//!  data key (32 random bytes, made by the first member)
//!     └─ wrapped with SHA-256("keelson secrets v1" ‖ cluster token) ─► store key /keelson/secrets/key
//! ```
//!
//! The data key never sits in the store in clear: it is wrapped with a key
//! derived from the cluster token (`--initial-cluster-token`), as k3s wraps
//! its bootstrap data with its token. The store's files, snapshots and
//! backups hold only ciphertext; reading them takes the token. With the
//! default token this is obfuscation, not protection: production clusters
//! set a secret token.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};

use crate::storage::{Store, StoreError, Written};

/// The mark of an encrypted value, with the key's name.
const PREFIX: &[u8] = b"k8s:enc:aesgcm:v1:keelson:";
const NONCE_BYTES: usize = 12;
/// Where the wrapped data key is kept.
const KEY_KEY: &[u8] = b"/keelson/secrets/key";
/// Where the wrapped data key is stored.
pub const DATA_KEY: &[u8] = KEY_KEY;

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("a stored secret does not decrypt (wrong cluster token, or corrupt)")]
    Undecryptable,
    #[error("the stored secrets key does not unwrap: is --initial-cluster-token the cluster's?")]
    WrongToken,
    #[error("the store")]
    Store(#[from] StoreError),
}

/// Seals and opens Secrets' stored bytes.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

/// Twelve random bytes, from the operating system (through a v4 UUID).
fn nonce() -> [u8; NONCE_BYTES] {
    let random = uuid::Uuid::new_v4().into_bytes();
    let mut nonce = [0; NONCE_BYTES];
    nonce.copy_from_slice(&random[..NONCE_BYTES]);
    nonce
}

fn seal_with(cipher: &Aes256Gcm, plain: &[u8], prefix: &[u8]) -> Vec<u8> {
    let nonce = nonce();
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), plain)
        .unwrap_or_else(|_| unreachable!("AES-GCM encryption of a buffer in memory cannot fail"));
    let mut out = Vec::with_capacity(prefix.len() + NONCE_BYTES + sealed.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

fn open_with(cipher: &Aes256Gcm, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_BYTES {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_BYTES);
    cipher.decrypt(Nonce::from_slice(nonce), body).ok()
}

fn wrapping_cipher(token: &str) -> Aes256Gcm {
    let key = Sha256::new()
        .chain_update(b"keelson secrets v1")
        .chain_update(token.as_bytes())
        .finalize();
    Aes256Gcm::new(&key)
}

impl Sealer {
    /// The sealer whose data key is `wrapped` (as stored under
    /// [`DATA_KEY`]), unwrapped with `token`: for reading a store's files
    /// or a snapshot without a running cluster.
    pub fn from_wrapped(wrapped: &[u8], token: &str) -> Result<Self, SecretsError> {
        Self::unwrap_with(&wrapping_cipher(token), wrapped)
    }

    fn unwrap_with(wrapping: &Aes256Gcm, wrapped: &[u8]) -> Result<Self, SecretsError> {
        let key = open_with(wrapping, wrapped).ok_or(SecretsError::WrongToken)?;
        let key: [u8; 32] = key.try_into().map_err(|_| SecretsError::WrongToken)?;
        Ok(Self::new(&key))
    }

    pub fn new(data_key: &[u8; 32]) -> Self {
        Sealer {
            cipher: Aes256Gcm::new(data_key.into()),
        }
    }

    /// The cluster's sealer: its data key from the store, unwrapped with
    /// `token`, or a new one stored first (by the first member to ask).
    pub async fn from_store(store: &Store, token: &str) -> Result<Self, SecretsError> {
        let wrapping = wrapping_cipher(token);
        let unwrap = |wrapped: &[u8]| Self::unwrap_with(&wrapping, wrapped);
        if let Some(stored) = store.get(KEY_KEY).await? {
            return unwrap(&stored.value);
        }
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&uuid::Uuid::new_v4().into_bytes());
        key[16..].copy_from_slice(&uuid::Uuid::new_v4().into_bytes());
        match store
            .create(KEY_KEY, seal_with(&wrapping, &key, b""))
            .await?
        {
            Written::Ok(_) => Ok(Self::new(&key)),
            Written::Conflict(Some(stored)) => unwrap(&stored.value),
            Written::Conflict(None) => Err(SecretsError::WrongToken),
        }
    }

    /// The stored form of a Secret's bytes.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        seal_with(&self.cipher, plain, PREFIX)
    }

    /// A stored value as written by the client: decrypted if it is marked as
    /// encrypted, as it is otherwise.
    pub fn open(&self, stored: &[u8]) -> Result<Vec<u8>, SecretsError> {
        match stored.strip_prefix(PREFIX) {
            Some(sealed) => open_with(&self.cipher, sealed).ok_or(SecretsError::Undecryptable),
            None => Ok(stored.to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_and_nothing_shows_through() {
        let sealer = Sealer::new(&[7; 32]);
        let plain = br#"{"data":{"password":"czNjcjN0"}}"#;
        let sealed = sealer.seal(plain);
        assert!(sealed.starts_with(PREFIX));
        assert!(
            !sealed.windows(8).any(|w| w == b"czNjcjN0"),
            "no plaintext in the stored bytes"
        );
        assert_eq!(sealer.open(&sealed).unwrap(), plain);
        assert_ne!(sealer.seal(plain), sealed, "a fresh nonce each time");
        // Written before encryption: read as it is.
        assert_eq!(sealer.open(plain).unwrap(), plain);
        // Another key, or a damaged value, is an error.
        assert!(Sealer::new(&[8; 32]).open(&sealed).is_err());
        let mut damaged = sealed.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(sealer.open(&damaged).is_err());
        assert!(sealer.open(PREFIX).is_err());
    }

    #[test]
    fn the_data_key_unwraps_only_with_the_token() {
        let wrapped = seal_with(&wrapping_cipher("s3cret"), &[9; 32], b"");
        assert_eq!(
            open_with(&wrapping_cipher("s3cret"), &wrapped).unwrap(),
            [9; 32]
        );
        assert!(open_with(&wrapping_cipher("guess"), &wrapped).is_none());
    }
}
