//! Triton's inference statistics (`/v2/models/.../stats`) per tenant, model and version,
//! since the server started: kept by the call pipeline for every `/v2` inference.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

/// Inference statistics per (tenant, model, version), since the server started.
#[derive(Default)]
pub struct Stats(Mutex<HashMap<(String, String, u32), ModelStats>>);

#[derive(Default, Clone)]
pub struct ModelStats {
    predictor: bool,
    last_inference_ms: u64,
    success: Duration,
    success_count: u64,
    fail: Duration,
    fail_count: u64,
    compute_input: Duration,
    compute_infer: Duration,
    compute_output: Duration,
}

/// One call's timings, for [`Stats`].
pub struct Timings {
    pub ok: bool,
    pub total: Duration,
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
}

impl Stats {
    pub fn record(&self, tenant: &str, name: &str, version: u32, predictor: bool, t: &Timings) {
        let Ok(mut stats) = self.0.lock() else { return };
        let entry = stats.entry((tenant.to_string(), name.to_string(), version)).or_default();
        entry.predictor = predictor;
        entry.last_inference_ms = crate::clock::now_ms();
        if t.ok {
            entry.success_count += 1;
            entry.success += t.total;
            entry.compute_input += t.input;
            entry.compute_infer += t.infer;
            entry.compute_output += t.output;
        } else {
            entry.fail_count += 1;
            entry.fail += t.total;
        }
    }

    /// The predictor functions of `tenant` called since start, with their versions.
    pub fn predictors(&self, tenant: &str) -> Vec<(String, u32)> {
        let Ok(stats) = self.0.lock() else { return Vec::new() };
        stats.iter().filter(|((t, _, _), s)| t == tenant && s.predictor).map(|((_, n, v), _)| (n.clone(), *v)).collect()
    }

    pub fn get(&self, tenant: &str, name: &str, version: u32) -> ModelStats {
        self.0
            .lock()
            .ok()
            .and_then(|s| s.get(&(tenant.to_string(), name.to_string(), version)).cloned())
            .unwrap_or_default()
    }
}

pub fn stats_json(name: &str, version: u32, s: &ModelStats) -> Value {
    let d = |count: u64, ns: Duration| json!({ "count": count, "ns": ns.as_nanos() as u64 });
    json!({
        "name": name,
        "version": version.to_string(),
        "last_inference": s.last_inference_ms,
        "inference_count": s.success_count,
        "execution_count": s.success_count,
        "inference_stats": {
            "success": d(s.success_count, s.success),
            "fail": d(s.fail_count, s.fail),
            "queue": d(s.success_count, Duration::ZERO),
            "compute_input": d(s.success_count, s.compute_input),
            "compute_infer": d(s.success_count, s.compute_infer),
            "compute_output": d(s.success_count, s.compute_output),
            "cache_hit": d(0, Duration::ZERO),
            "cache_miss": d(0, Duration::ZERO),
        },
        "batch_stats": [],
    })
}
