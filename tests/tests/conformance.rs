//! ONNX backend node tests (from the `onnx==1.22.0` wheel, selected by
//! `scripts/conformance/select_node_tests.py`) run through the path a guest's `load-by-name`
//! takes: the model registry validates and stores each model, the lookup finds it, the shared
//! graph cache loads it on the engine, and the compute pool runs it. Each engine's outputs are
//! compared with the test's expected outputs (rtol 1e-3, atol 1e-5).
//!
//! By default the cases come from `tests/conformance/node-tests/` (written by
//! `scripts/make-models.sh`); `INFERCELL_CONFORMANCE_DIR` points elsewhere,
//! `INFERCELL_CONFORMANCE_REPORT=FILE` writes the per-op table as Markdown
//! (`scripts/conformance.sh` does both and prints it).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use infercell::config::Config;
use infercell::nn::{ElemType, ErrorCode, HostTensor, NnError};
use infercell::runtime::nn::ModelSource;
use infercell::server::App;
use infercell_tests::repo_root;
use serde_json::Value;

const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-5;

#[derive(Debug, Clone)]
enum Outcome {
    Pass,
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

/// Compares one output with its expectation; NaNs must match NaNs.
fn compare(expected: &Value, got: &HostTensor) -> Result<(), String> {
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
    let mut worst = 0.0f64;
    for (i, (g, w)) in values.zip(&want).enumerate() {
        if (g.is_nan() && w.is_nan()) || g == *w {
            continue;
        }
        let err = (g - w).abs();
        if err.is_nan() || err > ATOL + RTOL * w.abs() {
            return Err(format!("output `{}`[{i}] = {g}, expected {w}", expected["name"]));
        }
        worst = worst.max(err);
    }
    Ok(())
}

async fn run_case(app: &App, tenant: &str, dir: &std::path::Path, name: &str, engine: &str) -> Outcome {
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(name).join("case.json")).unwrap()).unwrap();
    let onnx = std::fs::read(dir.join(name).join("model.onnx")).unwrap();
    let models = &app.registry.models;
    let model_name = name.replace("test_", "").replace('_', "-").to_lowercase();
    let manifest = format!("name = \"{model_name}\"\nengine = \"{engine}\"\n");
    if let Err(e) = models.push(tenant, &manifest, onnx.into(), u64::MAX).await {
        return Outcome::Refused(NnError::new(ErrorCode::UnsupportedOperation, e.to_string()));
    }
    let (digest, engine) = models.lookup(tenant, &model_name).await.unwrap();
    let graphs = models.graphs().clone();
    let (source, d) = (models.clone(), digest.clone());
    let (model, _) = match graphs
        .get_or_load(&digest, graphs.engine(&engine).unwrap(), move || {
            source.read(&d).map_err(|e| NnError::new(ErrorCode::RuntimeError, e.to_string()))
        })
        .await
    {
        Ok(loaded) => loaded,
        Err(e) => return Outcome::Refused(e),
    };
    let inputs = case["inputs"].as_array().unwrap().iter().map(tensor).collect();
    let outputs = match graphs.run_model(model, inputs).await {
        Ok((outputs, _)) => outputs,
        Err(e) => return Outcome::Refused(e),
    };
    for expected in case["outputs"].as_array().unwrap() {
        let Some((_, got)) = outputs.iter().find(|(n, _)| n == expected["name"].as_str().unwrap()) else {
            return Outcome::Wrong(format!("no output `{}`", expected["name"]));
        };
        if let Err(e) = compare(expected, got) {
            return Outcome::Wrong(e);
        }
    }
    Outcome::Pass
}

fn cases_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("INFERCELL_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/conformance/node-tests"));
    if dir.join("index.json").is_file() {
        return Some(dir);
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{} is missing: scripts/make-models.sh writes it (scripts/test.sh runs it)",
        dir.display()
    );
    eprintln!("skipping: {} is missing (run scripts/make-models.sh)", dir.display());
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_node_tests() {
    let Some(dir) = cases_dir() else { return };
    let index: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (app, _) = App::open(Config::embedded(), tmp.path(), Some("ick_admin_conformance".into())).unwrap();
    let engines: Vec<&'static str> = app.registry.models.graphs().engine_names();
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(engines.contains(&"onnxruntime"), "CI installs ONNX Runtime; ORT_DYLIB_PATH must name it");
    }

    // op -> engine -> (passed, total); and every case that did not pass, with its reason.
    let mut table: BTreeMap<String, BTreeMap<&str, (u32, u32)>> = BTreeMap::new();
    let mut failures: Vec<(String, &str, Outcome)> = Vec::new();
    for engine in &engines {
        let tenant = format!("conformance-{engine}");
        app.tenants.create(&tenant, "free").await.unwrap();
        for case in &index {
            let (name, op) = (case["name"].as_str().unwrap(), case["op"].as_str().unwrap());
            let outcome = run_case(&app, &tenant, &dir, name, engine).await;
            let cell = table.entry(op.to_string()).or_default().entry(engine).or_default();
            cell.1 += 1;
            match outcome {
                Outcome::Pass => cell.0 += 1,
                other => failures.push((name.to_string(), engine, other)),
            }
        }
    }

    let mut report = String::new();
    writeln!(report, "| op | cases | {} |", engines.join(" | ")).unwrap();
    writeln!(report, "|---|---:|{}", "---:|".repeat(engines.len())).unwrap();
    let mut totals = vec![0u32; engines.len()];
    for (op, by_engine) in &table {
        let cases = by_engine.values().next().map_or(0, |c| c.1);
        let cells: Vec<String> = engines
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let (passed, total) = by_engine.get(e).copied().unwrap_or_default();
                totals[i] += passed;
                if passed == total { format!("{passed}") } else { format!("**{passed}**") }
            })
            .collect();
        writeln!(report, "| {op} | {cases} | {} |", cells.join(" | ")).unwrap();
    }
    let totals: Vec<String> = totals.iter().map(|t| format!("**{t}**")).collect();
    writeln!(report, "| **all** | **{}** | {} |", index.len(), totals.join(" | ")).unwrap();
    writeln!(report, "\nCases that did not pass, and why:\n").unwrap();
    for (name, engine, outcome) in &failures {
        let why = match outcome {
            Outcome::Refused(e) => format!("refused, {:?}: {}", e.code, e.message),
            Outcome::Wrong(e) => format!("WRONG: {e}"),
            Outcome::Pass => unreachable!(),
        };
        let why: String = why.replace('\n', " ").chars().take(300).collect();
        writeln!(report, "- `{name}` on {engine}: {why}").unwrap();
    }
    println!("{report}");
    if let Some(path) = std::env::var_os("INFERCELL_CONFORMANCE_REPORT") {
        std::fs::write(path, &report).unwrap();
    }

    // No engine may ever compute a wrong answer: what it cannot run, it refuses clearly.
    let wrong: Vec<_> = failures.iter().filter(|(_, _, o)| matches!(o, Outcome::Wrong(_))).collect();
    assert!(wrong.is_empty(), "wrong answers: {wrong:#?}");
    let failed = |engine: &str| failures.iter().filter(|(_, e, _)| *e == engine).count();
    if engines.contains(&"onnxruntime") {
        assert_eq!(failed("onnxruntime"), 0, "ONNX Runtime passes every selected node test");
    }
    // tract, with integer and parameter inputs specialized, passes at least 96% (341 of 353 at
    // tract-onnx 0.23.9; docs/conformance.md lists what it refuses and why).
    let tract_passed = index.len() - failed("tract");
    assert!(tract_passed * 100 >= index.len() * 96, "tract passed only {tract_passed} of {}", index.len());
}
