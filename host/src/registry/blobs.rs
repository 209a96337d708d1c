//! Content-addressed blobs (`sha256/<hex>`) under the data directory, reached through cap-std.
//! A blob is durable (write, fsync, rename) before any metadata row names it.

use anyhow::Context as _;
use cap_std::fs::Dir;
use sha2::{Digest, Sha256};

use crate::disk::write_atomic;

pub struct BlobStore {
    dir: Dir,
    /// Held from a blob's write until the row naming it is committed, and while blobs no row
    /// names are collected: a collection never removes a blob an upload is about to name.
    pub writing: tokio::sync::Mutex<()>,
}

/// The digest string of `bytes`: `sha256:<hex>`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl BlobStore {
    pub fn new(dir: Dir) -> Self {
        Self { dir, writing: tokio::sync::Mutex::new(()) }
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

    /// Removes the blob of `digest` (absent is fine).
    pub fn remove(&self, digest: &str) -> anyhow::Result<()> {
        match self.dir.remove_file(Self::file_name(digest)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Removes the blobs of those of `digests` that no live version names any more (a deleted
    /// function's or model's last versions); returns the digests removed.
    pub async fn collect(&self, db: &crate::db::Db, digests: Vec<String>) -> anyhow::Result<Vec<String>> {
        let _writing = self.writing.lock().await;
        self.sweep(db, digests).await
    }

    /// [`BlobStore::collect`] for a caller that holds `writing` (an upload refused after its
    /// blob was written).
    pub async fn sweep(&self, db: &crate::db::Db, digests: Vec<String>) -> anyhow::Result<Vec<String>> {
        let unreferenced = db.call(move |conn| Ok(crate::db::unreferenced(conn, &digests)?)).await?;
        for digest in &unreferenced {
            self.remove(digest)?;
        }
        Ok(unreferenced)
    }

    /// The bytes of `digest`, verified against it.
    pub fn get(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let name = Self::file_name(digest)?;
        let bytes = self.dir.read(&name).with_context(|| format!("reading blob {digest}"))?;
        anyhow::ensure!(digest_of(&bytes) == digest, "blob {digest} is corrupt");
        Ok(bytes)
    }
}
