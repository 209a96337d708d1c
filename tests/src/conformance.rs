//! ONNX backend node tests (from the `onnx==1.22.0` wheel, selected by
//! `scripts/conformance/select_node_tests.py`) run through the path a guest's `load-by-name`
//! takes: the model registry validates and stores each model, the lookup finds it, the shared
//! graph cache loads it on the engine, and the compute pool runs it. Used by the
//! `conformance` (every engine) and `gpu` (the wgpu engine) tests.

use std::path::PathBuf;

use infercell::nn::{ElemType, ErrorCode, HostTensor, NnError};
use infercell::runtime::nn::ModelSource;
use infercell::server::App;
use serde_json::Value;

use crate::repo_root;

/// Relative tolerance of every comparison.
pub const RTOL: f64 = 1e-3;
/// Absolute tolerance on the GPU (1e-5 on the CPU).
pub const GPU_ATOL: f64 = 1e-4;

/// The ONNX ops the GPU engine has kernels for (issue 7's list): every node test of these
/// passes on wgpu, except [`GPU_KNOWN_REFUSALS`].
pub const GPU_OPS: &[&str] = &[
    "MatMul",
    "Gemm",
    "Conv",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Clip",
    "Gelu",
    "Erf",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "BatchNormalization",
    "Softmax",
    "LayerNormalization",
    "ReduceMean",
    "Concat",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Gather",
];

/// Node tests of those ops that tract's ONNX front end refuses before any engine runs (ONNX
/// Runtime runs them): training-mode BatchNormalization (three outputs) and MatMul of two
/// vectors.
pub const GPU_KNOWN_REFUSALS: &[&str] =
    &["test_batchnorm_epsilon_training_mode", "test_batchnorm_example_training_mode", "test_matmul_1d_1d"];

#[derive(Debug, Clone)]
pub enum Outcome {
    /// Passed, having run as metered (nodes per device).
    Pass(infercell::nn::NnUsage),
    /// The engine refused the model or the inputs with a clear error.
    Refused(NnError),
    /// The engine computed something else than expected: never acceptable.
    Wrong(String),
}

/// A number of a case file; NaN and infinities are the strings "nan", "inf" and "-inf".
fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| v.as_str().and_then(|s| s.parse().ok()).unwrap())
}

fn tensor(value: &Value) -> (String, HostTensor) {
    let dims: Vec<u32> = value["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as u32).collect();
    let data = value["data"].as_array().unwrap();
    let (ty, bytes): (ElemType, Vec<u8>) = match value["datatype"].as_str().unwrap() {
        "FP32" => (ElemType::F32, data.iter().flat_map(|v| (number(v) as f32).to_le_bytes()).collect()),
        "INT64" => (ElemType::I64, data.iter().flat_map(|v| v.as_i64().unwrap().to_le_bytes()).collect()),
        "INT32" => (ElemType::I32, data.iter().flat_map(|v| (v.as_i64().unwrap() as i32).to_le_bytes()).collect()),
        other => panic!("unexpected datatype {other}"),
    };
    (value["name"].as_str().unwrap().to_string(), HostTensor::new(dims, ty, bytes).unwrap())
}

/// Compares one output with its expectation (absolute tolerance `atol`); NaNs must match NaNs.
fn compare(expected: &Value, got: &HostTensor, atol: f64) -> Result<(), String> {
    let want: Vec<f64> = expected["data"].as_array().unwrap().iter().map(number).collect();
    let shape: Vec<u32> = expected["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as u32).collect();
    if got.ty != ElemType::F32 {
        return Err(format!("output `{}` is {:?}, expected FP32", expected["name"], got.ty));
    }
    // A scalar may come back as [1] or [] depending on the engine; the element count must agree.
    if got.dims != shape && !(got.dims.iter().product::<u32>() == shape.iter().product::<u32>() && want.len() <= 1) {
        return Err(format!("output `{}` has shape {:?}, expected {shape:?}", expected["name"], got.dims));
    }
    let values = got.data.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())));
    for (i, (g, w)) in values.zip(&want).enumerate() {
        if (g.is_nan() && w.is_nan()) || g == *w {
            continue;
        }
        let err = (g - w).abs();
        if err.is_nan() || err > atol + RTOL * w.abs() {
            return Err(format!("output `{}`[{i}] = {g}, expected {w}", expected["name"]));
        }
    }
    Ok(())
}

/// Pushes case `name` of `dir` as a model of `tenant` for `engine` (`wgpu`: device `gpu`),
/// loads it as `load-by-name` would, runs it, compares.
pub async fn run_case(app: &App, tenant: &str, dir: &std::path::Path, name: &str, engine: &str, atol: f64) -> Outcome {
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(name).join("case.json")).unwrap()).unwrap();
    let onnx = std::fs::read(dir.join(name).join("model.onnx")).unwrap();
    let models = &app.registry.models;
    let model_name = name.replace("test_", "").replace('_', "-").to_lowercase();
    let manifest = match engine {
        "wgpu" => format!("name = \"{model_name}\"\ndevice = \"gpu\"\n"),
        engine => format!("name = \"{model_name}\"\nengine = \"{engine}\"\n"),
    };
    // The suite's tenant stores every case: a plan without limits.
    let mut plan = app.config.plans["standard"].clone();
    (plan.max_model_bytes, plan.gpu, plan.max_models, plan.max_versions, plan.max_storage_bytes) =
        (u64::MAX, true, u64::MAX, u64::MAX, u64::MAX);
    if let Err(e) = models.push(tenant, &manifest, onnx.into(), "conformance", &plan).await {
        return Outcome::Refused(NnError::new(ErrorCode::UnsupportedOperation, e.to_string()));
    }
    let infercell::runtime::nn::Located { digest, selector, .. } =
        models.lookup(tenant, &model_name, &infercell::runtime::nn::ModelPin::Current).await.unwrap();
    let graphs = models.graphs().clone();
    let (source, d) = (models.clone(), digest.clone());
    let (model, _) = match graphs
        .get_or_load(tenant, &digest, graphs.select(&selector, true).unwrap(), move || {
            source.read(&d).map_err(|e| NnError::new(ErrorCode::RuntimeError, e.to_string()))
        })
        .await
    {
        Ok(loaded) => loaded,
        Err(e) => return Outcome::Refused(e),
    };
    let inputs = case["inputs"].as_array().unwrap().iter().map(tensor).collect();
    let meter = std::sync::Arc::new(infercell::nn::NnMeter::default());
    let outputs = match graphs.run_model("conformance", None, model, inputs, &meter, u64::MAX).await {
        Ok(outputs) => outputs,
        Err(e) => return Outcome::Refused(e),
    };
    let placed = meter.usage();
    for expected in case["outputs"].as_array().unwrap() {
        let Some((_, got)) = outputs.iter().find(|(n, _)| n == expected["name"].as_str().unwrap()) else {
            return Outcome::Wrong(format!("no output `{}`", expected["name"]));
        };
        if let Err(e) = compare(expected, got, atol) {
            return Outcome::Wrong(e);
        }
    }
    Outcome::Pass(placed)
}

/// The directory of the cases, or `None` (skip) when it was not made; under `CI=true` or `scripts/test.sh` it must be.
pub fn cases_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("INFERCELL_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/conformance/node-tests"));
    if dir.join("index.json").is_file() {
        return Some(dir);
    }
    assert!(
        !crate::strict(),
        "{} is missing: scripts/make-models.sh writes it (scripts/test.sh runs it)",
        dir.display()
    );
    eprintln!("skipping: {} is missing (run scripts/make-models.sh)", dir.display());
    None
}

/// The cases of `index.json`: (name, op).
pub fn cases(dir: &std::path::Path) -> Vec<(String, String)> {
    let index: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    index.iter().map(|c| (c["name"].as_str().unwrap().to_string(), c["op"].as_str().unwrap().to_string())).collect()
}
