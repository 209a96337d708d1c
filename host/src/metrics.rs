//! Prometheus metrics. Labels carry tenant and function names, never keys.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::metering::Outcome;

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
pub struct UploadLabels {
    pub outcome: String,
}

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

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub invocations: Family<InvocationLabels, Counter>,
    pub invocation_duration: Family<FunctionLabels, Histogram>,
    pub active_instances: Gauge,
    pub uploads: Family<UploadLabels, Counter>,
    pub compile_duration: Histogram,
    pub log_bytes_dropped: Family<FunctionLabels, Counter>,
    pub refused: Family<RefusedLabels, Counter>,
    pub denials: Family<DenialLabels, Counter>,
    pub usage_batch_size: Histogram,
    pub usage_commit: Histogram,
    pub release_rollbacks: Family<ReleaseLabels, Counter>,
    pub release_promotions: Family<ReleaseLabels, Counter>,
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
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("infercell");
        let invocations = Family::<InvocationLabels, Counter>::default();
        registry.register("invocations", "Function invocations by outcome", invocations.clone());
        let invocation_duration = Family::<FunctionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.5, 14))
        });
        registry.register(
            "invocation_duration_seconds",
            "Wall time of function invocations",
            invocation_duration.clone(),
        );
        let active_instances = Gauge::default();
        registry.register("active_instances", "Instances running a call right now", active_instances.clone());
        let uploads = Family::<UploadLabels, Counter>::default();
        registry.register("uploads", "Function uploads by outcome", uploads.clone());
        let compile_duration = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        registry.register(
            "compile_duration_seconds",
            "Time to compile an uploaded component",
            compile_duration.clone(),
        );
        let log_bytes_dropped = Family::<FunctionLabels, Counter>::default();
        registry.register(
            "log_bytes_dropped",
            "Function log bytes dropped over the per-call cap",
            log_bytes_dropped.clone(),
        );
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register("refused", "Calls refused before running (quota, budget, no free instance)", refused.clone());
        let denials = Family::<DenialLabels, Counter>::default();
        registry.register("denials", "Host calls refused for want of a grant", denials.clone());
        let usage_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        registry.register("usage_batch_size", "Usage records per group commit", usage_batch_size.clone());
        let usage_commit = Histogram::new(exponential_buckets(0.00005, 2.0, 14));
        registry.register(
            "usage_commit_seconds",
            "Time a call waits for its usage record to commit",
            usage_commit.clone(),
        );
        let release_rollbacks = Family::<ReleaseLabels, Counter>::default();
        registry.register(
            "release_rollbacks",
            "Releases rolled back: canaries stopped and stable versions put back",
            release_rollbacks.clone(),
        );
        let release_promotions = Family::<ReleaseLabels, Counter>::default();
        registry.register("release_promotions", "Canaries promoted to stable", release_promotions.clone());
        let graph_load = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register("graph_load_seconds", "Time to load and optimize a model graph", graph_load.clone());
        let graph_hits = Counter::default();
        registry.register("graph_cache_hits", "Graph loads served from the shared cache", graph_hits.clone());
        let graph_misses = Counter::default();
        registry.register("graph_cache_misses", "Graph loads that had to load the model", graph_misses.clone());
        let graph_evictions = Counter::default();
        registry.register("graph_cache_evictions", "Graphs evicted from the cache", graph_evictions.clone());
        let graph_bytes = Gauge::default();
        registry.register("graph_cache_bytes", "Model bytes of the graphs in the cache", graph_bytes.clone());
        let graphs_loaded = Gauge::default();
        registry.register("graph_cache_graphs", "Graphs in the cache", graphs_loaded.clone());
        let gpu_memory = Gauge::default();
        registry.register("gpu_memory_bytes", "GPU memory held by the wgpu engine's buffers", gpu_memory.clone());
        let gpu_budget = Gauge::default();
        registry.register("gpu_memory_budget_bytes", "The wgpu engine's GPU memory budget", gpu_budget.clone());
        let gpu_evictions = Counter::default();
        registry.register("gpu_evictions", "Idle models evicted from the GPU to make room", gpu_evictions.clone());
        let gpu_recreated = Counter::default();
        registry.register("gpu_devices_recreated", "GPU devices made again after a loss", gpu_recreated.clone());
        Self {
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
            registry,
            invocations,
            invocation_duration,
            active_instances,
            uploads,
            compile_duration,
            log_bytes_dropped,
            refused,
            denials,
            usage_batch_size,
            usage_commit,
            release_rollbacks,
            release_promotions,
        }
    }

    /// The handles of `tenant`'s `function`.
    pub fn function(&self, tenant: &str, function: &str) -> FunctionMetrics {
        let labels = FunctionLabels { tenant: tenant.to_string(), function: function.to_string() };
        FunctionMetrics {
            duration: self.invocation_duration.get_or_create(&labels).clone(),
            outcomes: Outcome::ALL
                .iter()
                .map(|o| {
                    self.invocations
                        .get_or_create(&InvocationLabels {
                            tenant: tenant.to_string(),
                            function: function.to_string(),
                            outcome: o.as_str().to_string(),
                        })
                        .clone()
                })
                .collect(),
            log_bytes_dropped: self.log_bytes_dropped.get_or_create(&labels).clone(),
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

    /// The text exposition (OpenMetrics text, which Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
