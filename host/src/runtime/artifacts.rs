//! On-disk cache of compiled components, keyed by component digest and engine configuration,
//! so a restart does not recompile.
//!
//! Loading native code is `unsafe` in wasmtime: bytes that were not produced by this engine
//! could do anything. Every artifact is therefore written together with its sha256 and
//! verified before it is handed to wasmtime; a missing, truncated or tampered artifact is
//! ignored (and recompiled by the caller). We verify the bytes in memory and deserialize those
//! same bytes rather than re-opening the file, so nothing can change between check and load.
#![allow(unsafe_code)]

use std::hash::{Hash, Hasher};

use anyhow::Context as _;
use cap_std::fs::Dir;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Compiled artifacts in one directory: `<digest>-<engine>.cwasm` plus `.sha256`.
pub struct ArtifactCache {
    dir: Dir,
    engine: Engine,
    /// Distinguishes artifacts of incompatible engine builds or settings.
    engine_tag: String,
}

impl ArtifactCache {
    pub fn new(dir: Dir, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self { dir, engine: engine.clone(), engine_tag: format!("{:016x}", hasher.finish()) }
    }

    fn names(&self, digest: &str) -> (String, String) {
        let base = format!("{digest}-{}", self.engine_tag);
        (format!("{base}.cwasm"), format!("{base}.sha256"))
    }

    /// Serializes `component` and writes it durably (write, fsync, rename).
    pub fn store(&self, digest: &str, component: &Component) -> anyhow::Result<()> {
        let bytes = component.serialize().map_err(anyhow::Error::from).context("serializing compiled component")?;
        let (artifact, checksum) = self.names(digest);
        let hash = hex::encode(Sha256::digest(&bytes));
        crate::disk::write_atomic(&self.dir, &artifact, &bytes)?;
        crate::disk::write_atomic(&self.dir, &checksum, hash.as_bytes())?;
        Ok(())
    }

    /// Removes the compiled artifact of `digest` (absent is fine).
    pub fn remove(&self, digest: &str) {
        let (artifact, checksum) = self.names(digest);
        let _ = self.dir.remove_file(artifact);
        let _ = self.dir.remove_file(checksum);
    }

    /// The cached component for `digest`, if present and intact.
    pub fn load(&self, digest: &str) -> Option<Component> {
        let (artifact, checksum) = self.names(digest);
        let expected = self.dir.read_to_string(&checksum).ok()?;
        let bytes = self.dir.read(&artifact).ok()?;
        if hex::encode(Sha256::digest(&bytes)) != expected.trim() {
            tracing::warn!(digest, "compiled artifact failed its integrity check; recompiling");
            return None;
        }
        // SAFETY: the bytes were produced by `Component::serialize` of an engine with the same
        // compatibility hash (it is in the file name) and verified against the checksum we wrote
        // next to them; wasmtime additionally checks its own header and engine settings.
        match unsafe { Component::deserialize(&self.engine, &bytes) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(digest, error = %format!("{e:#}"), "compiled artifact rejected; recompiling");
                None
            }
        }
    }
}
