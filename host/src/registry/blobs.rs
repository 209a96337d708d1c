//! Content-addressed blobs (`sha256/<hex>`) under the data directory, reached through cap-std.
//! A blob is durable (write, fsync, rename) before any metadata row names it.

use anyhow::Context as _;
use cap_std::fs::Dir;
use sha2::{Digest, Sha256};

use crate::disk::write_atomic;

pub struct BlobStore {
    dir: Dir,
}

/// The digest string of `bytes`: `sha256:<hex>`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl BlobStore {
    pub fn new(dir: Dir) -> Self {
        Self { dir }
    }

    fn file_name(digest: &str) -> anyhow::Result<String> {
        let hex = digest.strip_prefix("sha256:").context("digest must start with sha256:")?;
        anyhow::ensure!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "malformed digest {digest}");
        Ok(hex.to_string())
    }

    /// Stores `bytes` under `digest` (no-op when already present and intact).
    pub fn put(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let name = Self::file_name(digest)?;
        if self.dir.metadata(&name).map(|m| m.len() == bytes.len() as u64).unwrap_or(false) {
            return Ok(());
        }
        write_atomic(&self.dir, &name, bytes)
    }

    /// The bytes of `digest`, verified against it.
    pub fn get(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let name = Self::file_name(digest)?;
        let bytes = self.dir.read(&name).with_context(|| format!("reading blob {digest}"))?;
        anyhow::ensure!(digest_of(&bytes) == digest, "blob {digest} is corrupt");
        Ok(bytes)
    }
}
