//! Models: per-tenant ONNX graphs with immutable versions, stored as content-addressed blobs.
//!
//! A model is validated by loading it with its engine before anything is stored (which also
//! warms the graph cache). Functions reach models only through `load-by-name`, which asks
//! [`ModelStore`] (as a [`ModelSource`]) for the newest version of a granted name.

use std::sync::Arc;

use bytes::Bytes;
use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::RegistryError;
use super::blobs::{BlobStore, digest_of};
use crate::db::{self, Db};
use crate::nn::{ErrorCode, Graphs, TensorInfo};
use crate::runtime::nn::{BoxFuture, Located, ModelPin, ModelSource};
use crate::tenants::valid_name;

/// The model manifest: `name` and optional `engine`, `device`, `description`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    pub name: String,
    /// `auto` (the best engine present), `tract`, `onnxruntime` or `wgpu`.
    #[serde(default = "auto")]
    pub engine: String,
    /// `auto` (a hardware GPU when present and granted, else the CPU), `cpu` or `gpu`.
    #[serde(default = "auto")]
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn auto() -> String {
    "auto".into()
}

impl ModelManifest {
    pub fn parse(text: &str) -> Result<Self, String> {
        let m: ModelManifest = toml::from_str(text).map_err(|e| format!("invalid model manifest: {}", e.message()))?;
        if !valid_name(&m.name) {
            return Err(format!("invalid model manifest: name `{}` must match ^[a-z0-9][a-z0-9._-]{{0,127}}$", m.name));
        }
        if !matches!(m.engine.as_str(), "auto" | "tract" | "onnxruntime" | "wgpu") {
            return Err(format!(
                "invalid model manifest: no engine `{}` (engine is auto, tract, onnxruntime or wgpu)",
                m.engine
            ));
        }
        if !matches!(m.device.as_str(), "auto" | "cpu" | "gpu") {
            return Err(format!("invalid model manifest: device `{}` must be auto, cpu or gpu", m.device));
        }
        match (m.engine.as_str(), m.device.as_str()) {
            ("wgpu", "cpu") => {
                return Err("invalid model manifest: engine `wgpu` runs on the GPU, not device `cpu`".into());
            }
            ("tract" | "onnxruntime", "gpu") => {
                return Err(format!(
                    "invalid model manifest: engine `{}` runs on the CPU; device `gpu` takes engine auto or wgpu",
                    m.engine
                ));
            }
            _ => {}
        }
        Ok(m)
    }
}

/// The engine selector of a model (see [`crate::nn::Graphs::select`]): its engine, made
/// `wgpu` by device `gpu` and the best CPU engine by device `cpu`.
pub fn selector(engine: &str, device: &str) -> String {
    match (engine, device) {
        (_, "gpu") => "wgpu".into(),
        ("auto", "cpu") => "cpu".into(),
        (engine, _) => engine.into(),
    }
}

/// One stored model version.
#[derive(Debug, Clone, Serialize)]
pub struct ModelVersion {
    pub name: String,
    pub version: u32,
    pub digest: String,
    pub size: u64,
    pub engine: String,
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub created_at: String,
}

/// Tenant models in SQLite + blobs.
pub struct ModelStore {
    db: Db,
    blobs: Arc<BlobStore>,
    graphs: Arc<Graphs>,
    /// Live versions per (tenant, name), absent names included, as `/v2` resolves them on every
    /// call; dropped for a name whenever it is pushed or deleted.
    named: std::sync::RwLock<NamedVersions>,
    /// Models' releases and aliases, which `load-by-name` follows.
    releases: Arc<crate::releases::Releases>,
}

/// Most (tenant, name) lookups remembered.
const MAX_NAMED: usize = 10_000;

/// (tenant, model name) -> its live versions, oldest first.
type NamedVersions = std::collections::HashMap<(String, String), Arc<Vec<ModelVersion>>>;

impl ModelStore {
    pub fn new(db: Db, blobs: Arc<BlobStore>, graphs: Arc<Graphs>, releases: Arc<crate::releases::Releases>) -> Self {
        Self { db, blobs, graphs, named: Default::default(), releases }
    }

    /// The version `pin` names of the tenant's model `name` now: `Current` is the model's
    /// stable version, or its newest while it has no release.
    pub async fn pinned(&self, tenant: &str, name: &str, pin: &ModelPin) -> Option<ModelVersion> {
        use crate::releases::Subject;
        let version = match pin {
            ModelPin::Version(v) => Some(*v),
            ModelPin::Alias(alias) => Some(self.releases.alias(Subject::Model, tenant, name, alias).ok()?),
            ModelPin::Current => self.releases.get(Subject::Model, tenant, name).stable,
        };
        let all = self.named(tenant, name).await.ok()?;
        match version {
            Some(v) => all.iter().find(|m| m.version == v).cloned(),
            None => all.last().cloned(),
        }
    }

    /// Every live version of the tenant's model `name`, oldest first (empty if there is none),
    /// from memory after the first lookup.
    pub async fn named(&self, tenant: &str, name: &str) -> Result<Arc<Vec<ModelVersion>>, RegistryError> {
        let key = (tenant.to_string(), name.to_string());
        if let Some(found) = self.named.read().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(found);
        }
        let found = Arc::new(self.versions(tenant, Some(name)).await?);
        if let Ok(mut cache) = self.named.write() {
            // Names come from URLs (absent ones too): bounded, forgotten all at once when full.
            if cache.len() >= MAX_NAMED {
                cache.clear();
            }
            cache.insert(key, found.clone());
        }
        Ok(found)
    }

    fn forget(&self, tenant: &str, name: &str) {
        if let Ok(mut cache) = self.named.write() {
            cache.remove(&(tenant.to_string(), name.to_string()));
        }
    }

    pub fn graphs(&self) -> &Arc<Graphs> {
        &self.graphs
    }

    /// Validates (by loading it), stores and returns a new version of a model.
    pub async fn push(
        &self,
        tenant: &str,
        manifest_text: &str,
        bytes: Bytes,
        plan_name: &str,
        plan: &crate::config::Plan,
    ) -> Result<ModelVersion, RegistryError> {
        let (max_bytes, gpu_allowed) = (plan.max_model_bytes, plan.gpu);
        let manifest = ModelManifest::parse(manifest_text).map_err(RegistryError::Invalid)?;
        let selected = selector(&manifest.engine, &manifest.device);
        let engine = self.graphs.select(&selected, gpu_allowed).map_err(|e| {
            RegistryError::Invalid(match e.code {
                ErrorCode::Security => {
                    format!("device `{}`: the tenant's plan does not allow the GPU", manifest.device)
                }
                _ => e.message,
            })
        })?;
        if bytes.len() as u64 > max_bytes {
            return Err(RegistryError::TooLarge(format!(
                "model of {} bytes is over the plan's limit of {max_bytes} bytes",
                bytes.len()
            )));
        }
        let digest = digest_of(&bytes);
        let data = bytes.clone();
        let load = self.graphs.load_selected(tenant, &digest, &selected, gpu_allowed, move || Ok(data.to_vec()));
        let (model, _) = load.await.map_err(|e| {
            RegistryError::Invalid(match e.code {
                ErrorCode::InvalidEncoding => e.message,
                _ => format!("the {} engine cannot run this model: {}", engine.name(), e.message),
            })
        })?;
        let row = ModelVersion {
            name: manifest.name.clone(),
            version: 0,
            digest,
            size: bytes.len() as u64,
            engine: manifest.engine.clone(),
            device: manifest.device.clone(),
            description: manifest.description.clone(),
            inputs: model.inputs().to_vec(),
            outputs: model.outputs().to_vec(),
            created_at: crate::clock::now_rfc3339(),
        };
        // The blob is written once the model loaded (a refused push leaves nothing); the quota
        // is checked in the transaction that adds the version.
        let blobs = self.blobs.clone();
        let (d, b) = (row.digest.clone(), bytes.clone());
        let writing = self.blobs.writing.lock().await;
        tokio::task::spawn_blocking(move || blobs.put(&d, &b)).await.map_err(|e| anyhow::anyhow!("{e}"))??;
        let (t, r, p, quota) = (tenant.to_string(), row.clone(), plan_name.to_string(), plan.clone());
        let version = self
            .db
            .call(move |conn| {
                let tx = conn.transaction()?;
                if let Some(over) = db::over_quota(&tx, "models", &t, &r.name, r.size, &p, &quota)? {
                    return Ok(Err(over));
                }
                let version = db::next_version(&tx, "models", &t, &r.name, &r.digest, r.size, &r.created_at)?;
                tx.execute(
                    "INSERT INTO models (tenant, name, version, digest, size, engine, device, description, inputs, outputs, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        t,
                        r.name,
                        version,
                        r.digest,
                        r.size,
                        r.engine,
                        r.device,
                        r.description,
                        serde_json::to_string(&r.inputs)?,
                        serde_json::to_string(&r.outputs)?,
                        r.created_at
                    ],
                )?;
                tx.commit()?;
                Ok(Ok(version))
            })
            .await?
            .map_err(RegistryError::Quota);
        if version.is_err() {
            // Refused: the blob just written goes unless another version names it.
            self.blobs.sweep(&self.db, vec![row.digest.clone()]).await?;
        }
        drop(writing);
        let version = version?;
        self.forget(tenant, &row.name);
        Ok(ModelVersion { version, ..row })
    }

    /// Every live version of the tenant's models (all names when `name` is None), oldest first.
    pub async fn versions(&self, tenant: &str, name: Option<&str>) -> Result<Vec<ModelVersion>, RegistryError> {
        let (t, n) = (tenant.to_string(), name.map(str::to_string));
        Ok(self
            .db
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT name, version, digest, size, engine, device, description, inputs, outputs, created_at
                     FROM models WHERE tenant = ?1 AND (?2 IS NULL OR name = ?2) AND deleted_at IS NULL
                     ORDER BY name, version",
                )?;
                let rows = stmt.query_map(params![t, n], |r| {
                    Ok((
                        ModelVersion {
                            name: r.get(0)?,
                            version: r.get(1)?,
                            digest: r.get(2)?,
                            size: r.get(3)?,
                            engine: r.get(4)?,
                            device: r.get(5)?,
                            description: r.get(6)?,
                            inputs: Vec::new(),
                            outputs: Vec::new(),
                            created_at: r.get(9)?,
                        },
                        r.get::<_, String>(7)?,
                        r.get::<_, String>(8)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (mut v, inputs, outputs) = row?;
                    v.inputs = serde_json::from_str(&inputs)?;
                    v.outputs = serde_json::from_str(&outputs)?;
                    out.push(v);
                }
                Ok(out)
            })
            .await?)
    }

    /// The graph of a stored version, ready to run: from the shared cache, else its blob loaded
    /// on its engine (the path a guest's `load-by-name` takes). Also returns the load time
    /// (zero on a cache hit).
    /// `gpu_allowed`: whether the caller's plan allows the GPU now (a `device = "gpu"` model of
    /// a tenant moved to a plan without it is refused with `security`).
    pub async fn load(
        &self,
        tenant: &str,
        version: &ModelVersion,
        gpu_allowed: bool,
    ) -> Result<(Arc<dyn crate::nn::LoadedModel>, std::time::Duration), crate::nn::NnError> {
        let (blobs, digest) = (self.blobs.clone(), version.digest.clone());
        let selected = selector(&version.engine, &version.device);
        self.graphs
            .load_selected(tenant, &version.digest, &selected, gpu_allowed, move || {
                blobs.get(&digest).map_err(|e| crate::nn::NnError::new(ErrorCode::RuntimeError, format!("{e:#}")))
            })
            .await
    }

    /// Deletes every version of a model; 404 when there is none.
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<u32, RegistryError> {
        let (deleted, digests) = db::soft_delete(&self.db, "models", tenant, name).await?;
        self.forget(tenant, name);
        if deleted == 0 {
            return Err(RegistryError::NotFound { kind: "model", name: name.to_string() });
        }
        self.blobs.collect(&self.db, digests).await?;
        Ok(deleted)
    }
}

impl ModelSource for ModelStore {
    fn lookup<'a>(&'a self, tenant: &'a str, name: &'a str, pin: &'a ModelPin) -> BoxFuture<'a, Option<Located>> {
        Box::pin(async move {
            let model = self.pinned(tenant, name, pin).await?;
            Some(Located {
                digest: model.digest.clone(),
                selector: selector(&model.engine, &model.device),
                version: model.version,
            })
        })
    }

    fn read(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        self.blobs.get(digest)
    }
}
