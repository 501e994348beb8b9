//! The snapshot format: a consistent copy of a member's whole store.
//!
//! ```text
//! "KEELSNAP" | format u32 BE (1)
//! { family u8 | key length u32 BE | key | value length u32 BE | value }*
//! 0xFF | zero padding to a multiple of 512 bytes
//! SHA-256 of everything above (32 bytes)
//! ```
//!
//! Entries are every column family's key/value pairs in order, read from one
//! RocksDB snapshot. Like etcd's, the stream ends with a SHA-256 of its
//! content, so a truncated or damaged copy is detected before it is used; the
//! padding keeps etcd's invariant that a snapshot's size is 32 more than a
//! multiple of 512, which `etcdctl snapshot save` checks.

use rocksdb::{Direction, IteratorMode};
use sha2::{Digest, Sha256};

use crate::backend::{Backend, CF_META, COLUMN_FAMILIES};
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"KEELSNAP";
pub const FORMAT: u32 = 1;
const END: u8 = 0xFF;
const ALIGNMENT: u64 = 512;
pub const CHECKSUM_BYTES: usize = 32;

/// Streams a snapshot of `backend` in chunks of about `chunk_size` bytes.
/// The data is read twice from one RocksDB snapshot: once to learn the total
/// size (so each chunk can say how much is left), once to send it.
///
/// Returns the size, and the values of `meta_keys` in the `meta` family as of
/// the same RocksDB snapshot (so a caller can describe exactly what it sent).
pub(crate) fn stream(
    backend: &Backend,
    chunk_size: usize,
    meta_keys: &[&str],
    emit: &mut dyn FnMut(Vec<u8>, u64) -> Result<()>,
) -> Result<(u64, Vec<Option<Vec<u8>>>)> {
    let snapshot = backend.snapshot();
    let meta = meta_keys
        .iter()
        .map(|key| snapshot.get_cf(backend.cf(CF_META), key.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let visit = |sink: &mut dyn FnMut(&[u8]) -> Result<()>| -> Result<u64> {
        let written = std::cell::Cell::new(0u64);
        let mut sink = |bytes: &[u8]| {
            written.set(written.get() + bytes.len() as u64);
            sink(bytes)
        };
        sink(MAGIC)?;
        sink(&FORMAT.to_be_bytes())?;
        for (family, name) in COLUMN_FAMILIES.iter().enumerate() {
            let tag = [family as u8];
            for item in snapshot.iterator_cf(
                backend.cf(name),
                IteratorMode::From(&[], Direction::Forward),
            ) {
                let (key, value) = item?;
                sink(&tag)?;
                sink(&(key.len() as u32).to_be_bytes())?;
                sink(&key)?;
                sink(&(value.len() as u32).to_be_bytes())?;
                sink(&value)?;
            }
        }
        sink(&[END])?;
        let padding = (ALIGNMENT - written.get() % ALIGNMENT) % ALIGNMENT;
        sink(&vec![0; padding as usize])?;
        Ok(written.get())
    };

    let total = visit(&mut |_| Ok(()))? + CHECKSUM_BYTES as u64;

    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    let mut chunk = Vec::with_capacity(chunk_size);
    let mut flush = |chunk: &mut Vec<u8>, sent: &mut u64| -> Result<()> {
        *sent += chunk.len() as u64;
        emit(
            std::mem::replace(chunk, Vec::with_capacity(chunk_size)),
            total - *sent,
        )
    };
    visit(&mut |bytes| {
        hasher.update(bytes);
        chunk.extend_from_slice(bytes);
        if chunk.len() >= chunk_size {
            flush(&mut chunk, &mut sent)?;
        }
        Ok(())
    })?;
    chunk.extend_from_slice(&hasher.finalize());
    flush(&mut chunk, &mut sent)?;
    Ok((total, meta))
}

/// One snapshot entry: column family, key, value.
pub(crate) type Entry<'a> = (&'static str, &'a [u8], &'a [u8]);

/// The entries of a complete snapshot, as (column family, key, value), after
/// checking its header, framing and checksum.
pub(crate) fn parse(snapshot: &[u8]) -> Result<Vec<Entry<'_>>> {
    let corrupt = |reason| Error::CorruptSnapshot { reason };
    if !verify(snapshot) {
        return Err(corrupt("checksum mismatch or truncated"));
    }
    let body = &snapshot[..snapshot.len() - CHECKSUM_BYTES];
    let mut rest = body.get(MAGIC.len()..).ok_or(corrupt("no header"))?;
    let format = take(&mut rest, 4).ok_or(corrupt("no format"))?;
    if format != FORMAT.to_be_bytes() {
        return Err(corrupt("unknown format"));
    }
    let mut entries = Vec::new();
    loop {
        let tag = take(&mut rest, 1).ok_or(corrupt("no end marker"))?[0];
        if tag == END {
            break;
        }
        let family = COLUMN_FAMILIES
            .get(usize::from(tag))
            .ok_or(corrupt("unknown column family"))?;
        let key = take_framed(&mut rest).ok_or(corrupt("truncated key"))?;
        let value = take_framed(&mut rest).ok_or(corrupt("truncated value"))?;
        entries.push((*family, key, value));
    }
    if rest.iter().any(|b| *b != 0) {
        return Err(corrupt("data after the end marker"));
    }
    Ok(entries)
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, tail) = rest.split_at_checked(n)?;
    *rest = tail;
    Some(head)
}

fn take_framed<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(take(rest, 4)?.try_into().ok()?);
    take(rest, usize::try_from(len).ok()?)
}

/// Checks a complete snapshot's trailer; `true` if its SHA-256 matches.
pub fn verify(snapshot: &[u8]) -> bool {
    let Some(split) = snapshot.len().checked_sub(CHECKSUM_BYTES) else {
        return false;
    };
    let (body, checksum) = snapshot.split_at(split);
    body.starts_with(MAGIC) && Sha256::digest(body).as_slice() == checksum
}
