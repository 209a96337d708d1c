//! Platform configuration: `infercell.toml` over embedded defaults.
//!
//! Everything has a default so `infercell serve` runs with no file at all. A file given with
//! `--config` (or `infercell.toml` in the data directory) overrides single keys; plans in it
//! are merged by name over the embedded `free` and `standard` plans. Unknown keys are errors,
//! so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};

/// The embedded defaults, also shipped as documentation in `docs/configuration.md`.
pub const DEFAULT_CONFIG: &str = r#"
[server]
max_upload_bytes = "64MiB"
max_request_bytes = "16MiB"
max_response_bytes = "16MiB"
max_response_headers = 100
metrics_require_key = true
header_read_timeout = "10s"
max_connections = 10000

[metrics]
max_tenants = 100
max_names_per_tenant = 100
max_versions_per_name = 4

[telemetry]
otlp_endpoint = ""
service_name = "infercell"
sample_ratio = 1.0
log_format = "text"

[metering]
enabled = true
fsync = false

[nn]
graph_cache_bytes = "1GiB"
compute_threads = 0
compute_priority = "idle"
onnxruntime = ""
load_memory_bytes = "2GiB"
gpu = "auto"
gpu_memory_bytes = "4GiB"
gpu_fusion = true

[runtime]
max_instances = 1000
max_instances_per_tenant = 0
epoch_tick = "10ms"
max_log_bytes_per_call = "64KiB"
log_lines_per_function = 1000
log_bytes_per_function = "1MiB"

[outbound]
allow_ranges = []
connect_timeout = "10s"
first_byte_timeout = "30s"
between_bytes_timeout = "30s"

[plans.free]
max_memory = "64MiB"
max_timeout = "5s"
default_memory = "32MiB"
default_timeout = "2s"
gpu = false
nn_load_bytes = false
outbound_http = false
outbound_requests_per_call = 0
outbound_bytes_per_call = "0"
max_model_bytes = "16MiB"
model_memory = "512MiB"
max_functions = 10
max_versions = 100
max_models = 10
max_files = 100
max_storage_bytes = "512MiB"
requests_per_second = 10
burst = 20
max_concurrency = 4
monthly_budget = "1.00"
currency = "USD"

[plans.free.prices]
invocations = "0.0000002"
guest_ms = "0.00000002"
fuel = "0"
memory_gib_s = "0.0000166667"
nn_cpu_ms = "0.00000002"
nn_gpu_ms = "0.0000004"
bytes_in = "0"
bytes_out = "0.00000000009"
http_requests = "0"
http_bytes = "0"

[plans.standard]
max_memory = "512MiB"
max_timeout = "30s"
default_memory = "128MiB"
default_timeout = "10s"
gpu = true
nn_load_bytes = true
outbound_http = true
outbound_requests_per_call = 64
outbound_bytes_per_call = "64MiB"
max_model_bytes = "256MiB"
model_memory = "4GiB"
max_functions = 200
max_versions = 2000
max_models = 200
max_files = 1000
max_storage_bytes = "20GiB"
max_concurrency = 256
currency = "USD"

[plans.standard.prices]
invocations = "0.0000002"
guest_ms = "0.00000002"
fuel = "0"
memory_gib_s = "0.0000166667"
nn_cpu_ms = "0.00000002"
nn_gpu_ms = "0.0000004"
bytes_in = "0"
bytes_out = "0.00000000009"
http_requests = "0.000001"
http_bytes = "0.00000000009"
"#;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub metrics: MetricsConfig,
    pub telemetry: TelemetryConfig,
    pub metering: MeteringConfig,
    pub nn: NnConfig,
    pub runtime: RuntimeSection,
    pub outbound: OutboundConfig,
    pub plans: BTreeMap<String, Plan>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Largest upload (`POST /v1/functions`) body.
    #[serde(deserialize_with = "de_size")]
    pub max_upload_bytes: u64,
    /// Largest invocation request body.
    #[serde(deserialize_with = "de_size")]
    pub max_request_bytes: u64,
    /// Largest response body a function may return (a larger one is a 500).
    #[serde(deserialize_with = "de_size")]
    pub max_response_bytes: u64,
    /// Most response headers a function may return (more is a 500).
    pub max_response_headers: usize,
    /// When true (the default), `GET /metrics` needs the admin key or a platform key with the
    /// `metrics` role: metrics name every tenant and function.
    pub metrics_require_key: bool,
    /// Longest a client may take to send a request's headers (a slow client holding a
    /// connection open is cut then).
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    /// Client connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
}

/// `[metrics]`: how many label values the Prometheus series may carry (docs/metrics.md). A
/// value past a cap is folded into `other`, so a platform with many tenants, functions or
/// versions exports a bounded number of series.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Tenants named in labels; later ones are `other`.
    pub max_tenants: usize,
    /// Functions and models named per tenant; later ones are `other`.
    pub max_names_per_tenant: usize,
    /// Versions of one function or model named at once: the newest; older ones are `other`.
    pub max_versions_per_name: usize,
}

/// `[telemetry]`: logs and traces (`crate::telemetry`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP traces endpoint (`http://collector:4318/v1/traces`); empty: the standard
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`, and without them
    /// no traces.
    pub otlp_endpoint: String,
    /// The traces' `service.name`.
    pub service_name: String,
    /// Share of new traces kept (a caller's sampled `traceparent` is always followed).
    pub sample_ratio: f64,
    /// `text` or `json` (the `INFERCELL_LOG_FORMAT` environment variable overrides it).
    pub log_format: String,
}

/// `[metering]`: usage records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeteringConfig {
    /// Record usage (and so bill) every call. Turning it off exists only to measure what
    /// metering costs (bench/); a server with it off bills nothing.
    pub enabled: bool,
    /// Also fsync every usage commit, so acknowledged records survive power loss, not only
    /// a crash of the process.
    pub fsync: bool,
}

/// `[nn]`: native inference.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NnConfig {
    /// Loaded graphs are evicted, least recently used first, above this many model bytes.
    #[serde(deserialize_with = "de_size")]
    pub graph_cache_bytes: u64,
    /// Inference computes running at once; 0 = one per core.
    pub compute_threads: usize,
    /// `idle` (Linux `SCHED_IDLE`: request threads always go first) or `low` (nice +10).
    pub compute_priority: String,
    /// Path of ONNX Runtime's `libonnxruntime.so`; empty = the `ORT_DYLIB_PATH` environment
    /// variable, and when neither is set the server runs on tract alone.
    pub onnxruntime: String,
    /// Address space a new model may use while it is test-loaded in a child process before the
    /// server loads it (engines fold constants: a tiny model can ask for gigabytes).
    #[serde(deserialize_with = "de_size")]
    pub load_memory_bytes: u64,
    /// `auto`: run models on a GPU when wgpu finds a Vulkan adapter; `off`: the CPU only.
    pub gpu: String,
    /// GPU memory the engine's buffers (weights and activations) may hold at once; idle
    /// models are evicted to stay under it.
    #[serde(deserialize_with = "de_size")]
    pub gpu_memory_bytes: u64,
    /// Fuse a matrix product's or convolution's bias, residual and ReLU into its dispatch.
    pub gpu_fusion: bool,
}

/// `[outbound]`: what functions granted `allowed_hosts` may still not do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Address ranges functions may reach although they are not public (loopback, RFC 1918,
    /// link-local, ...): CIDR ranges such as `"10.20.0.0/16"` or single addresses. Empty: none.
    #[serde(deserialize_with = "de_ranges")]
    pub allow_ranges: Vec<ipnet::IpNet>,
    /// Longest wait to resolve a host, connect and finish the TLS handshake.
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Longest wait for the start of a response.
    #[serde(deserialize_with = "de_duration")]
    pub first_byte_timeout: Duration,
    /// Longest silence between two parts of a response body.
    #[serde(deserialize_with = "de_duration")]
    pub between_bytes_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    pub max_instances: u32,
    /// Calls of one tenant at once, whatever its plan allows; 0 = a quarter of
    /// `max_instances`, so that no tenant takes every instance slot.
    #[serde(default)]
    pub max_instances_per_tenant: u32,
    #[serde(deserialize_with = "de_duration")]
    pub epoch_tick: Duration,
    #[serde(deserialize_with = "de_size")]
    pub max_log_bytes_per_call: u64,
    pub log_lines_per_function: usize,
    /// Bytes of log lines kept in memory per function (the oldest go first).
    #[serde(default = "default_log_bytes", deserialize_with = "de_size")]
    pub log_bytes_per_function: u64,
}

/// What a tenant on this plan may ask for. Every manifest limit is capped by these.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[serde(deserialize_with = "de_size")]
    pub max_memory: u64,
    #[serde(deserialize_with = "de_duration")]
    pub max_timeout: Duration,
    #[serde(deserialize_with = "de_size")]
    pub default_memory: u64,
    #[serde(deserialize_with = "de_duration")]
    pub default_timeout: Duration,
    /// Deadline of a model call (`/v2` inference on a pushed model); absent = `max_timeout`.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub model_timeout: Option<Duration>,
    /// Bytes of tensors (inputs, intermediate values, outputs) one model call on `/v2` may
    /// hold at once; a function's computes count against its memory limit instead.
    #[serde(default = "default_model_memory", deserialize_with = "de_size")]
    pub model_memory: u64,
    /// Instructions per call; absent = bounded by the timeout only.
    #[serde(default)]
    pub max_fuel: Option<u64>,
    pub gpu: bool,
    /// Whether functions may be granted wasi:nn `graph::load` from raw bytes
    /// (`capabilities.nn_load_bytes`): each new graph costs a probe and a cache entry.
    #[serde(default)]
    pub nn_load_bytes: bool,
    /// Whether functions may be granted outbound HTTP (`capabilities.allowed_hosts`).
    #[serde(default)]
    pub outbound_http: bool,
    /// Outbound HTTP requests one call may make.
    #[serde(default = "default_outbound_requests")]
    pub outbound_requests_per_call: u64,
    /// Body bytes one call's outbound requests may send and receive, together.
    #[serde(default = "default_outbound_bytes", deserialize_with = "de_size")]
    pub outbound_bytes_per_call: u64,
    /// Storage: functions, models and files a tenant may keep, live versions of each function
    /// or model, and the bytes of all of them together (507 past any of these).
    #[serde(default = "default_max_names")]
    pub max_functions: u64,
    #[serde(default = "default_max_versions")]
    pub max_versions: u64,
    #[serde(default = "default_max_names")]
    pub max_models: u64,
    #[serde(default = "default_max_files")]
    pub max_files: u64,
    #[serde(default = "default_max_storage", deserialize_with = "de_size")]
    pub max_storage_bytes: u64,
    /// Largest model a tenant on this plan may push.
    #[serde(deserialize_with = "de_size")]
    pub max_model_bytes: u64,
    /// Sustained calls per second per tenant; absent = no rate limit.
    #[serde(default)]
    pub requests_per_second: Option<u32>,
    /// Calls that may arrive at once above the sustained rate (default: the rate).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Calls of one tenant running at the same time.
    pub max_concurrency: u32,
    /// Spend per calendar month (UTC) after which calls get 402; absent = no budget.
    #[serde(default, deserialize_with = "de_opt_decimal")]
    pub monthly_budget: Option<Decimal>,
    /// ISO 4217 code of the prices and bills.
    pub currency: String,
    pub prices: Prices,
}

/// Unit price of each meter, exact decimals (strings in TOML: `"0.0000002"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    #[serde(deserialize_with = "de_decimal")]
    pub invocations: Decimal,
    #[serde(deserialize_with = "de_decimal")]
    pub guest_ms: Decimal,
    #[serde(deserialize_with = "de_decimal")]
    pub fuel: Decimal,
    #[serde(deserialize_with = "de_decimal")]
    pub memory_gib_s: Decimal,
    #[serde(deserialize_with = "de_decimal")]
    pub nn_cpu_ms: Decimal,
    #[serde(deserialize_with = "de_decimal")]
    pub nn_gpu_ms: Decimal,
    #[serde(deserialize_with = "de_decimal")]
    pub bytes_in: Decimal,
    #[serde(deserialize_with = "de_decimal")]
    pub bytes_out: Decimal,
    /// Outbound HTTP (absent: free).
    #[serde(default, deserialize_with = "de_decimal")]
    pub http_requests: Decimal,
    #[serde(default, deserialize_with = "de_decimal")]
    pub http_bytes: Decimal,
}

impl Prices {
    /// The unit price of `meter` (one of [`crate::metering::METERS`]).
    pub fn of(&self, meter: &str) -> Decimal {
        match meter {
            "invocations" => self.invocations,
            "guest_ms" => self.guest_ms,
            "fuel" => self.fuel,
            "memory_gib_s" => self.memory_gib_s,
            "nn_cpu_ms" => self.nn_cpu_ms,
            "nn_gpu_ms" => self.nn_gpu_ms,
            "bytes_in" => self.bytes_in,
            "bytes_out" => self.bytes_out,
            "http_requests" => self.http_requests,
            "http_bytes" => self.http_bytes,
            _ => Decimal::ZERO,
        }
    }
}

impl RuntimeSection {
    /// The per-tenant cap on calls at once (see `max_instances_per_tenant`).
    pub fn instances_per_tenant(&self) -> u32 {
        match self.max_instances_per_tenant {
            0 => (self.max_instances / 4).max(1),
            n => n,
        }
    }
}

impl Plan {
    /// Deadline of a model call: `model_timeout`, else `max_timeout`.
    pub fn model_timeout(&self) -> Duration {
        self.model_timeout.unwrap_or(self.max_timeout)
    }
}

impl Config {
    /// The embedded defaults.
    pub fn embedded() -> Self {
        Self::from_toml("").expect("embedded default configuration parses")
    }

    /// Defaults overridden by the TOML text `overrides`.
    pub fn from_toml(overrides: &str) -> anyhow::Result<Self> {
        let mut base: toml::Table = toml::from_str(DEFAULT_CONFIG).context("embedded configuration")?;
        let over: toml::Table = toml::from_str(overrides)?;
        merge(&mut base, over);
        let config: Config = toml::Value::Table(base).try_into()?;
        config.validate()?;
        Ok(config)
    }

    /// Reads `path` over the defaults.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in {}", path.display()))
    }

    fn validate(&self) -> anyhow::Result<()> {
        for (name, plan) in &self.plans {
            anyhow::ensure!(
                plan.default_memory <= plan.max_memory && plan.default_timeout <= plan.max_timeout,
                "plan `{name}`: defaults must not exceed the plan's maxima"
            );
            anyhow::ensure!(plan.max_concurrency > 0, "plan `{name}`: max_concurrency must be at least 1");
            anyhow::ensure!(
                plan.requests_per_second != Some(0),
                "plan `{name}`: requests_per_second must be at least 1"
            );
            anyhow::ensure!(
                plan.currency.len() == 3 && plan.currency.bytes().all(|b| b.is_ascii_uppercase()),
                "plan `{name}`: currency must be an ISO 4217 code such as USD"
            );
        }
        anyhow::ensure!(self.runtime.max_instances > 0, "runtime.max_instances must be at least 1");
        anyhow::ensure!(matches!(self.nn.gpu.as_str(), "auto" | "off"), "nn.gpu must be auto or off");
        anyhow::ensure!(
            crate::nn::graphs::ComputePriority::parse(&self.nn.compute_priority).is_some(),
            "nn.compute_priority must be idle or low"
        );
        Ok(())
    }

    /// The largest memory any plan allows: the size of a pooling-allocator slot.
    pub fn largest_memory(&self) -> u64 {
        self.plans.values().map(|p| p.max_memory).max().unwrap_or(64 << 20)
    }
}

/// Recursive table merge: keys of `over` replace those of `base`, tables merge.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Parses sizes such as `64MiB`, `512 KiB`, `1GB` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("`{text}` is not a size such as \"64MiB\""))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown size unit `{other}` in `{text}` (use B, KiB, MiB, GiB, KB, MB or GB)")),
    };
    number.checked_mul(multiplier).ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses durations such as `2s`, `500ms`, `1m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("`{text}` is not a duration such as \"2s\": {e}"))
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Number(n) => Ok(n),
        Size::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

fn default_model_memory() -> u64 {
    4 << 30
}

fn default_log_bytes() -> u64 {
    1 << 20
}

fn default_max_names() -> u64 {
    200
}

fn default_max_versions() -> u64 {
    2000
}

fn default_max_files() -> u64 {
    1000
}

fn default_max_storage() -> u64 {
    20 << 30
}

fn default_outbound_requests() -> u64 {
    64
}

fn default_outbound_bytes() -> u64 {
    64 << 20
}

fn de_ranges<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?.iter().map(|text| parse_range(text).map_err(serde::de::Error::custom)).collect()
}

/// Parses `10.0.0.0/8`, `fd00::/8` or a single address (a range of one).
pub fn parse_range(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{text}` is not an address range such as \"10.20.0.0/16\" or an address"))
}

fn de_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let text = String::deserialize(d)?;
    parse_decimal(&text).map_err(serde::de::Error::custom)
}

fn de_opt_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    de_decimal(d).map(Some)
}

/// Parses an exact, non-negative decimal such as `"0.0000002"`.
pub fn parse_decimal(text: &str) -> Result<Decimal, String> {
    let value = Decimal::from_str_exact(text.trim()).map_err(|e| format!("`{text}` is not a decimal: {e}"))?;
    if value.is_sign_negative() {
        return Err(format!("`{text}` must not be negative"));
    }
    Ok(value)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_have_both_plans() {
        let config = Config::embedded();
        assert_eq!(config.plans["free"].requests_per_second, Some(10));
        assert_eq!(config.plans["free"].burst, Some(20));
        assert_eq!(config.plans["free"].monthly_budget, Some(Decimal::new(100, 2)));
        assert_eq!(config.plans["standard"].requests_per_second, None);
        assert_eq!(config.plans["standard"].prices.invocations, Decimal::new(2, 7));
        assert_eq!(config.plans["free"].max_memory, 64 << 20);
        assert!(!config.plans["free"].gpu);
        assert_eq!(config.plans["standard"].max_timeout, Duration::from_secs(30));
    }

    #[test]
    fn overrides_merge_and_unknown_keys_fail() {
        let config = Config::from_toml("[plans.free]\nmax_memory = \"128MiB\"\n").expect("parses");
        assert_eq!(config.plans["free"].max_memory, 128 << 20);
        assert_eq!(config.plans["free"].default_memory, 32 << 20);
        assert!(Config::from_toml("[server]\nmax_upload = 1\n").is_err());
        assert_eq!(Config::embedded().nn.onnxruntime, "");
        assert!(Config::from_toml("[nn]\ngpu = \"maybe\"\n").is_err(), "nn.gpu is auto or off");
        assert_eq!(
            Config::from_toml("[nn]\ngpu_memory_bytes = \"512MiB\"\n").expect("parses").nn.gpu_memory_bytes,
            512 << 20
        );
        let config = Config::from_toml("[nn]\nonnxruntime = \"/opt/libonnxruntime.so\"\n").expect("parses");
        assert_eq!(config.nn.onnxruntime, "/opt/libonnxruntime.so");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1TiB").is_err());
    }

    #[test]
    fn outbound_ranges_parse_and_default_to_none() {
        assert!(Config::embedded().outbound.allow_ranges.is_empty());
        let config = Config::from_toml("[outbound]\nallow_ranges = [\"127.0.0.0/8\", \"::1\"]\n").expect("parses");
        assert_eq!(config.outbound.allow_ranges.len(), 2);
        assert!(config.outbound.allow_ranges[1].contains(&"::1".parse::<std::net::IpAddr>().unwrap()));
        let err = Config::from_toml("[outbound]\nallow_ranges = [\"localhost\"]\n").unwrap_err();
        assert!(format!("{err:#}").contains("not an address range"), "{err:#}");
        assert_eq!(Config::embedded().plans["standard"].outbound_requests_per_call, 64);
    }
}
