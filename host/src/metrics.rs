//! Prometheus metrics. Labels carry tenant, function and model names, never keys; how many
//! distinct values they carry is capped ([`crate::config::MetricsConfig`], docs/metrics.md),
//! the rest folded into `other`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::config::MetricsConfig;
use crate::metering::Outcome;

/// An open client connection, counted in `infercell_connections` until dropped.
pub struct Open(Gauge);

impl Open {
    pub fn new(metrics: &Metrics) -> Self {
        metrics.connections.inc();
        Self(metrics.connections.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The label value every name past its cap is folded into.
pub const OTHER: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InvocationLabels {
    pub tenant: String,
    pub function: String,
    /// ok, guest_error, trap, timeout, memory_limit, fuel_limit, error.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub tenant: String,
    pub function: String,
}

/// One series of `infercell_request_duration_seconds`: a function's or a model's version on
/// one route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub tenant: String,
    /// function or model.
    pub kind: String,
    pub name: String,
    pub version: String,
    /// fn (`/fn/...`) or v2 (`/v2/models/.../infer`).
    pub route: String,
}

/// One series of `infercell_requests_total`: [`RequestLabels`] and the answer's status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestCodeLabels {
    pub tenant: String,
    pub kind: String,
    pub name: String,
    pub version: String,
    pub route: String,
    /// The HTTP status code of the answer (`200`, `500`, ...).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComputeLabels {
    pub tenant: String,
    /// The model's name (`-` for a graph a function loaded from bytes).
    pub model: String,
    /// tract, onnxruntime or wgpu.
    pub engine: String,
    /// cpu or gpu: where the compute's nodes ran (gpu when any did).
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    pub tenant: String,
    pub model: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// cpu (the compute threads) or gpu (calls waiting on the device).
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantCurrencyLabels {
    pub tenant: String,
    /// The plan's ISO 4217 currency.
    pub currency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub tenant: String,
    /// The grant a host call needed: models, gpu, wasi-nn.
    pub capability: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub tenant: String,
    /// rate, concurrency, budget, busy (no instance slot), gpu_busy (no GPU memory now).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReleaseLabels {
    pub tenant: String,
    /// function or model.
    pub kind: String,
    pub name: String,
    /// automatic (a canary judged by its health) or manual (a command).
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UploadLabels {
    pub outcome: String,
}

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The metric handles of one function, resolved once per deployed version so that a call
/// neither allocates label strings nor hashes them.
#[derive(Clone)]
pub struct FunctionMetrics {
    pub duration: Histogram,
    outcomes: Vec<Counter>,
    pub log_bytes_dropped: Counter,
}

impl FunctionMetrics {
    /// The counter of `outcome`.
    pub fn outcome(&self, outcome: Outcome) -> &Counter {
        &self.outcomes[Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0)]
    }
}

/// What a call is, for its request series.
#[derive(Clone, Copy, Debug)]
pub struct CallSite<'a> {
    pub tenant: &'a str,
    /// function or model.
    pub kind: &'static str,
    pub name: &'a str,
    pub version: u32,
    /// fn or v2.
    pub route: &'static str,
}

/// The request series of one version on one route, made once.
struct RequestHandles {
    labels: RequestLabels,
    duration: Histogram,
    /// Counters by status code (a handful per version).
    codes: RwLock<Vec<(u16, Counter)>>,
}

/// The request series made so far, by their call site as it is (not folded): tenant, then
/// name, then (kind, version, route). A lookup borrows the call's strings: a call whose series
/// exist allocates nothing. Entries are real deployed versions, so the index is as large as
/// the registry; an entry whose labels fold into `other` shares its series with the rest.
type RequestIndex = HashMap<String, HashMap<String, HashMap<(&'static str, u32, &'static str), Arc<RequestHandles>>>>;

/// The engine-time histograms made so far: tenant, then model (`-` for bytes), then
/// (engine, device).
type ComputeIndex = HashMap<String, HashMap<String, Vec<(&'static str, &'static str, Histogram)>>>;

/// The label values in use, within their caps.
#[derive(Default)]
struct Names {
    tenants: HashSet<String>,
    /// Per tenant: the (kind, name) pairs named.
    names: HashMap<String, HashSet<(&'static str, String)>>,
    /// Per (tenant, kind, name) as labelled: the versions named, newest last.
    versions: HashMap<(String, &'static str, String), BTreeSet<u32>>,
}

impl Names {
    fn tenant(&mut self, caps: &MetricsConfig, tenant: &str) -> String {
        if self.tenants.contains(tenant) {
            return tenant.to_string();
        }
        if self.tenants.len() < caps.max_tenants {
            self.tenants.insert(tenant.to_string());
            return tenant.to_string();
        }
        OTHER.to_string()
    }

    /// The (tenant, name) labels of `tenant`'s `name`.
    fn name(&mut self, caps: &MetricsConfig, tenant: &str, kind: &'static str, name: &str) -> (String, String) {
        let tenant = self.tenant(caps, tenant);
        if tenant == OTHER {
            return (tenant, OTHER.to_string());
        }
        let names = self.names.entry(tenant.clone()).or_default();
        let key = (kind, name.to_string());
        if names.contains(&key) || names.len() < caps.max_names_per_tenant {
            names.insert(key);
            return (tenant, name.to_string());
        }
        (tenant, OTHER.to_string())
    }
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    caps: MetricsConfig,
    names: Mutex<Names>,
    requests_index: RwLock<RequestIndex>,
    compute_index: RwLock<ComputeIndex>,
    /// Per tenant: its currency and its cost counter.
    cost_index: RwLock<HashMap<String, (String, FloatCounter)>>,
    /// Scrapes, one at a time: the gauges refreshed at scrape time are cleared and set again.
    scrape: Mutex<()>,
    pub invocations: Family<InvocationLabels, Counter>,
    pub invocation_duration: Family<FunctionLabels, Histogram>,
    requests: Family<RequestCodeLabels, Counter>,
    request_duration: Family<RequestLabels, Histogram>,
    pub instantiate: Histogram,
    compute_queue: Family<PoolLabels, Histogram>,
    nn_compute: Family<ComputeLabels, Histogram>,
    pub active_instances: Gauge,
    instance_slots: Gauge,
    instances_live: Gauge,
    compute_slots: Family<PoolLabels, Gauge>,
    compute_busy: Family<PoolLabels, Gauge>,
    pub uploads: Family<UploadLabels, Counter>,
    pub compile_duration: Histogram,
    pub log_bytes_dropped: Family<FunctionLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    denials: Family<DenialLabels, Counter>,
    unauthenticated: Family<ReasonLabels, Counter>,
    connections: Gauge,
    connections_refused: Counter,
    pub usage_batch_size: Histogram,
    pub usage_commit: Histogram,
    pub usage_backlog: Gauge,
    pub usage_commit_failures: Counter,
    cost: Family<TenantCurrencyLabels, FloatCounter>,
    budget_spent: Family<TenantCurrencyLabels, FloatGauge>,
    budget_limit: Family<TenantCurrencyLabels, FloatGauge>,
    drift: Family<DriftLabels, FloatGauge>,
    release_rollbacks: Family<ReleaseLabels, Counter>,
    release_promotions: Family<ReleaseLabels, Counter>,
    gpu_memory: Gauge,
    gpu_budget: Gauge,
    gpu_evictions: Counter,
    gpu_recreated: Counter,
    pub graph_load: Histogram,
    graph_hits: Counter,
    graph_misses: Counter,
    graph_evictions: Counter,
    graph_bytes: Gauge,
    graphs_loaded: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(MetricsConfig { max_tenants: 100, max_names_per_tenant: 100, max_versions_per_name: 4 })
    }
}

/// Request latency buckets, at round values so that objectives (ops/slo.md) can name one:
/// 100 us to 60 s.
pub const LATENCY_BUCKETS: [f64; 18] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

fn latency_buckets() -> impl Iterator<Item = f64> {
    LATENCY_BUCKETS.into_iter()
}

/// Buckets for the short host-side steps (queue waits, instantiation, engine computes), at
/// round values: 10 us to 30 s.
fn step_buckets() -> impl Iterator<Item = f64> {
    [
        0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5, 5.0, 10.0, 30.0,
    ]
    .into_iter()
}

/// Registers `metric` under `name` and hands it back.
fn register<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new(caps: MetricsConfig) -> Self {
        let mut registry = Registry::with_prefix("infercell");
        registry.register(
            "build",
            "The server's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_string())]),
        );
        let start_time = Gauge::<i64>::default();
        start_time.set(crate::clock::now_us() / 1_000_000);
        registry.register("start_time_seconds", "When the server started, in Unix seconds", start_time);
        let invocations = register(
            &mut registry,
            "invocations",
            "Function invocations by outcome",
            Family::<InvocationLabels, Counter>::default(),
        );
        let invocation_duration = register(
            &mut registry,
            "invocation_duration_seconds",
            "Wall time of function invocations",
            Family::<FunctionLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets())),
        );
        let requests = register(
            &mut registry,
            "requests",
            "Admitted calls of a function or model version, by route and answer status (refusals before admission are in infercell_refused_total)",
            Family::<RequestCodeLabels, Counter>::default(),
        );
        let request_duration = register(
            &mut registry,
            "request_duration_seconds",
            "Time from a call's request received to its answer ready, usage committed",
            Family::<RequestLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets())),
        );
        let instantiate = register(
            &mut registry,
            "instantiate_seconds",
            "Time to instantiate a function's fresh sandbox for one call",
            Histogram::new(step_buckets()),
        );
        let compute_queue = register(
            &mut registry,
            "compute_queue_seconds",
            "Time a compute or graph load waited for a slot of its pool (and its tenant's share)",
            Family::<PoolLabels, Histogram>::new_with_constructor(|| Histogram::new(step_buckets())),
        );
        let nn_compute = register(
            &mut registry,
            "nn_compute_seconds",
            "Engine time of one model compute, by model, engine and device",
            Family::<ComputeLabels, Histogram>::new_with_constructor(|| Histogram::new(step_buckets())),
        );
        let active_instances =
            register(&mut registry, "active_instances", "Instances running a call right now", Gauge::default());
        let instance_slots = register(
            &mut registry,
            "instance_slots",
            "Instances that may run at once (runtime.max_instances)",
            Gauge::default(),
        );
        let instances_live = register(
            &mut registry,
            "instances_live",
            "Sandboxes alive now, each holding one of the runtime.max_instances pooling slots",
            Gauge::default(),
        );
        let compute_slots = register(
            &mut registry,
            "compute_slots",
            "Computes that may run at once, per pool",
            Family::<PoolLabels, Gauge>::default(),
        );
        let compute_busy = register(
            &mut registry,
            "compute_busy",
            "Compute slots taken now, per pool",
            Family::<PoolLabels, Gauge>::default(),
        );
        let uploads = register(
            &mut registry,
            "uploads",
            "Function uploads by outcome",
            Family::<UploadLabels, Counter>::default(),
        );
        let compile_duration = register(
            &mut registry,
            "compile_duration_seconds",
            "Time to compile an uploaded component",
            Histogram::new(exponential_buckets(0.01, 2.0, 12)),
        );
        let log_bytes_dropped = register(
            &mut registry,
            "log_bytes_dropped",
            "Function log bytes dropped over the per-call cap",
            Family::<FunctionLabels, Counter>::default(),
        );
        let refused = register(
            &mut registry,
            "refused",
            "Calls refused before running (quota, budget, no free instance)",
            Family::<RefusedLabels, Counter>::default(),
        );
        let connections = register(&mut registry, "connections", "Client connections open now", Gauge::default());
        let connections_refused = register(
            &mut registry,
            "connections_refused",
            "Connections answered 503 and closed: server.max_connections were open",
            Counter::default(),
        );
        let unauthenticated = register(
            &mut registry,
            "unauthenticated",
            "Requests refused with 401: missing_key (none sent) or invalid_key (unknown, revoked or expired)",
            Family::<ReasonLabels, Counter>::default(),
        );
        let denials = register(
            &mut registry,
            "denials",
            "Host calls refused for want of a grant",
            Family::<DenialLabels, Counter>::default(),
        );
        let usage_batch_size = register(
            &mut registry,
            "usage_batch_size",
            "Usage records per group commit",
            Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        );
        let usage_commit = register(
            &mut registry,
            "usage_commit_seconds",
            "Time a call waits for its usage record to commit",
            Histogram::new(LATENCY_BUCKETS[..15].iter().copied()),
        );
        let usage_backlog = register(
            &mut registry,
            "usage_backlog_records",
            "Usage records handed to the writer and not yet committed",
            Gauge::default(),
        );
        let usage_commit_failures = register(
            &mut registry,
            "usage_commit_failures",
            "Calls whose usage record could not be committed (answered 500)",
            Counter::default(),
        );
        let cost = register(
            &mut registry,
            "cost",
            "What the calls cost at their tenant's prices",
            Family::<TenantCurrencyLabels, FloatCounter>::default(),
        );
        let budget_spent = register(
            &mut registry,
            "tenant_budget_spent",
            "Month-to-date spend of each tenant whose plan has a monthly budget",
            Family::<TenantCurrencyLabels, FloatGauge>::default(),
        );
        let budget_limit = register(
            &mut registry,
            "tenant_budget",
            "The monthly budget of each tenant's plan",
            Family::<TenantCurrencyLabels, FloatGauge>::default(),
        );
        let drift = register(
            &mut registry,
            "model_drift_score",
            "Population stability index of a model version's current window against its baseline (docs/metrics.md)",
            Family::<DriftLabels, FloatGauge>::default(),
        );
        let release_rollbacks = register(
            &mut registry,
            "release_rollbacks",
            "Releases rolled back: canaries stopped and stable versions put back",
            Family::<ReleaseLabels, Counter>::default(),
        );
        let release_promotions = register(
            &mut registry,
            "release_promotions",
            "Canaries promoted to stable",
            Family::<ReleaseLabels, Counter>::default(),
        );
        let graph_load = register(
            &mut registry,
            "graph_load_seconds",
            "Time to load and optimize a model graph",
            Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        );
        let graph_hits =
            register(&mut registry, "graph_cache_hits", "Graph loads served from the shared cache", Counter::default());
        let graph_misses =
            register(&mut registry, "graph_cache_misses", "Graph loads that had to load the model", Counter::default());
        let graph_evictions =
            register(&mut registry, "graph_cache_evictions", "Graphs evicted from the cache", Counter::default());
        let graph_bytes =
            register(&mut registry, "graph_cache_bytes", "Model bytes of the graphs in the cache", Gauge::default());
        let graphs_loaded = register(&mut registry, "graph_cache_graphs", "Graphs in the cache", Gauge::default());
        let gpu_memory = register(
            &mut registry,
            "gpu_memory_bytes",
            "GPU memory held by the wgpu engine's buffers",
            Gauge::default(),
        );
        let gpu_budget =
            register(&mut registry, "gpu_memory_budget_bytes", "The wgpu engine's GPU memory budget", Gauge::default());
        let gpu_evictions = register(
            &mut registry,
            "gpu_evictions",
            "Idle models evicted from the GPU to make room",
            Counter::default(),
        );
        let gpu_recreated =
            register(&mut registry, "gpu_devices_recreated", "GPU devices made again after a loss", Counter::default());
        Self {
            registry,
            caps,
            names: Mutex::default(),
            requests_index: RwLock::default(),
            compute_index: RwLock::default(),
            cost_index: RwLock::default(),
            scrape: Mutex::default(),
            invocations,
            invocation_duration,
            requests,
            request_duration,
            instantiate,
            compute_queue,
            nn_compute,
            active_instances,
            instance_slots,
            instances_live,
            compute_slots,
            compute_busy,
            uploads,
            compile_duration,
            log_bytes_dropped,
            refused,
            denials,
            unauthenticated,
            connections,
            connections_refused,
            usage_batch_size,
            usage_commit,
            usage_backlog,
            usage_commit_failures,
            cost,
            budget_spent,
            budget_limit,
            drift,
            release_rollbacks,
            release_promotions,
            gpu_memory,
            gpu_budget,
            gpu_evictions,
            gpu_recreated,
            graph_load,
            graph_hits,
            graph_misses,
            graph_evictions,
            graph_bytes,
            graphs_loaded,
        }
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The label of `tenant`: its name, or `other` past the cap.
    pub fn tenant_label(&self, tenant: &str) -> String {
        self.names().tenant(&self.caps, tenant)
    }

    /// The handles of `tenant`'s `function`.
    pub fn function(&self, tenant: &str, function: &str) -> FunctionMetrics {
        let (tenant, function) = self.names().name(&self.caps, tenant, "function", function);
        let labels = FunctionLabels { tenant: tenant.clone(), function: function.clone() };
        FunctionMetrics {
            duration: self.invocation_duration.get_or_create(&labels).clone(),
            outcomes: Outcome::ALL
                .iter()
                .map(|o| {
                    self.invocations
                        .get_or_create(&InvocationLabels {
                            tenant: tenant.clone(),
                            function: function.clone(),
                            outcome: o.as_str().to_string(),
                        })
                        .clone()
                })
                .collect(),
            log_bytes_dropped: self.log_bytes_dropped.get_or_create(&labels).clone(),
        }
    }

    /// Counts one answered call of `site` and its time from request to answer.
    pub fn request(&self, site: CallSite<'_>, code: u16, took: Duration) {
        let key = (site.kind, site.version, site.route);
        loop {
            {
                // Held while the series are written, so an eviction (the write lock) cannot
                // remove a series between its lookup and its update.
                let index = self.requests_index.read().unwrap_or_else(|e| e.into_inner());
                if let Some(handles) = index.get(site.tenant).and_then(|n| n.get(site.name)).and_then(|v| v.get(&key)) {
                    handles.duration.observe(took.as_secs_f64());
                    self.code_counter(handles, code).inc();
                    return;
                }
            }
            self.make_request_handles(site);
        }
    }

    /// The counter of `code` in `handles`' series (made on its first use).
    fn code_counter(&self, handles: &RequestHandles, code: u16) -> Counter {
        if let Some((_, c)) = handles.codes.read().unwrap_or_else(|e| e.into_inner()).iter().find(|(c, _)| *c == code) {
            return c.clone();
        }
        let mut codes = handles.codes.write().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = codes.iter().find(|(c, _)| *c == code) {
            return c.clone();
        }
        let l = &handles.labels;
        let counter = self
            .requests
            .get_or_create(&RequestCodeLabels {
                tenant: l.tenant.clone(),
                kind: l.kind.clone(),
                name: l.name.clone(),
                version: l.version.clone(),
                route: l.route.clone(),
                code: code.to_string(),
            })
            .clone();
        codes.push((code, counter.clone()));
        counter
    }

    /// Makes the series of `site`: the version keeps its number while it is among its name's
    /// `max_versions_per_name` newest; an older version's series are removed from the
    /// exposition and its later calls count under `other`.
    fn make_request_handles(&self, site: CallSite<'_>) {
        let mut index = self.requests_index.write().unwrap_or_else(|e| e.into_inner());
        let key = (site.kind, site.version, site.route);
        if index.get(site.tenant).and_then(|n| n.get(site.name)).is_some_and(|v| v.contains_key(&key)) {
            return;
        }
        let (tenant, name) = self.names().name(&self.caps, site.tenant, site.kind, site.name);
        let version = if name == OTHER {
            OTHER.to_string()
        } else {
            let mut names = self.names();
            let versions = names.versions.entry((tenant.clone(), site.kind, name.clone())).or_default();
            versions.insert(site.version);
            let mut evicted = Vec::new();
            while versions.len() > self.caps.max_versions_per_name.max(1) {
                if let Some(oldest) = versions.pop_first() {
                    evicted.push(oldest);
                }
            }
            drop(names);
            let kept = !evicted.contains(&site.version);
            if let Some(versions) = index.get_mut(site.tenant).and_then(|n| n.get_mut(site.name)) {
                for old in evicted.into_iter().filter(|v| *v != site.version) {
                    self.forget_version(versions, site.kind, old);
                }
            }
            if kept { site.version.to_string() } else { OTHER.to_string() }
        };
        let labels =
            RequestLabels { tenant, kind: site.kind.to_string(), name, version, route: site.route.to_string() };
        let handles = Arc::new(RequestHandles {
            duration: self.request_duration.get_or_create(&labels).clone(),
            labels,
            codes: RwLock::default(),
        });
        index
            .entry(site.tenant.to_string())
            .or_default()
            .entry(site.name.to_string())
            .or_default()
            .insert(key, handles);
    }

    /// Removes the series of version `old` of one name (it fell out of the newest).
    fn forget_version(
        &self,
        versions: &mut HashMap<(&'static str, u32, &'static str), Arc<RequestHandles>>,
        kind: &'static str,
        old: u32,
    ) {
        versions.retain(|(k, v, _), handles| {
            let gone = *k == kind && *v == old && handles.labels.version != OTHER;
            if gone {
                let l = &handles.labels;
                self.request_duration.remove(l);
                for (code, _) in handles.codes.read().unwrap_or_else(|e| e.into_inner()).iter() {
                    self.requests.remove(&RequestCodeLabels {
                        tenant: l.tenant.clone(),
                        kind: l.kind.clone(),
                        name: l.name.clone(),
                        version: l.version.clone(),
                        route: l.route.clone(),
                        code: code.to_string(),
                    });
                }
            }
            !gone
        });
    }

    /// Counts a call refused before it ran.
    pub fn refused(&self, tenant: &str, reason: &str) {
        let tenant = self.tenant_label(tenant);
        self.refused.get_or_create(&RefusedLabels { tenant, reason: reason.to_string() }).inc();
    }

    /// Counts a connection refused past `server.max_connections`.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Counts a request refused with 401.
    pub fn unauthenticated(&self, reason: &'static str) {
        self.unauthenticated.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc();
    }

    /// Counts `n` host calls of `tenant` denied for want of `capability`.
    pub fn denied(&self, tenant: &str, capability: &str, n: u64) {
        let tenant = self.tenant_label(tenant);
        self.denials.get_or_create(&DenialLabels { tenant, capability: capability.to_string() }).inc_by(n);
    }

    /// Adds a call's cost at its tenant's prices.
    pub fn cost(&self, tenant: &str, currency: &str, amount: f64) {
        if let Some((c, counter)) = self.cost_index.read().unwrap_or_else(|e| e.into_inner()).get(tenant)
            && c == currency
        {
            counter.inc_by(amount);
            return;
        }
        let labels = TenantCurrencyLabels { tenant: self.tenant_label(tenant), currency: currency.to_string() };
        let counter = self.cost.get_or_create(&labels).clone();
        counter.inc_by(amount);
        self.cost_index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.to_string(), (currency.to_string(), counter));
    }

    /// Records one model compute's engine time.
    pub fn nn_compute(
        &self,
        tenant: &str,
        model: Option<&str>,
        engine: &'static str,
        device: &'static str,
        took: Duration,
    ) {
        let model_key = model.unwrap_or("-");
        if let Some((_, _, h)) = self
            .compute_index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .and_then(|m| m.get(model_key))
            .and_then(|v| v.iter().find(|(e, d, _)| *e == engine && *d == device))
        {
            h.observe(took.as_secs_f64());
            return;
        }
        let (tenant_label, model_label) = match model {
            Some(model) => self.names().name(&self.caps, tenant, "model", model),
            None => (self.tenant_label(tenant), "-".to_string()),
        };
        let histogram = self
            .nn_compute
            .get_or_create(&ComputeLabels {
                tenant: tenant_label,
                model: model_label,
                engine: engine.to_string(),
                device: device.to_string(),
            })
            .clone();
        histogram.observe(took.as_secs_f64());
        self.compute_index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tenant.to_string())
            .or_default()
            .entry(model_key.to_string())
            .or_default()
            .push((engine, device, histogram));
    }

    /// Counts a release event (`rollback` or `promote`) of `tenant`'s `name`.
    pub fn release_event(&self, event: &str, tenant: &str, kind: &'static str, name: &str, cause: &str) {
        let family = match event {
            "rollback" => &self.release_rollbacks,
            "promote" => &self.release_promotions,
            _ => return,
        };
        let (tenant, name) = self.names().name(&self.caps, tenant, kind, name);
        family.get_or_create(&ReleaseLabels { tenant, kind: kind.to_string(), name, cause: cause.to_string() }).inc();
    }

    /// Records how long a compute waited for a slot of `pool` (cpu or gpu).
    pub fn compute_queue(&self, pool: &str, waited: Duration) {
        self.compute_queue.get_or_create(&PoolLabels { pool: pool.to_string() }).observe(waited.as_secs_f64());
    }

    /// Brings the pool gauges up to date (at scrape time).
    pub fn observe_pools(&self, instance_slots: u32, live: usize, pools: &[(&str, usize, usize)]) {
        self.instance_slots.set(i64::from(instance_slots));
        self.instances_live.set(live as i64);
        for (pool, slots, busy) in pools {
            let labels = PoolLabels { pool: pool.to_string() };
            self.compute_slots.get_or_create(&labels).set(*slots as i64);
            self.compute_busy.get_or_create(&labels).set(*busy as i64);
        }
    }

    /// Brings the budget gauges up to date (at scrape time): per tenant with a budget, its
    /// month-to-date spend (as admission last summed it this month) and its budget.
    pub fn observe_budgets(&self, budgets: &[(String, String, f64, f64)]) {
        // A tenant not yet summed this month (no call since it began) has no series.
        self.budget_spent.clear();
        self.budget_limit.clear();
        for (tenant, currency, spent, budget) in budgets {
            // A folded tenant's spend is not the sum of theirs: only named tenants are shown.
            let tenant = self.tenant_label(tenant);
            if tenant == OTHER {
                continue;
            }
            let labels = TenantCurrencyLabels { tenant, currency: currency.clone() };
            self.budget_spent.get_or_create(&labels).set(*spent);
            self.budget_limit.get_or_create(&labels).set(*budget);
        }
    }

    /// Sets the drift scores (at scrape time): one series per model version with a score.
    pub fn observe_drift(&self, scores: &[(String, String, u32, f64)]) {
        self.drift.clear();
        for (tenant, model, version, score) in scores {
            // Scores do not add up: a folded model has none.
            let (tenant, model) = self.names().name(&self.caps, tenant, "model", model);
            if model == OTHER {
                continue;
            }
            self.drift.get_or_create(&DriftLabels { tenant, model, version: version.to_string() }).set(*score);
        }
    }

    /// Brings the graph-cache series up to date with the cache's own counters (at scrape time).
    pub fn observe_graph_cache(&self, stats: crate::nn::graphs::CacheStats) {
        self.graph_hits.inc_by(stats.hits.saturating_sub(self.graph_hits.get()));
        self.graph_misses.inc_by(stats.misses.saturating_sub(self.graph_misses.get()));
        self.graph_evictions.inc_by(stats.evictions.saturating_sub(self.graph_evictions.get()));
        self.graph_bytes.set(stats.bytes as i64);
        self.graphs_loaded.set(stats.graphs as i64);
    }

    /// Brings the GPU series up to date with the wgpu engine's counters (at scrape time).
    pub fn observe_gpu(&self, stats: crate::nn::gpu::GpuStats) {
        self.gpu_memory.set(stats.memory_used as i64);
        self.gpu_budget.set(stats.memory_budget.min(i64::MAX as u64) as i64);
        self.gpu_evictions.inc_by(stats.evictions.saturating_sub(self.gpu_evictions.get()));
        self.gpu_recreated.inc_by(stats.devices_recreated.saturating_sub(self.gpu_recreated.get()));
    }

    /// One scrape: `observe` brings the scrape-time series up to date, then the text is made,
    /// one scrape at a time (two scrapers at once would see cleared gauges, or count twice).
    pub fn scrape(&self, observe: impl FnOnce(&Self)) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        observe(self);
        self.encode()
    }

    /// The text exposition (OpenMetrics text, which Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(tenants: usize, names: usize, versions: usize) -> MetricsConfig {
        MetricsConfig { max_tenants: tenants, max_names_per_tenant: names, max_versions_per_name: versions }
    }

    fn site<'a>(tenant: &'a str, name: &'a str, version: u32) -> CallSite<'a> {
        CallSite { tenant, kind: "function", name, version, route: "fn" }
    }

    #[test]
    fn labels_past_their_caps_fold_into_other() {
        let m = Metrics::new(caps(2, 2, 2));
        let ms = Duration::from_millis(1);
        m.request(site("a", "f", 1), 200, ms);
        m.request(site("b", "f", 1), 200, ms);
        // A third tenant: other.
        m.request(site("c", "f", 1), 200, ms);
        // A third function of a: other.
        m.request(site("a", "g", 1), 200, ms);
        m.request(site("a", "h", 1), 500, ms);
        let text = m.encode();
        assert!(
            text.contains(
                r#"infercell_requests_total{tenant="a",kind="function",name="f",version="1",route="fn",code="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"tenant="other",kind="function",name="other",version="other",route="fn",code="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tenant="a",kind="function",name="other",version="other",route="fn",code="500"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"tenant="c""#), "{text}");
    }

    #[test]
    fn only_the_newest_versions_keep_their_series() {
        let m = Metrics::new(caps(10, 10, 2));
        let ms = Duration::from_millis(1);
        m.request(site("a", "f", 1), 200, ms);
        m.request(site("a", "f", 2), 200, ms);
        m.request(site("a", "f", 3), 200, ms);
        let text = m.encode();
        assert!(!text.contains(r#"version="1""#), "version 1 fell out of the newest two:\n{text}");
        assert!(text.contains(r#"version="2",route="fn",code="200"} 1"#), "{text}");
        assert!(text.contains(r#"version="3",route="fn",code="200"} 1"#), "{text}");
        // The old version called again counts under other, and pushes nothing out.
        m.request(site("a", "f", 1), 200, ms);
        let text = m.encode();
        assert!(text.contains(r#"version="other",route="fn",code="200"} 1"#), "{text}");
        assert!(text.contains(r#"version="2",route="fn",code="200"} 1"#), "{text}");
        let series = text.lines().filter(|l| l.starts_with("infercell_requests_total{")).count();
        assert_eq!(series, 3, "{text}");
    }
}
