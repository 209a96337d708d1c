//! The composition root: every process-wide piece of the server, built once from the
//! configuration and the data directory, and shared by every handler as `Arc<App>`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use crate::audit::Audit;
use crate::config::Config;
use crate::db::Db;
use crate::metering::Metering;
use crate::metering::quota::Quotas;
use crate::metrics::Metrics;
use crate::nn::graphs::ComputePriority;
use crate::nn::onnxruntime::OnnxRuntime;
use crate::nn::tract::Tract;
use crate::nn::{Engine, Graphs};
use crate::registry::{BlobStore, Registry};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::tenants::Tenants;

/// Process-wide state shared by every handler.
pub struct App {
    pub config: Arc<Config>,
    pub tenants: Tenants,
    pub registry: Registry,
    pub runtime: Arc<Runtime>,
    pub metrics: Arc<Metrics>,
    pub metering: Metering,
    pub quotas: Quotas,
    /// `/v2` inference statistics, since start.
    pub oip_stats: crate::invocation::stats::Stats,
    /// Engines, the shared graph cache and the compute pools.
    pub graphs: Arc<Graphs>,
    /// Calls running now, each in a task of its own (a client that hangs up does not cancel
    /// its call); shutdown waits for them, so every call that ran is committed.
    pub calls: tokio_util::task::TaskTracker,
    pub audit: Audit,
    /// CPU and GPUs, discovered on first use.
    pub devices: crate::nn::devices::Devices,
    /// Which version answers each function's and model's bare name.
    pub releases: Arc<crate::releases::Releases>,
    /// Slots of the mirrored calls running at once, platform-wide and per tenant.
    pub shadow_slots: Arc<tokio::sync::Semaphore>,
    pub shadow_slots_per_tenant: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// Where the admin key came from, for the start-up message.
pub struct AdminKeySource {
    pub path: Option<PathBuf>,
    pub created: bool,
}

impl App {
    /// Opens (creating if needed) the data directory and everything in it.
    pub fn open(
        config: Config,
        data_dir: &std::path::Path,
        admin_key_env: Option<String>,
    ) -> anyhow::Result<(Arc<Self>, AdminKeySource)> {
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let root = cap_std::fs::Dir::open_ambient_dir(data_dir, cap_std::ambient_authority())
            .with_context(|| format!("opening data dir {}", data_dir.display()))?;
        for sub in ["blobs", "artifacts"] {
            root.create_dir_all(sub)?;
        }
        let (admin_key, path, created) = crate::tenants::admin_key(data_dir, admin_key_env)?;
        let db = Db::open(&data_dir.join("infercell.db"))?;
        let runtime_config = RuntimeConfig {
            max_instances: config.runtime.max_instances,
            max_memory_bytes: config.largest_memory(),
            epoch_tick: config.runtime.epoch_tick,
            max_log_bytes_per_call: config.runtime.max_log_bytes_per_call as usize,
        };
        let runtime = Arc::new(Runtime::new(runtime_config, root.open_dir("artifacts")?)?);
        let config = Arc::new(config);
        let tenants = Tenants::load(db.clone(), &admin_key)?;
        let threads = match config.nn.compute_threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        };
        let priority = ComputePriority::parse(&config.nn.compute_priority).unwrap_or(ComputePriority::Idle);
        let mut graphs =
            Graphs::with_priority(engines(&config.nn.onnxruntime), config.nn.graph_cache_bytes, threads, priority);
        graphs.prober = prober(&config);
        if config.nn.gpu == "auto" {
            graphs.enable_gpu(config.nn.gpu_memory_bytes, config.nn.gpu_fusion);
        }
        let metrics = Arc::new(Metrics::new(config.metrics.clone()));
        let load_time = metrics.graph_load.clone();
        graphs.on_load = Box::new(move |took| load_time.observe(took.as_secs_f64()));
        let m = metrics.clone();
        graphs.on_wait = Box::new(move |pool, waited| m.compute_queue(pool, waited));
        let m = metrics.clone();
        graphs.on_compute = Box::new(move |tenant, named, engine, device, took| {
            m.nn_compute(tenant, named.map(|n| n.name.as_str()), engine, device, took)
        });
        let audit = Audit::new(db.clone());
        let releases = Arc::new(crate::releases::Releases::open(db.clone(), audit.clone(), metrics.clone())?);
        let files = crate::registry::files::FileStore::open(db.clone(), data_dir, &root)?;
        let secrets = crate::registry::secrets::SecretStore::open(
            db.clone(),
            data_dir,
            std::env::var("INFERCELL_SECRETS_KEY").ok(),
        )?;
        let graphs = Arc::new(graphs);
        let registry = Registry::new(
            db,
            BlobStore::new(root.open_dir("blobs")?),
            runtime.clone(),
            config.clone(),
            graphs.clone(),
            files,
            secrets,
            releases.clone(),
        );
        let metering = Metering::open(
            &data_dir.join("usage.db"),
            config.metering.enabled,
            config.metering.fsync,
            metrics.usage_batch_size.clone(),
        )?;
        let quotas = Quotas::new(config.runtime.instances_per_tenant());
        let app = Arc::new(Self {
            config,
            tenants,
            registry,
            runtime,
            metrics,
            metering,
            quotas,
            oip_stats: Default::default(),
            graphs,
            calls: Default::default(),
            audit,
            devices: Default::default(),
            releases,
            shadow_slots: Arc::new(tokio::sync::Semaphore::new(crate::invocation::SHADOW_SLOTS)),
            shadow_slots_per_tenant: Default::default(),
        });
        // Devices are discovered at start, off the callers' path.
        let discovering = app.clone();
        std::thread::Builder::new().name("device-discovery".into()).spawn(move || {
            discovering.devices.list();
            if let Some(gpu) = discovering.graphs.gpu() {
                tracing::info!(adapter = gpu.adapter_name(), hardware = gpu.is_hardware(), "GPU engine available");
            }
        })?;
        Ok((app, AdminKeySource { path, created }))
    }
}

/// The model prober, when this process is the `infercell` binary (in-process users such as the
/// benchmarks have no `nn-probe` command to call).
fn prober(config: &Config) -> Option<Arc<crate::nn::probe::Prober>> {
    let binary = std::env::current_exe().ok().filter(|p| p.file_stem().is_some_and(|s| s == "infercell"))?;
    let onnxruntime = match config.nn.onnxruntime.as_str() {
        "" => std::env::var("ORT_DYLIB_PATH").ok().filter(|p| !p.is_empty()).map(PathBuf::from),
        path => Some(PathBuf::from(path)),
    };
    Some(Arc::new(crate::nn::probe::Prober {
        binary,
        max_bytes: config.nn.load_memory_bytes,
        onnxruntime,
        timeout: std::time::Duration::from_secs(120),
    }))
}

/// The inference engines in order of preference for `auto`: ONNX Runtime when its library
/// (`[nn] onnxruntime`, else `ORT_DYLIB_PATH`) loads, then tract, which is always there.
fn engines(onnxruntime: &str) -> Vec<Arc<dyn Engine>> {
    let path = match onnxruntime {
        "" => std::env::var("ORT_DYLIB_PATH").unwrap_or_default(),
        path => path.to_string(),
    };
    let mut engines: Vec<Arc<dyn Engine>> = Vec::new();
    if !path.is_empty() {
        match OnnxRuntime::load(Path::new(&path)) {
            Ok(ort) => engines.push(Arc::new(ort)),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "ONNX Runtime unavailable; running on tract alone"),
        }
    }
    engines.push(Arc::new(Tract));
    engines
}
