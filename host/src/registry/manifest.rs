//! The function manifest (`function.toml`, DESIGN.md section 6) and its check against a plan.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Plan, parse_duration, parse_size};
use crate::runtime::Limits;
use crate::tenants::valid_name;

/// A function manifest. Unknown keys are errors; only `name` is required.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// Path of the component, relative to the manifest; read by the CLI only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub limits: ManifestLimits,
    #[serde(default)]
    pub capabilities: Capabilities,
    /// A tensor function's (`predictor` world) inputs, as `/v2` metadata shows them and as
    /// requests are checked against (`[[inputs]]` with `name`, `datatype`, `shape`; -1 = any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<crate::nn::TensorInfo>,
    /// A tensor function's outputs (`[[outputs]]`), for `/v2` metadata.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<crate::nn::TensorInfo>,
    /// Requests run in the sandbox at upload (`[[smoke]]`); a version whose smoke tests fail is
    /// stored, and cannot be released without `force`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub smoke: Vec<SmokeTest>,
}

/// `[[smoke]]`: one request and what its answer must be.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeTest {
    /// Default `GET` (`POST` when a body is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The path after the function, e.g. `/` or `/hello?name=x`.
    #[serde(default = "root_path")]
    pub path: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The expected status (default 200).
    #[serde(default = "ok_status")]
    pub status: u16,
    /// Fragments the answer's body must contain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contains: Vec<String>,
}

fn root_path() -> String {
    "/".into()
}

fn ok_status() -> u16 {
    200
}

/// A `capabilities.models` entry: the model's name, and what it pins (`digits@3`,
/// `digits@prod`), if anything.
pub fn model_grant(grant: &str) -> (&str, Option<crate::runtime::nn::ModelPin>) {
    use crate::runtime::nn::ModelPin;
    match grant.split_once('@') {
        None => (grant, None),
        Some((name, pin)) => match pin.parse() {
            Ok(v) => (name, Some(ModelPin::Version(v))),
            Err(_) => (name, Some(ModelPin::Alias(pin.to_string()))),
        },
    }
}

/// At most this many smoke tests per manifest (each runs in a fresh sandbox at upload).
pub const MAX_SMOKE_TESTS: usize = 16;

/// `[limits]`: each capped by the plan; absent = the plan's default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
}

/// `[capabilities]`: everything is denied unless granted here.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Graphs this function may load by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// May ask wasi-nn for the GPU.
    #[serde(default)]
    pub gpu: bool,
    /// wasi:nn `graph::load` from raw bytes (named models need only `models`).
    #[serde(default)]
    pub nn_load_bytes: bool,
    /// Values the function reads through `infercell:function/config`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
}

impl Manifest {
    /// Parses and checks the manifest text; the error says what to fix.
    pub fn parse(text: &str) -> Result<Self, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| format!("invalid manifest: {}", e.message()))?;
        if !valid_name(&manifest.name) {
            return Err(format!(
                "invalid manifest: name `{}` must match ^[a-z0-9][a-z0-9._-]{{0,127}}$",
                manifest.name
            ));
        }
        for tensor in manifest.inputs.iter().chain(&manifest.outputs) {
            if !crate::oip::DATATYPES.contains(&tensor.datatype.as_str()) {
                return Err(format!(
                    "invalid manifest: tensor `{}` has datatype `{}`; use one of {}",
                    tensor.name,
                    tensor.datatype,
                    crate::oip::DATATYPES.join(", ")
                ));
            }
            if tensor.shape.iter().any(|d| *d < -1) {
                return Err(format!(
                    "invalid manifest: tensor `{}` has shape {:?}; -1 is any",
                    tensor.name, tensor.shape
                ));
            }
        }
        if manifest.smoke.len() > MAX_SMOKE_TESTS {
            return Err(format!(
                "invalid manifest: at most {MAX_SMOKE_TESTS} [[smoke]] tests, not {}",
                manifest.smoke.len()
            ));
        }
        for test in &manifest.smoke {
            if !test.path.starts_with('/') {
                return Err(format!("invalid manifest: smoke test path `{}` must start with /", test.path));
            }
            if axum::http::StatusCode::from_u16(test.status).is_err() || test.status < 100 {
                return Err(format!("invalid manifest: smoke test status {} is not an HTTP status", test.status));
            }
            if let Some(method) = &test.method
                && axum::http::Method::from_bytes(method.as_bytes()).is_err()
            {
                return Err(format!("invalid manifest: smoke test method `{method}` is not an HTTP method"));
            }
        }
        for file in &manifest.capabilities.files {
            if !valid_name(file) {
                return Err(format!("invalid manifest: file name `{file}` in capabilities.files is not a valid name"));
            }
        }
        for secret in &manifest.capabilities.secrets {
            if !valid_name(secret) {
                return Err(format!(
                    "invalid manifest: secret name `{secret}` in capabilities.secrets is not a valid name"
                ));
            }
            if manifest.capabilities.config.contains_key(secret) {
                return Err(format!(
                    "invalid manifest: `{secret}` is both a config value and a secret; functions read both by name"
                ));
            }
        }
        for host in &manifest.capabilities.allowed_hosts {
            crate::runtime::http::check_entry(host)
                .map_err(|e| format!("invalid manifest: capabilities.allowed_hosts: {e}"))?;
        }
        for grant in &manifest.capabilities.models {
            let (model, pin) = grant.split_once('@').map_or((grant.as_str(), None), |(m, p)| (m, Some(p)));
            if !valid_name(model) {
                return Err(format!(
                    "invalid manifest: model name `{model}` in capabilities.models is not a valid name"
                ));
            }
            if let Some(pin) = pin {
                let version = pin.parse::<u32>().is_ok_and(|v| v > 0);
                if !version && crate::releases::check_alias(pin).is_err() {
                    return Err(format!(
                        "invalid manifest: `{grant}` in capabilities.models: after @ comes a version (digits@3) or an alias (digits@prod)"
                    ));
                }
            }
        }
        Ok(manifest)
    }

    /// The limits this manifest gets under `plan`, or an error naming the limit that is over.
    pub fn limits(&self, plan_name: &str, plan: &Plan) -> Result<Limits, String> {
        let memory = match &self.limits.memory {
            Some(text) => parse_size(text).map_err(|e| format!("invalid manifest: limits.memory: {e}"))?,
            None => plan.default_memory,
        };
        if memory > plan.max_memory {
            return Err(format!(
                "limits.memory = {} is over the `{plan_name}` plan's maximum of {} MiB",
                self.limits.memory.as_deref().unwrap_or_default(),
                plan.max_memory >> 20
            ));
        }
        if memory < (1 << 16) {
            return Err("limits.memory must be at least 64KiB (one WebAssembly page)".into());
        }
        let timeout = match &self.limits.timeout {
            Some(text) => parse_duration(text).map_err(|e| format!("invalid manifest: limits.timeout: {e}"))?,
            None => plan.default_timeout,
        };
        if timeout > plan.max_timeout {
            return Err(format!(
                "limits.timeout = {} is over the `{plan_name}` plan's maximum of {}",
                self.limits.timeout.as_deref().unwrap_or_default(),
                humantime::format_duration(plan.max_timeout)
            ));
        }
        if timeout < Duration::from_millis(1) {
            return Err("limits.timeout must be at least 1ms".into());
        }
        let fuel = match (self.limits.fuel, plan.max_fuel) {
            (Some(asked), Some(max)) if asked > max => {
                return Err(format!("limits.fuel = {asked} is over the `{plan_name}` plan's maximum of {max}"));
            }
            (Some(asked), _) => Some(asked),
            (None, max) => max,
        };
        if !self.capabilities.allowed_hosts.is_empty() && !plan.outbound_http {
            return Err(format!("capabilities.allowed_hosts (outbound HTTP) is not allowed on the `{plan_name}` plan"));
        }
        if self.capabilities.nn_load_bytes && !plan.nn_load_bytes {
            return Err(format!(
                "capabilities.nn_load_bytes (loading wasi:nn graphs from raw bytes) is not allowed on the `{plan_name}` plan; push the model (`infercell model push`) and grant it under capabilities.models"
            ));
        }
        if self.capabilities.gpu && !plan.gpu {
            return Err(format!("capabilities.gpu is not allowed on the `{plan_name}` plan"));
        }
        Ok(Limits { memory_bytes: memory, timeout, fuel })
    }

    /// The limits of a version stored under a bigger plan than its tenant's now: each clamped
    /// to the current plan's maximum (a grant the plan no longer allows is withheld where it is
    /// used, not here).
    pub fn limits_clamped(&self, plan: &Plan) -> Limits {
        let memory = self.limits.memory.as_deref().and_then(|t| parse_size(t).ok()).unwrap_or(plan.default_memory);
        let timeout =
            self.limits.timeout.as_deref().and_then(|t| parse_duration(t).ok()).unwrap_or(plan.default_timeout);
        let fuel = match (self.limits.fuel, plan.max_fuel) {
            (Some(asked), Some(max)) => Some(asked.min(max)),
            (Some(asked), None) => Some(asked),
            (None, max) => max,
        };
        Limits {
            memory_bytes: memory.clamp(1 << 16, plan.max_memory),
            timeout: timeout.clamp(Duration::from_millis(1), plan.max_timeout),
            fuel,
        }
    }

    /// The `config` table as the ordered pairs the guest sees.
    pub fn config_pairs(&self) -> Vec<(String, String)> {
        self.capabilities.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn parses_the_design_example() {
        let m = Manifest::parse(
            r#"
name = "digits"
component = "../target/wasm32-wasip2/release/digits.wasm"
[limits]
memory = "64MiB"
timeout = "2s"
[capabilities]
models = ["digits"]
gpu = false
config = { labels = "0,1,2,3,4,5,6,7,8,9" }
"#,
        )
        .expect("parses");
        assert_eq!(m.capabilities.models, ["digits"]);
        let config = Config::embedded();
        let limits = m.limits("free", &config.plans["free"]).expect("within plan");
        assert_eq!(limits.memory_bytes, 64 << 20);
        assert_eq!(limits.timeout, Duration::from_secs(2));
    }

    #[test]
    fn a_version_over_the_current_plan_keeps_its_limits_clamped() {
        let config = Config::embedded();
        let m = Manifest::parse(
            "name = \"g\"\n[limits]\nmemory = \"32MiB\"\ntimeout = \"90s\"\n[capabilities]\ngpu = true\n",
        )
        .expect("parses");
        let free = &config.plans["free"];
        assert!(m.limits("free", free).is_err(), "gpu is not on free");
        let limits = m.limits_clamped(free);
        assert_eq!(limits.memory_bytes, 32 << 20, "within free's maximum: kept");
        assert_eq!(limits.timeout, free.max_timeout, "over free's maximum: clamped");
    }

    #[test]
    fn rejects_unknown_keys_bad_names_and_over_plan() {
        assert!(Manifest::parse("name = \"a\"\nbogus = 1\n").unwrap_err().contains("bogus"));
        assert!(Manifest::parse("name = \"Bad Name\"\n").unwrap_err().contains("must match"));
        assert!(Manifest::parse("[limits]\nmemory = \"1MiB\"\n").unwrap_err().contains("name"));
        let config = Config::embedded();
        let m = Manifest::parse("name = \"a\"\n[limits]\nmemory = \"1GiB\"\n").expect("parses");
        assert!(m.limits("free", &config.plans["free"]).unwrap_err().contains("limits.memory"));
        let m = Manifest::parse("name = \"a\"\n[capabilities]\ngpu = true\n").expect("parses");
        assert!(m.limits("free", &config.plans["free"]).unwrap_err().contains("gpu"));
        assert!(m.limits("standard", &config.plans["standard"]).is_ok());
    }
}
