//! Functions and their immutable versions, blobs, and the deployed-version cache.
//!
//! Every upload of a name makes version max+1 (versions of deleted functions are never
//! reused). The newest version answers the bare name. A deployed version is compiled and
//! linked once ([`Deployment`]) and kept in memory; after a restart it is loaded lazily on the
//! first call from the compiled-artifact cache.

mod blobs;
pub mod files;
mod logs;
pub mod manifest;
pub mod models;
pub mod secrets;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use rusqlite::{OptionalExtension as _, params};
use serde::Serialize;

pub use blobs::{BlobStore, digest_of};
pub use logs::{FunctionLogs, LogEntry};
pub use manifest::Manifest;

use crate::config::Config;
use crate::config::Plan;
use crate::db::{self, Db};
use crate::nn::Graphs;
use crate::runtime::nn::NnAccess;
use crate::runtime::{Grants, Limits, Prepared, Runtime};
use models::ModelStore;

/// A deployed function version, ready to run.
pub struct Deployment {
    pub tenant: String,
    pub name: String,
    pub version: u32,
    pub digest: String,
    pub prepared: Prepared,
    pub limits: Limits,
    /// What each call may reach: config, wasi:nn, its view of the tenant's files.
    pub grants: Grants,
    /// The files it is granted (`capabilities.files`), and the view that holds them.
    pub files: Vec<String>,
    _files_view: Option<files::FilesView>,
    /// The secrets it is granted (`capabilities.secrets`), and their values, redacted from its log.
    pub secrets: Vec<String>,
    pub redact: Arc<Vec<String>>,
    /// Its metric handles, made on first use.
    pub metrics: std::sync::OnceLock<crate::metrics::FunctionMetrics>,
    /// A tensor function's declared inputs and outputs (manifest `[[inputs]]`, `[[outputs]]`).
    pub inputs: Vec<crate::nn::TensorInfo>,
    pub outputs: Vec<crate::nn::TensorInfo>,
}

/// One stored version, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionVersion {
    pub name: String,
    pub version: u32,
    pub digest: String,
    pub imports: Vec<String>,
    pub size: u64,
    pub created_at: String,
    pub manifest: Manifest,
    /// Its smoke tests' report, when its manifest has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smoke: Option<SmokeReport>,
    /// The model version each granted model name resolved to when it was deployed (`3`), the
    /// alias it follows (`@prod`), or `current` (the model's release or newest version).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub model_pins: BTreeMap<String, String>,
}

/// What a version's smoke tests (`[[smoke]]`) gave at upload.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SmokeReport {
    pub passed: bool,
    /// The tests are still running (the version was just uploaded).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    pub results: Vec<SmokeResult>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SmokeResult {
    pub method: String,
    pub path: String,
    pub expected_status: u16,
    /// The status answered (an error the function returned, a trap or a timeout as the
    /// status a caller would get).
    pub status: u16,
    pub passed: bool,
    /// What did not match, or the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// A function with its newest version, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionSummary {
    pub name: String,
    pub latest_version: u32,
    pub versions: u32,
    pub digest: String,
    pub updated_at: String,
}

/// Compiled versions of one function kept in memory at once.
const MAX_CACHED_VERSIONS: usize = 8;

/// What the registry keeps in memory for one function.
#[derive(Default)]
struct Cached {
    /// The newest version, once known.
    latest: Option<u32>,
    versions: HashMap<u32, Arc<Deployment>>,
}

pub struct Registry {
    db: Db,
    blobs: Arc<BlobStore>,
    pub models: Arc<ModelStore>,
    runtime: Arc<Runtime>,
    config: Arc<Config>,
    /// tenant -> function -> cached versions; looked up by `&str` on every call, no allocation.
    cache: RwLock<HashMap<String, HashMap<String, Cached>>>,
    pub logs: FunctionLogs,
    pub files: Arc<files::FileStore>,
    pub secrets: Arc<secrets::SecretStore>,
    /// Bumped (under the cache's write lock) whenever something cached may have gone stale: a
    /// deployment loaded while it moved is served to its own call but never cached.
    generation: std::sync::atomic::AtomicU64,
}

impl Registry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Db,
        blobs: BlobStore,
        runtime: Arc<Runtime>,
        config: Arc<Config>,
        graphs: Arc<Graphs>,
        files: files::FileStore,
        secrets: secrets::SecretStore,
        releases: Arc<crate::releases::Releases>,
    ) -> Self {
        let logs =
            FunctionLogs::new(config.runtime.log_lines_per_function, config.runtime.log_bytes_per_function as usize);
        let blobs = Arc::new(blobs);
        let models = Arc::new(ModelStore::new(db.clone(), blobs.clone(), graphs, releases));
        let (files, secrets) = (Arc::new(files), Arc::new(secrets));
        Self {
            db,
            blobs,
            models,
            runtime,
            config,
            cache: RwLock::new(HashMap::new()),
            logs,
            files,
            secrets,
            generation: 0.into(),
        }
    }

    /// A file of the tenant changed: drops the cached versions that are granted it, so their
    /// next call builds a view with the new content (calls in flight keep the old view).
    pub fn forget_file(&self, tenant: &str, file: &str) {
        if let Ok(mut cache) = self.cache.write() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            let Some(functions) = cache.get_mut(tenant) else { return };
            for cached in functions.values_mut() {
                cached.versions.retain(|_, d| !d.files.iter().any(|f| f == file));
            }
        }
    }

    /// A secret of the tenant changed: drops the cached versions that are granted it.
    pub fn forget_secret(&self, tenant: &str, secret: &str) {
        if let Ok(mut cache) = self.cache.write() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            let Some(functions) = cache.get_mut(tenant) else { return };
            for cached in functions.values_mut() {
                cached.versions.retain(|_, d| !d.secrets.iter().any(|s| s == secret));
            }
        }
    }

    /// A version of `function` ready to call: its grants under its tenant's plan, a fresh view of the
    /// tenant's files when it is granted any, its granted secrets among its config values, and
    /// those values to redact from its log.
    #[allow(clippy::too_many_arguments)]
    async fn deployment(
        &self,
        tenant: &str,
        function: &str,
        version: u32,
        digest: String,
        prepared: Prepared,
        limits: Limits,
        manifest: &Manifest,
        plan: &Plan,
        pins: &BTreeMap<String, String>,
    ) -> Result<Deployment, RegistryError> {
        let view = if manifest.capabilities.files.is_empty() {
            None
        } else {
            let (store, t, f, granted) =
                (self.files.clone(), tenant.to_string(), function.to_string(), manifest.capabilities.files.clone());
            let view = tokio::task::spawn_blocking(move || store.view(&t, &f, version, &granted))
                .await
                .map_err(|e| anyhow::anyhow!("view task failed: {e}"))??;
            Some(view)
        };
        let mut config = manifest.config_pairs();
        let revealed = self.secrets.reveal(tenant, &manifest.capabilities.secrets).await?;
        let redact = revealed.iter().map(|(_, v)| v.clone()).collect();
        config.extend(revealed);
        let grants = Grants {
            config: Arc::new(config),
            nn: Some(self.nn_access(tenant, manifest, plan, pins)),
            files: view.as_ref().map(|v| v.path.clone()),
            allowed_hosts: Arc::new(if plan.outbound_http {
                manifest.capabilities.allowed_hosts.clone()
            } else {
                Vec::new()
            }),
            network: Arc::new(crate::runtime::http::Network {
                allow_ranges: self.config.outbound.allow_ranges.clone(),
                connect_timeout: self.config.outbound.connect_timeout,
                first_byte_timeout: self.config.outbound.first_byte_timeout,
                between_bytes_timeout: self.config.outbound.between_bytes_timeout,
                max_requests: plan.outbound_requests_per_call,
                max_bytes: plan.outbound_bytes_per_call,
            }),
        };
        Ok(Deployment {
            tenant: tenant.to_string(),
            name: function.to_string(),
            version,
            digest,
            prepared,
            limits,
            grants,
            files: manifest.capabilities.files.clone(),
            _files_view: view,
            secrets: manifest.capabilities.secrets.clone(),
            redact: Arc::new(redact),
            metrics: std::sync::OnceLock::new(),
            inputs: manifest.inputs.clone(),
            outputs: manifest.outputs.clone(),
        })
    }

    /// Validates, compiles and stores a new version. Nothing is stored when any check fails.
    pub async fn upload(
        &self,
        tenant: &str,
        plan: &str,
        manifest_text: &str,
        component: Bytes,
    ) -> Result<FunctionVersion, RegistryError> {
        let manifest = Manifest::parse(manifest_text).map_err(RegistryError::Invalid)?;
        let plan_cfg =
            self.config.plans.get(plan).ok_or_else(|| anyhow::anyhow!("tenant {tenant} has unknown plan {plan}"))?;
        let limits = manifest.limits(plan, plan_cfg).map_err(RegistryError::Invalid)?;
        let digest = digest_of(&component);

        let runtime = self.runtime.clone();
        let d = digest.clone();
        let bytes = component.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            runtime.prepare_new(&d, &bytes).map_err(|e| RegistryError::Invalid(e.to_string()))
        })
        .await
        .map_err(|e| anyhow::anyhow!("compile task failed: {e}"))??;
        let size = component.len() as u64;
        if let Err(refused) = self.check_prepared(tenant, &manifest, &prepared).await {
            // The artifact just compiled goes too, unless a live version runs the same bytes.
            let d = vec![digest.clone()];
            if let Ok(unused) = self.db.call(move |conn| Ok(db::unreferenced(conn, &d)?)).await {
                unused.iter().for_each(|digest| self.runtime.forget_artifact(digest));
            }
            return Err(refused);
        }

        let row = FunctionVersion {
            name: manifest.name.clone(),
            version: 0,
            digest: digest.clone(),
            imports: prepared.info.imports.clone(),
            size,
            created_at: crate::clock::now_rfc3339(),
            manifest: manifest.clone(),
            smoke: None,
            model_pins: self.resolve_models(tenant, &manifest).await?,
        };
        // The blob is written only once every check passed (a refused upload leaves nothing);
        // the quota is checked again in the transaction that adds the version.
        let blobs = self.blobs.clone();
        let d = digest.clone();
        let writing = self.blobs.writing.lock().await;
        tokio::task::spawn_blocking(move || blobs.put(&d, &component))
            .await
            .map_err(|e| anyhow::anyhow!("blob task failed: {e}"))??;
        let (t, r, p, quota) = (tenant.to_string(), row.clone(), plan.to_string(), plan_cfg.clone());
        let version = self
            .db
            .call(move |conn| {
                let tx = conn.transaction()?;
                if let Some(over) = db::over_quota(&tx, "functions", &t, &r.name, r.size, &p, &quota)? {
                    return Ok(Err(over));
                }
                let version = db::next_version(&tx, "functions", &t, &r.name, &r.digest, r.size, &r.created_at)?;
                tx.execute(
                    "INSERT INTO functions (tenant, name, version, digest, manifest, imports, size, created_at, model_pins, smoke)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        t,
                        r.name,
                        version,
                        r.digest,
                        serde_json::to_string(&r.manifest)?,
                        serde_json::to_string(&r.imports)?,
                        r.size,
                        r.created_at,
                        serde_json::to_string(&r.model_pins)?,
                        // Smoke tests run once the version is stored: until their report is
                        // written, the version is pending (neither released nor served as newest).
                        (!r.manifest.smoke.is_empty())
                            .then(|| serde_json::to_string(&SmokeReport { passed: false, pending: true, results: Vec::new() }))
                            .transpose()?
                    ],
                )?;
                tx.commit()?;
                Ok(Ok(version))
            })
            .await?
            .map_err(RegistryError::Quota);
        if version.is_err() {
            // Refused: the blob just written and the compiled artifact go unless another
            // version names them.
            for removed in self.blobs.sweep(&self.db, vec![digest.clone()]).await? {
                self.runtime.forget_artifact(&removed);
            }
        }
        drop(writing);
        let version = version?;

        let generation = self.generation.load(Ordering::SeqCst);
        let deployment = Arc::new(
            self.deployment(
                tenant,
                &manifest.name,
                version,
                digest,
                prepared,
                limits,
                &manifest,
                plan_cfg,
                &row.model_pins,
            )
            .await?,
        );
        let smoke = if manifest.smoke.is_empty() { None } else { Some(self.smoke(&deployment, &manifest).await?) };
        if let Ok(mut cache) = self.cache.write()
            && self.generation.load(Ordering::SeqCst) == generation
        {
            let entry = cache.entry(tenant.to_string()).or_default().entry(manifest.name.clone()).or_default();
            entry.versions.insert(version, deployment);
            // Only move `latest` forward when it is known, and not to a version whose smoke
            // tests failed; otherwise the next call asks SQLite.
            if let Some(latest) = entry.latest.as_mut()
                && smoke.as_ref().is_none_or(|s| s.passed)
            {
                *latest = (*latest).max(version);
            }
        }
        Ok(FunctionVersion { version, smoke, ..row })
    }

    /// Runs the version's smoke tests, each in a fresh sandbox with its grants, and records the
    /// report with the version. Not billed: the platform runs them, not a caller.
    async fn smoke(&self, deployment: &Deployment, manifest: &Manifest) -> Result<SmokeReport, RegistryError> {
        let mut results = Vec::new();
        for test in &manifest.smoke {
            let method = test.method.clone().unwrap_or_else(|| if test.body.is_some() { "POST" } else { "GET" }.into());
            let (path, query) = test.path.split_once('?').unwrap_or((&test.path, ""));
            let request = crate::runtime::GuestRequest {
                method: method.to_ascii_uppercase(),
                path: path.to_string(),
                query: query.to_string(),
                headers: test.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect(),
                body: test.body.clone().unwrap_or_default().into_bytes(),
            };
            let outcome =
                self.runtime.invoke(&deployment.prepared, &deployment.limits, &deployment.grants, request).await;
            let (status, failure) = match outcome.result {
                Ok(answer) => {
                    let body = String::from_utf8_lossy(&answer.body);
                    let missing: Vec<&str> =
                        test.contains.iter().filter(|f| !body.contains(f.as_str())).map(String::as_str).collect();
                    let failure = if answer.status != test.status {
                        Some(format!("answered {} (expected {})", answer.status, test.status))
                    } else if !missing.is_empty() {
                        Some(format!("the body does not contain {missing:?}"))
                    } else {
                        None
                    };
                    (answer.status, failure)
                }
                Err(e) => {
                    let message = e.to_string();
                    let status = crate::error::ApiError::from(e).status().as_u16();
                    let failure = (status != test.status || !test.contains.is_empty())
                        .then(|| format!("failed with {status}: {message} (expected {})", test.status));
                    (status, failure)
                }
            };
            results.push(SmokeResult {
                method,
                path: test.path.clone(),
                expected_status: test.status,
                status,
                passed: failure.is_none(),
                failure,
            });
        }
        let report = SmokeReport { passed: results.iter().all(|r| r.passed), pending: false, results };
        let (t, n, v, json) = (
            deployment.tenant.clone(),
            deployment.name.clone(),
            deployment.version,
            serde_json::to_string(&report).map_err(anyhow::Error::from)?,
        );
        self.db
            .call(move |conn| {
                conn.execute(
                    "UPDATE functions SET smoke = ?1 WHERE tenant = ?2 AND name = ?3 AND version = ?4",
                    params![json, t, n, v],
                )?;
                Ok(())
            })
            .await?;
        Ok(report)
    }

    /// The tenant's live functions.
    pub async fn list(&self, tenant: &str) -> Result<Vec<FunctionSummary>, RegistryError> {
        let t = tenant.to_string();
        Ok(self
            .db
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT f.name, f.version, f.digest, f.created_at, c.n FROM functions f
                     JOIN (SELECT name, MAX(version) AS v, COUNT(*) AS n FROM functions
                           WHERE tenant = ?1 AND deleted_at IS NULL GROUP BY name) c
                       ON f.name = c.name AND f.version = c.v
                     WHERE f.tenant = ?1 ORDER BY f.name",
                )?;
                let rows = stmt.query_map([&t], |r| {
                    Ok(FunctionSummary {
                        name: r.get(0)?,
                        latest_version: r.get(1)?,
                        digest: r.get(2)?,
                        updated_at: r.get(3)?,
                        versions: r.get(4)?,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?)
    }

    /// Every live version of one function, oldest first; 404 when there is none.
    pub async fn versions(&self, tenant: &str, name: &str) -> Result<Vec<FunctionVersion>, RegistryError> {
        let (t, n) = (tenant.to_string(), name.to_string());
        let versions = self
            .db
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT name, version, digest, imports, size, created_at, manifest, smoke, model_pins FROM functions
                     WHERE tenant = ?1 AND name = ?2 AND deleted_at IS NULL ORDER BY version",
                )?;
                let rows = stmt.query_map(params![t, n], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, u64>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, Option<String>>(7)?,
                        r.get::<_, Option<String>>(8)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (name, version, digest, imports, size, created_at, manifest, smoke, pins) = row?;
                    out.push(FunctionVersion {
                        name,
                        version,
                        digest,
                        imports: serde_json::from_str(&imports)?,
                        size,
                        created_at,
                        manifest: serde_json::from_str(&manifest)?,
                        smoke: smoke.map(|s| serde_json::from_str(&s)).transpose()?,
                        model_pins: pins.map(|p| serde_json::from_str(&p)).transpose()?.unwrap_or_default(),
                    });
                }
                Ok(out)
            })
            .await?;
        if versions.is_empty() {
            return Err(not_found(name));
        }
        Ok(versions)
    }

    /// What a compiled upload must pass before it is stored.
    async fn check_prepared(
        &self,
        tenant: &str,
        manifest: &Manifest,
        prepared: &crate::runtime::Prepared,
    ) -> Result<(), RegistryError> {
        // Outbound HTTP is linked for every function but useless without hosts: say so at upload.
        if let Some(import) = prepared.info.imports.iter().find(|i| i.starts_with("wasi:http/outgoing-handler"))
            && manifest.capabilities.allowed_hosts.is_empty()
        {
            return Err(RegistryError::Invalid(format!(
                "the component imports `{import}`, which needs the `allowed_hosts` grant: list the hosts it may call under [capabilities]"
            )));
        }
        if prepared.is_predictor() && !manifest.smoke.is_empty() {
            return Err(RegistryError::Invalid(
                "[[smoke]] tests are HTTP requests: a tensor function (predictor world) cannot have them".into(),
            ));
        }
        // `/v2/models/{name}` serves models and tensor functions: one name, one of them.
        if prepared.is_predictor() && !self.models.named(tenant, &manifest.name).await?.is_empty() {
            return Err(RegistryError::Conflict(format!(
                "a model named `{}` exists: a tensor function (predictor world) needs a name of its own, as both are served at /v2/models/{{name}}",
                manifest.name
            )));
        }
        Ok(())
    }

    /// Deletes every version of a function; returns how many. Version numbers are not reused.
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<u32, RegistryError> {
        let (deleted, digests) = db::soft_delete(&self.db, "functions", tenant, name).await?;
        if deleted == 0 {
            return Err(not_found(name));
        }
        // Components no live version names any more: their blobs and compiled artifacts go.
        for digest in self.blobs.collect(&self.db, digests).await? {
            self.runtime.forget_artifact(&digest);
        }
        if let Ok(mut cache) = self.cache.write() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            if let Some(functions) = cache.get_mut(tenant) {
                functions.remove(name);
            }
        }
        self.logs.clear(tenant, name);
        Ok(deleted)
    }

    /// The deployed version to run for `tenant/name[@version]`, loading it if needed.
    pub async fn resolve(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Arc<Deployment>, RegistryError> {
        let cached = |version: Option<u32>| -> (Option<u32>, Option<Arc<Deployment>>) {
            let Ok(cache) = self.cache.read() else { return (None, None) };
            let Some(entry) = cache.get(tenant).and_then(|f| f.get(name)) else { return (None, None) };
            let v = version.or(entry.latest);
            (v, v.and_then(|v| entry.versions.get(&v).cloned()))
        };
        let version = match cached(version) {
            (_, Some(d)) => return Ok(d),
            (Some(v), None) => v,
            (None, None) => match version {
                Some(v) => v,
                None => self.latest_from_db(tenant, name).await?,
            },
        };
        if let (_, Some(d)) = cached(Some(version)) {
            return Ok(d);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let deployment = Arc::new(self.load(tenant, name, version).await?);
        if let Ok(mut cache) = self.cache.write()
            && self.generation.load(Ordering::SeqCst) == generation
        {
            let entry = cache.entry(tenant.to_string()).or_default().entry(name.to_string()).or_default();
            // Versions addressed by number come from tenant input: keep the newest and a few
            // pinned ones, not every version ever asked for.
            if entry.versions.len() >= MAX_CACHED_VERSIONS
                && let Some(&evict) = entry.versions.keys().filter(|v| Some(**v) != entry.latest).min()
            {
                entry.versions.remove(&evict);
            }
            entry.versions.insert(version, deployment.clone());
        }
        Ok(deployment)
    }

    async fn latest_from_db(&self, tenant: &str, name: &str) -> Result<u32, RegistryError> {
        let generation = self.generation.load(Ordering::SeqCst);
        let (t, n) = (tenant.to_string(), name.to_string());
        let latest: Option<u32> = self
            .db
            .call(move |conn| {
                Ok(conn.query_row(
                    // The newest version whose smoke tests did not fail (nor are still running);
                    // the newest of all when every version failed them.
                    "SELECT COALESCE(
                       MAX(CASE WHEN smoke IS NULL OR json_extract(smoke, '$.passed') THEN version END),
                       MAX(version))
                     FROM functions WHERE tenant = ?1 AND name = ?2 AND deleted_at IS NULL",
                    params![t, n],
                    |r| r.get(0),
                )?)
            })
            .await?;
        let latest = latest.ok_or_else(|| not_found(name))?;
        if let Ok(mut cache) = self.cache.write()
            && self.generation.load(Ordering::SeqCst) == generation
        {
            let entry = cache.entry(tenant.to_string()).or_default().entry(name.to_string()).or_default();
            entry.latest = Some(entry.latest.map_or(latest, |l| l.max(latest)));
        }
        Ok(latest)
    }

    async fn load(&self, tenant: &str, name: &str, version: u32) -> Result<Deployment, RegistryError> {
        let (t, n) = (tenant.to_string(), name.to_string());
        let row: Option<(String, String, String, Option<String>)> = self
            .db
            .call(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT f.digest, f.manifest, t.plan, f.model_pins FROM functions f JOIN tenants t ON t.name = f.tenant
                         WHERE f.tenant = ?1 AND f.name = ?2 AND f.version = ?3 AND f.deleted_at IS NULL",
                        params![t, n, version],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )
                    .optional()?)
            })
            .await?;
        let (digest, manifest, plan, pins) =
            row.ok_or_else(|| RegistryError::NoVersion { kind: "function", name: name.to_string(), version })?;
        let pins: BTreeMap<String, String> =
            pins.map(|p| serde_json::from_str(&p)).transpose().map_err(anyhow::Error::from)?.unwrap_or_default();
        let manifest: Manifest = serde_json::from_str(&manifest).map_err(anyhow::Error::from)?;
        let plan_cfg = self.config.plans.get(&plan).ok_or_else(|| anyhow::anyhow!("unknown plan {plan}"))?;
        // A version stored under a bigger plan is clamped to the tenant's current plan.
        let limits = manifest.limits(&plan, plan_cfg).unwrap_or_else(|_| manifest.limits_clamped(plan_cfg));
        let (runtime, blobs, d) = (self.runtime.clone(), self.blobs.clone(), digest.clone());
        let prepared = tokio::task::spawn_blocking(move || runtime.prepare_stored(&d, || blobs.get(&d)))
            .await
            .map_err(|e| anyhow::anyhow!("load task failed: {e}"))??;
        self.deployment(tenant, name, version, digest, prepared, limits, &manifest, plan_cfg, &pins).await
    }

    /// The model version each of the manifest's granted models resolves to now: a name alone
    /// is pinned to the model's current version (its release, or its newest) so that this
    /// function version always loads that one; `name@N` is N (which must exist); `name@alias`
    /// follows the alias. A model that does not exist yet is left `current`.
    async fn resolve_models(
        &self,
        tenant: &str,
        manifest: &Manifest,
    ) -> Result<BTreeMap<String, String>, RegistryError> {
        use crate::runtime::nn::ModelPin;
        let mut pins = BTreeMap::new();
        for grant in &manifest.capabilities.models {
            let (name, pin) = manifest::model_grant(grant);
            let pin = match pin {
                Some(pin @ ModelPin::Version(v)) => {
                    if self.models.pinned(tenant, name, &pin).await.is_none() {
                        return Err(RegistryError::Invalid(format!(
                            "capabilities.models names `{grant}`, but model `{name}` has no version {v}"
                        )));
                    }
                    pin
                }
                Some(pin) => pin,
                None => match self.models.pinned(tenant, name, &ModelPin::Current).await {
                    Some(model) => ModelPin::Version(model.version),
                    None => ModelPin::Current,
                },
            };
            pins.insert(name.to_string(), pin.text());
        }
        Ok(pins)
    }
}

impl Registry {
    /// The wasi:nn grants of a function version under its tenant's plan.
    fn nn_access(&self, tenant: &str, manifest: &Manifest, plan: &Plan, pins: &BTreeMap<String, String>) -> NnAccess {
        use crate::runtime::nn::ModelPin;
        let models = manifest
            .capabilities
            .models
            .iter()
            .map(|grant| {
                let (name, pin) = manifest::model_grant(grant);
                // The pin recorded at deploy; a version stored before pins were recorded follows
                // the model's current version, as it always did.
                let pin = pins.get(name).map(|p| ModelPin::parse_text(p)).or(pin).unwrap_or(ModelPin::Current);
                (name.to_string(), pin)
            })
            .collect();
        NnAccess {
            tenant: tenant.to_string(),
            models,
            gpu: manifest.capabilities.gpu && plan.gpu,
            load_bytes: manifest.capabilities.nn_load_bytes && plan.nn_load_bytes,
            max_model_bytes: plan.max_model_bytes,
            graphs: self.models.graphs().clone(),
            source: self.models.clone(),
        }
    }
}

fn not_found(name: &str) -> RegistryError {
    RegistryError::NotFound { kind: "function", name: name.to_string() }
}

/// What the registry (functions, models, files, secrets) refuses or fails with.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The manifest, component, model or value is not acceptable; the message says why.
    #[error("{0}")]
    Invalid(String),
    #[error("no {kind} named `{name}`")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} `{name}` has no version {version}")]
    NoVersion { kind: &'static str, name: String, version: u32 },
    /// The name is taken by something it cannot share it with.
    #[error("{0}")]
    Conflict(String),
    /// Over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// Over the tenant's storage quota (its plan's `max_*` counts and bytes).
    #[error("{0}")]
    Quota(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}
