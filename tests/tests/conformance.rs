//! ONNX backend node tests on every engine this server has (see
//! `infercell_tests::conformance`), compared with the tests' expected outputs (rtol 1e-3, atol
//! 1e-5; 1e-4 on the GPU).
//!
//! By default the cases come from `tests/conformance/node-tests/` (written by
//! `scripts/make-models.sh`); `INFERCELL_CONFORMANCE_DIR` points elsewhere,
//! `INFERCELL_CONFORMANCE_REPORT=FILE` writes the per-op table as Markdown
//! (`scripts/conformance.sh` does both and prints it).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;

use infercell::config::Config;
use infercell::server::App;
use infercell_tests::conformance::{GPU_ATOL, Outcome, cases, cases_dir, run_case};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_node_tests() {
    let Some(dir) = cases_dir() else { return };
    let index = cases(&dir);
    let tmp = tempfile::tempdir().unwrap();
    let (app, _) = App::open(Config::embedded(), tmp.path(), Some("ick_admin_conformance".into())).unwrap();
    let engines: Vec<&'static str> = app.registry.models.graphs().engine_names();
    if infercell_tests::strict() {
        assert!(engines.contains(&"onnxruntime"), "CI installs ONNX Runtime; ORT_DYLIB_PATH must name it");
    }

    // op -> engine -> (passed, total); and every case that did not pass, with its reason.
    let mut table: BTreeMap<String, BTreeMap<&str, (u32, u32)>> = BTreeMap::new();
    let mut failures: Vec<(String, &str, Outcome)> = Vec::new();
    for engine in &engines {
        let tenant = format!("conformance-{engine}");
        app.tenants.create(&tenant, "free").await.unwrap();
        let atol = if *engine == "wgpu" { GPU_ATOL } else { 1e-5 };
        for (name, op) in &index {
            let outcome = run_case(&app, &tenant, &dir, name, engine, atol).await;
            let cell = table.entry(op.to_string()).or_default().entry(engine).or_default();
            cell.1 += 1;
            match outcome {
                Outcome::Pass(_) => cell.0 += 1,
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
            Outcome::Pass(_) => unreachable!(),
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
