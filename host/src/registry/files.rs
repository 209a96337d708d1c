//! Tenant files (`PUT /v1/files/{name}`): small read-only data a function is granted by name
//! (`capabilities.files`), such as a label list or a vocabulary.
//!
//! A file lives at `files/<tenant>/<name>` in the data directory, replaced atomically on every
//! put (written, fsynced, renamed). A function version that is granted files gets a *view*: a
//! fresh directory `views/<tenant>/<function>@<version>.<n>` holding hard links to exactly its
//! granted files, preopened read-only at `/files` in each call. Nothing else of the host's file
//! system exists for the guest, so `..` leads nowhere. A put or delete drops the deployments
//! whose view holds that name; their next call builds a new view. A view is removed when the
//! last call using it ends; views left by a crash are removed at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use rusqlite::{OptionalExtension as _, params};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::RegistryError;
use crate::db::Db;

/// A stored file, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    pub name: String,
    pub size: u64,
    pub digest: String,
    pub updated_at: String,
}

/// The tenants' files and the functions' views of them.
pub struct FileStore {
    db: Db,
    files: cap_std::fs::Dir,
    views: cap_std::fs::Dir,
    /// Absolute path of `views/`, for the preopen (wasmtime opens it by path).
    views_path: PathBuf,
    next_view: AtomicU64,
    /// Held from a put's quota check until its row is written: concurrent puts cannot pass
    /// `max_files` or `max_storage_bytes` together.
    writing: tokio::sync::Mutex<()>,
}

/// A function version's directory of granted files; removed when dropped (after the last call
/// holding its deployment ends).
pub struct FilesView {
    pub path: Arc<Path>,
}

impl Drop for FilesView {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl FileStore {
    /// Opens `files/` and a fresh `views/` under `data_dir`.
    pub fn open(db: Db, data_dir: &Path, root: &cap_std::fs::Dir) -> anyhow::Result<Self> {
        root.create_dir_all("files")?;
        if root.exists("views") {
            root.remove_dir_all("views").context("removing views left by the last run")?;
        }
        root.create_dir_all("views")?;
        let views_path = std::fs::canonicalize(data_dir.join("views"))?;
        Ok(Self {
            db,
            files: root.open_dir("files")?,
            views: root.open_dir("views")?,
            views_path,
            next_view: 0.into(),
            writing: Default::default(),
        })
    }

    /// Stores `bytes` as the tenant's file `name`, replacing it atomically.
    pub async fn put(
        &self,
        tenant: &str,
        name: &str,
        bytes: bytes::Bytes,
        plan_name: &str,
        plan: &crate::config::Plan,
    ) -> Result<FileInfo, RegistryError> {
        // Room first: a new name counts against `max_files`, and the tenant's bytes change by
        // the new size less the old.
        let _writing = self.writing.lock().await;
        let (t, n, p, quota, size) =
            (tenant.to_string(), name.to_string(), plan_name.to_string(), plan.clone(), bytes.len() as u64);
        self.db
            .call(move |conn| {
                let old: Option<i64> = conn
                    .query_row("SELECT size FROM files WHERE tenant = ?1 AND name = ?2", params![t, n], |r| r.get(0))
                    .optional()?;
                if old.is_none() {
                    let files: i64 = conn.query_row("SELECT COUNT(*) FROM files WHERE tenant = ?1", [&t], |r| r.get(0))?;
                    if files as u64 >= quota.max_files {
                        return Ok(Err(format!(
                            "tenant `{t}` has {files} files, the most the `{p}` plan allows (max_files = {}): delete one first",
                            quota.max_files
                        )));
                    }
                }
                let used = crate::db::stored_bytes(conn, &t)?.saturating_sub(old.unwrap_or(0).max(0) as u64);
                if used.saturating_add(size) > quota.max_storage_bytes {
                    return Ok(Err(crate::db::storage_full(&t, used, size, &p, quota.max_storage_bytes)));
                }
                Ok(Ok(()))
            })
            .await?
            .map_err(RegistryError::Quota)?;
        let info = FileInfo {
            name: name.to_string(),
            size: bytes.len() as u64,
            digest: format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
            updated_at: crate::clock::now_rfc3339(),
        };
        let dir = self.tenant_dir(tenant)?;
        let file_name = name.to_string();
        tokio::task::spawn_blocking(move || crate::disk::write_atomic(&dir, &file_name, &bytes))
            .await
            .map_err(|e| anyhow::anyhow!("writing a file failed: {e}"))??;
        let (t, i) = (tenant.to_string(), info.clone());
        self.db
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO files (tenant, name, size, digest, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (tenant, name) DO UPDATE SET size = ?3, digest = ?4, updated_at = ?5",
                    params![t, i.name, i.size, i.digest, i.updated_at],
                )?;
                Ok(())
            })
            .await?;
        Ok(info)
    }

    /// The tenant's files, by name.
    pub async fn list(&self, tenant: &str) -> Result<Vec<FileInfo>, RegistryError> {
        let t = tenant.to_string();
        Ok(self
            .db
            .call(move |conn| {
                let mut stmt =
                    conn.prepare("SELECT name, size, digest, updated_at FROM files WHERE tenant = ?1 ORDER BY name")?;
                let rows = stmt.query_map([&t], |r| {
                    Ok(FileInfo { name: r.get(0)?, size: r.get(1)?, digest: r.get(2)?, updated_at: r.get(3)? })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?)
    }

    /// Deletes the tenant's file `name`: the bytes first, then the row. A removal that fails
    /// leaves the file listed (and the error says so), never a deleted file still on disk for
    /// the next view to link. 404 when there is none.
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<(), RegistryError> {
        let (t, n) = (tenant.to_string(), name.to_string());
        let existed: Option<String> = self
            .db
            .call(move |conn| {
                Ok(conn
                    .query_row("SELECT name FROM files WHERE tenant = ?1 AND name = ?2", params![t, n], |r| r.get(0))
                    .optional()?)
            })
            .await?;
        if existed.is_none() {
            return Err(RegistryError::NotFound { kind: "file", name: name.to_string() });
        }
        let dir = self.tenant_dir(tenant)?;
        match dir.remove_file(name) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("removing file `{name}`")).into()),
        }
        let (t, n) = (tenant.to_string(), name.to_string());
        self.db
            .call(move |conn| {
                conn.execute("DELETE FROM files WHERE tenant = ?1 AND name = ?2", params![t, n])?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Builds a view holding hard links to the granted files that exist now. Blocking.
    pub fn view(&self, tenant: &str, function: &str, version: u32, granted: &[String]) -> anyhow::Result<FilesView> {
        let n = self.next_view.fetch_add(1, Ordering::Relaxed);
        let relative = format!("{tenant}/{function}@{version}.{n}");
        self.views.create_dir_all(&relative)?;
        let view = self.views.open_dir(&relative)?;
        let files = self.tenant_dir(tenant)?;
        for name in granted {
            match files.hard_link(name, &view, name) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("linking file `{name}` into a view")),
            }
        }
        Ok(FilesView { path: Arc::from(self.views_path.join(relative).as_path()) })
    }

    fn tenant_dir(&self, tenant: &str) -> anyhow::Result<cap_std::fs::Dir> {
        self.files.create_dir_all(tenant)?;
        Ok(self.files.open_dir(tenant)?)
    }
}
