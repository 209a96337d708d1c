//! The GPU (issue 7): devices, the wgpu engine's kernels against the ONNX node tests, models
//! pushed with `--device gpu` served over `/v2` and from functions, placement, GPU metering,
//! the `gpu` grant, GPU memory admission and device-loss recovery. The tiled kernels against
//! tract are in `gpu_kernels.rs`.
//!
//! `scripts/test.sh` installs Mesa's software Vulkan (lavapipe, `mesa-vulkan-drivers`), so a
//! GPU adapter must exist under it and under CI ([`strict`]); run alone (`cargo test`), every
//! test skips with a message when wgpu finds no adapter.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use infercell::config::Config;
use infercell::nn::{ElemType, Engine, ErrorCode, HostTensor, LoadedModel};
use infercell::server::App;
use infercell_tests::conformance::{GPU_ATOL, GPU_KNOWN_REFUSALS, GPU_OPS, Outcome, cases, cases_dir, run_case};
use infercell_tests::*;

/// Digits case `i` of samples/digits/expected.json: the input tensor and ONNX Runtime's output.
fn digits_case(i: usize) -> (Vec<(String, HostTensor)>, Vec<f64>) {
    let case = &digits_expected()["cases"][i];
    let pixels: Vec<u8> = case["pixels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| ((p.as_f64().unwrap() / 16.0) as f32).to_le_bytes())
        .collect();
    let input = HostTensor::new(vec![1, 64], ElemType::F32, pixels).unwrap();
    let want = case["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
    (vec![("input".to_string(), input)], want)
}

/// Whether the `infercell-usage` header value has exactly this `meter=value` pair.
fn has_pair(usage: &str, pair: &str) -> bool {
    usage.split(", ").any(|kv| kv == pair)
}

fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-4, "{g} vs onnxruntime's {w}");
    }
}

fn run_digits(model: &Arc<dyn LoadedModel>, i: usize) -> infercell::nn::Placement {
    let (inputs, want) = digits_case(i);
    let (outputs, placed) = model.run_placed(inputs).unwrap();
    assert_close(&floats(&outputs[0].1), &want);
    placed
}

#[test]
fn devices_lists_the_cpu_and_the_gpus() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    expect_error(server.get("/v1/devices", None), 401);
    let listed: Value = server.get("/v1/devices", Some(&key)).json().unwrap();
    let devices = listed["devices"].as_array().unwrap();
    let cpu = &devices[0];
    assert_eq!(cpu["kind"], "cpu");
    assert!(cpu["memory"].as_u64().unwrap() > 0 && cpu["cores"].as_u64().unwrap() > 0, "{cpu}");
    let gpus: Vec<&Value> = devices.iter().filter(|d| d["kind"] == "gpu").collect();
    if gpus.is_empty() {
        assert!(!strict(), "CI installs lavapipe: a GPU adapter must be found");
        eprintln!("skipping the GPU checks: no Vulkan adapter (apt-get install mesa-vulkan-drivers)");
        return;
    }
    for gpu in gpus {
        assert_eq!(gpu["backend"], "vulkan");
        assert!(!gpu["name"].as_str().unwrap().is_empty());
        assert!(gpu["memory"].as_u64().unwrap() > 0, "{gpu}");
    }
    // The CLI shows the same list.
    let out = server.cli(&key, &["devices"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("cpu") && text.contains("gpu") && text.contains("vulkan"), "{text}");
}

/// Every ONNX node test of an op in the kernel list, pushed with device `gpu`, gives its
/// expected outputs (rtol 1e-3, atol 1e-4), running its nodes on the GPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_node_tests_of_the_kernel_ops_pass_on_the_gpu() {
    let Some(dir) = cases_dir() else { return };
    if gpu_engine(1 << 30).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (app, _) = App::open(Config::embedded(), tmp.path(), Some("ick_admin_gpu".into())).unwrap();
    app.tenants.create("gpu", "standard").await.unwrap();
    let mut per_op: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut gpu_nodes = 0;
    for (name, op) in cases(&dir).into_iter().filter(|(_, op)| GPU_OPS.contains(&op.as_str())) {
        let outcome = run_case(&app, "gpu", &dir, &name, "wgpu", GPU_ATOL).await;
        let cell = per_op.entry(op.clone()).or_default();
        cell.1 += 1;
        match outcome {
            Outcome::Pass(placed) => {
                cell.0 += 1;
                gpu_nodes += placed.gpu_nodes;
                // Only models that merely reshape their input, or have an empty result, may
                // run wholly on the CPU (models that decluttered to nothing run nowhere).
                let reshape_only = ["Reshape", "Flatten", "Squeeze", "Unsqueeze"].contains(&op.as_str());
                let empty = name == "test_slice_start_out_of_bounds";
                if placed.gpu_nodes == 0 && placed.cpu_nodes > 0 && !reshape_only && !empty {
                    problems.push(format!("{name}: ran no node on the GPU ({placed:?})"));
                }
            }
            Outcome::Refused(e) if GPU_KNOWN_REFUSALS.contains(&name.as_str()) => {
                eprintln!("{name}: refused as documented: {}", e.message);
            }
            other => problems.push(format!("{name}: {other:?}")),
        }
    }
    for (op, (passed, total)) in &per_op {
        println!("{op}: {passed}/{total}");
    }
    assert_eq!(per_op.len(), GPU_OPS.len(), "every op of the kernel list has node tests: {per_op:?}");
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(gpu_nodes > 150, "{gpu_nodes} nodes ran on the GPU");
}

/// A model pushed with `--device gpu` and called over /v2 gives ONNX Runtime's results; the
/// usage header and record and the bill show the GPU time and nodes; a plan without the GPU
/// cannot push one.
#[test]
fn digits_pushed_to_the_gpu_serve_v2_and_bill_gpu_time() {
    if gpu_engine(1 << 30).is_none() {
        return;
    }
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    let out = server.cli(&key, &["model", "push", "digits", "samples/digits/digits.onnx", "--device", "gpu"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Value = server.get("/v1/models/digits", Some(&key)).json().unwrap();
    assert_eq!(listed["versions"][0]["device"], "gpu", "{listed}");
    assert_eq!(listed["outputs"], json!([{ "name": "probabilities", "datatype": "FP32", "shape": [-1, 10] }]));

    let expected = digits_expected();
    for case in expected["cases"].as_array().unwrap().iter().take(5) {
        let pixels: Vec<f64> = case["pixels"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() / 16.0).collect();
        let body = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 64], "data": pixels }] });
        let resp = server.post("/v2/models/digits/infer", Some(&key), body.to_string());
        assert_eq!(resp.status(), 200);
        let usage = resp.headers()["infercell-usage"].to_str().unwrap().to_string();
        assert!(has_pair(&usage, "nn_gpu_nodes=6") && has_pair(&usage, "nn_cpu_nodes=0"), "{usage}");
        assert!(usage.contains("nn_gpu_ms="), "{usage}");
        let v: Value = resp.json().unwrap();
        let got: Vec<f64> = v["outputs"][0]["data"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
        let want: Vec<f64> = case["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
        assert_close(&got, &want);
    }
    let records: Value = server.get("/v1/usage", Some(&key)).json().unwrap();
    let records = records["records"].as_array().unwrap();
    assert_eq!(records.len(), 5);
    for r in records {
        assert_eq!(r["kind"], "model");
        assert_eq!(r["nn_nodes"], json!({ "cpu": 0, "gpu": 6 }), "{r}");
    }
    let gpu_ms: f64 = records.iter().map(|r| r["meters"]["nn_gpu_ms"].as_str().unwrap().parse::<f64>().unwrap()).sum();
    assert!(gpu_ms > 0.0, "{records:?}");
    // The engine's memory is observable: on its device and in /metrics.
    let devices: Value = server.get("/v1/devices", Some(&key)).json().unwrap();
    let engine_device = devices["devices"].as_array().unwrap().iter().find(|d| d["engine"] == "wgpu").unwrap().clone();
    assert!(engine_device["memory_used"].as_u64().unwrap() > 0, "{engine_device}");
    assert_eq!(engine_device["memory_budget"], 4u64 << 30, "{engine_device}");
    assert!(server.metric("infercell_gpu_memory_bytes") > 0.0);
    assert_eq!(server.metric("infercell_gpu_memory_budget_bytes"), (4u64 << 30) as f64);
    let bill: Value = server.get("/v1/billing", Some(&key)).json().unwrap();
    let line = bill["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["function"] == "digits" && l["meter"] == "nn_gpu_ms")
        .unwrap()
        .clone();
    assert!(line["quantity"].as_str().unwrap().parse::<f64>().unwrap() > 0.0, "{line}");
    assert!(line["amount"].as_str().unwrap().parse::<f64>().unwrap() > 0.0, "{line}");

    // The same model pinned to the CPU reports CPU nodes and no GPU time.
    let resp = server.push_model(&key, "name = \"digits-cpu\"\ndevice = \"cpu\"\n", digits_model());
    assert_eq!(resp.status(), 201);
    let (body, want) = {
        let case = &expected["cases"][0];
        let pixels: Vec<f64> = case["pixels"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() / 16.0).collect();
        (json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 64], "data": pixels }] }), case.clone())
    };
    let resp = server.post("/v2/models/digits-cpu/infer", Some(&key), body.to_string());
    let usage = resp.headers()["infercell-usage"].to_str().unwrap().to_string();
    assert!(usage.contains("nn_gpu_ms=0,") && has_pair(&usage, "nn_gpu_nodes=0"), "{usage}");
    assert!(!has_pair(&usage, "nn_cpu_nodes=0"), "a CPU engine counts its nodes too: {usage}");
    assert_eq!(resp.status(), 200, "{want}");

    // A plan without the GPU cannot put a model there; nothing is stored.
    let free = server.tenant("small", "free");
    let msg = expect_error(server.push_model(&free, "name = \"digits\"\ndevice = \"gpu\"\n", digits_model()), 400);
    assert!(msg.contains("gpu") && msg.contains("plan"), "{msg}");
    let none: Value = server.get("/v1/models", Some(&free)).json().unwrap();
    assert_eq!(none["models"].as_array().unwrap().len(), 0, "{none}");
    // An engine that runs on the CPU cannot be asked for the GPU.
    let msg = expect_error(
        server.push_model(&key, "name = \"x\"\nengine = \"tract\"\ndevice = \"gpu\"\n", digits_model()),
        400,
    );
    assert!(msg.contains("tract") && msg.contains("CPU"), "{msg}");
}

/// The moderate-image sample, with its ResNet-50 (open_nsfw) pushed with `--device gpu` and the
/// GPU granted, classifies a photo as the CPU does: every one of the model's nodes on the GPU.
#[test]
fn moderate_image_runs_resnet50_on_the_gpu() {
    let Some(dir) = moderate_image_dir() else { return };
    if gpu_engine(1 << 30).is_none() {
        return;
    }
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let case = &expected["cases"][0];
    let image = std::fs::read(dir.join(case["image"].as_str().unwrap())).unwrap();
    let onnx = std::fs::read(dir.join("open-nsfw.onnx")).unwrap();
    let server = Server::start();
    let manifest = std::fs::read_to_string(function_dir("moderate-image").join("function.toml")).unwrap();
    // lavapipe runs ResNet-50 in seconds, and the first call also plans it.
    let manifest = manifest.replace("timeout = \"10s\"", "timeout = \"30s\"");
    let mut scores = Vec::new();
    for (tenant, device) in [("on-gpu", "gpu"), ("on-cpu", "cpu")] {
        let key = server.tenant(tenant, "standard");
        let resp = server.push_model(&key, &format!("name = \"open-nsfw\"\ndevice = \"{device}\"\n"), onnx.clone());
        assert_eq!(resp.status(), 201);
        let manifest = manifest.replace("[capabilities]\n", "[capabilities]\ngpu = true\n");
        assert_eq!(server.upload(&key, &manifest, component("moderate-image")).status(), 201);
        // Planned by a first call over /v2 (the function's call then only runs it): slow CI
        // machines stay within the function's timeout.
        let meta: Value = server.get("/v2/models/open-nsfw", Some(&key)).json().unwrap();
        let zeros = json!({ "inputs": [{ "name": meta["inputs"][0]["name"], "datatype": "FP32", "shape": [1, 224, 224, 3],
                                          "data": vec![0.0; 224 * 224 * 3] }] });
        assert_eq!(server.post("/v2/models/open-nsfw/infer", Some(&key), zeros.to_string()).status(), 200);
        let resp = server.post(&format!("/fn/{tenant}/moderate-image"), Some(&key), image.clone());
        assert_eq!(resp.status(), 200);
        let usage = resp.headers()["infercell-usage"].to_str().unwrap().to_string();
        if device == "gpu" {
            let pairs: Vec<&str> = usage.split(", ").collect();
            assert!(pairs.contains(&"nn_gpu_nodes=172") && pairs.contains(&"nn_cpu_nodes=0"), "{usage}");
        }
        let got: Value = resp.json().unwrap();
        scores.push((got["probabilities"]["sfw"].as_f64().unwrap(), got["probabilities"]["nsfw"].as_f64().unwrap()));
    }
    let ((gpu_sfw, gpu_nsfw), (cpu_sfw, cpu_nsfw)) = (scores[0], scores[1]);
    assert!(gpu_sfw > 0.9, "a landscape photo is safe: {scores:?}");
    assert!((gpu_sfw - cpu_sfw).abs() < 1e-5, "{scores:?}");
    // The small class, relatively: a wrong kernel anywhere in 172 nodes would move it far.
    assert!((gpu_nsfw - cpu_nsfw).abs() <= 1e-3 * cpu_nsfw + 1e-9, "{scores:?}");
}

/// A plan that no longer allows the GPU (the operator changed it) stops a tenant's GPU model at
/// the next call, with 403; its CPU models still serve.
#[test]
fn a_plan_without_the_gpu_stops_gpu_models() {
    if gpu_engine(1 << 30).is_none() {
        return;
    }
    let mut server = Server::start();
    let key = server.tenant("acme", "standard");
    assert_eq!(server.push_model(&key, "name = \"digits\"\ndevice = \"gpu\"\n", digits_model()).status(), 201);
    assert_eq!(server.push_model(&key, "name = \"digits-cpu\"\ndevice = \"cpu\"\n", digits_model()).status(), 201);
    let case = &digits_expected()["cases"][0];
    let pixels: Vec<f64> = case["pixels"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() / 16.0).collect();
    let body = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 64], "data": pixels }] });
    assert_eq!(server.post("/v2/models/digits/infer", Some(&key), body.to_string()).status(), 200);
    server.stop();
    server.set_config(Some("[plans.standard]\ngpu = false\n"));
    server.restart();
    let msg = expect_error(server.post("/v2/models/digits/infer", Some(&key), body.to_string()), 403);
    assert!(msg.contains("GPU is not granted"), "{msg}");
    assert_eq!(server.post("/v2/models/digits-cpu/infer", Some(&key), body.to_string()).status(), 200);
    // The refusal is found before admission: not billed.
    let records: Value = server.get("/v1/usage", Some(&key)).json().unwrap();
    let functions: Vec<&str> =
        records["records"].as_array().unwrap().iter().map(|r| r["function"].as_str().unwrap()).collect();
    assert_eq!(functions, ["digits", "digits-cpu"]);
}

/// A model that can never fit the GPU memory budget (`nn.gpu_memory_bytes`) is a 413 over /v2,
/// naming the setting; the server goes on serving.
#[test]
fn a_model_over_the_gpu_budget_is_too_large() {
    if gpu_engine(1 << 30).is_none() {
        return;
    }
    let server = Server::start_with_config(Some("[nn]\ngpu_memory_bytes = \"4KiB\"\n"));
    let key = server.tenant("acme", "standard");
    assert_eq!(server.push_model(&key, "name = \"digits\"\ndevice = \"gpu\"\n", digits_model()).status(), 201);
    let body = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 64], "data": vec![0.5; 64] }] });
    let msg = expect_error(server.post("/v2/models/digits/infer", Some(&key), body.to_string()), 413);
    assert!(msg.contains("nn.gpu_memory_bytes"), "{msg}");
    assert_eq!(server.get("/v2/health/ready", None).status(), 200);
    // The engine refused the work: nothing is billed.
    let usage: Value = server.get("/v1/usage", Some(&key)).json().unwrap();
    assert_eq!(usage["records"], json!([]), "a refusal is not billed");
}

/// A function granted the GPU runs a GPU model and is billed for it; the same function without
/// the grant is refused at the model, and the refusal is counted.
#[test]
fn functions_need_the_gpu_grant_for_gpu_models() {
    if gpu_engine(1 << 30).is_none() {
        return;
    }
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    let resp = server.push_model(&key, "name = \"digits\"\ndevice = \"gpu\"\n", digits_model());
    assert_eq!(resp.status(), 201);
    let case = &digits_expected()["cases"][1];
    let body = json!({ "pixels": case["pixels"] }).to_string();

    // Without `capabilities.gpu`: the model is refused, the denial counted.
    server.deploy(&key, "digits");
    let resp = server.invoke(&key, "acme/digits", &body);
    let (status, text) = (resp.status(), resp.text().unwrap());
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("GPU is not granted"), "{text}");
    assert_eq!(server.metric("infercell_denials_total{tenant=\"acme\",capability=\"gpu\"}"), 1.0);

    // With it: ONNX Runtime's answer, GPU time and nodes in the usage header.
    let manifest = std::fs::read_to_string(function_dir("digits").join("function.toml")).unwrap();
    let manifest = manifest.replace("[capabilities]\n", "[capabilities]\ngpu = true\n");
    let resp = server.upload(&key, &manifest, component("digits"));
    assert_eq!(resp.status(), 201, "{}", resp.text().unwrap());
    let resp = server.invoke(&key, "acme/digits", &body);
    assert_eq!(resp.status(), 200);
    let usage = resp.headers()["infercell-usage"].to_str().unwrap().to_string();
    assert!(has_pair(&usage, "nn_gpu_nodes=6"), "{usage}");
    let v: Value = resp.json().unwrap();
    let got: Vec<f64> = v["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
    let want: Vec<f64> = case["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
    assert_close(&got, &want);
    assert_eq!(v["digit"], case["digit"]);
}

/// `wasi:nn` `load` with execution target `gpu`: refused without the grant, on the GPU engine
/// with it (which reads the bytes: garbage is `invalid-encoding`, as on the CPU).
#[test]
fn execution_target_gpu_needs_the_grant() {
    if gpu_engine(1 << 30).is_none() {
        return;
    }
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    for (grant, expected) in [
        ("", "error ErrorCode::Security: this function is not granted the GPU"),
        ("gpu = true\n", "error ErrorCode::InvalidEncoding: not an ONNX model"),
    ] {
        let manifest = format!("name = \"hostile\"\n[capabilities]\nnn_load_bytes = true\n{grant}");
        assert_eq!(server.upload(&key, &manifest, component("hostile")).status(), 201);
        let text = server.invoke(&key, "acme/hostile/nn/gpu", "").text().unwrap();
        assert!(text.starts_with(expected), "`{text}` does not start with `{expected}`");
    }
}

/// `infercell model check` lists every node and where it runs.
#[test]
fn model_check_lists_every_node_and_its_device() {
    if gpu_engine(1 << 30).is_none() {
        return;
    }
    let out = std::process::Command::new(binary())
        .args(["model", "check", "samples/digits/digits.onnx", "--device", "gpu", "--json"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 6, "{v}");
    assert!(nodes.iter().all(|n| n["device"] == "gpu"), "{v}");
    assert!(nodes.iter().any(|n| n["op"] == "EinSum") && nodes.iter().any(|n| n["op"] == "Softmax"), "{v}");
    // Nodes without a kernel say why they stay on the CPU.
    let dir = cases_dir();
    if let Some(dir) = dir {
        let model = dir.join("test_convtranspose/model.onnx");
        let out = std::process::Command::new(binary())
            .args(["model", "check"])
            .arg(&model)
            .args(["--device", "gpu"])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Deconv") && text.contains("cpu") && text.contains("no GPU kernel"), "{text}");
        // A model whose shape is an input: the check says it assumed zeros for it.
        let out = std::process::Command::new(binary())
            .args(["model", "check", "--json", "--device", "gpu"])
            .arg(dir.join("test_reshape_negative_dim/model.onnx"))
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["assumed_zero"], json!(["shape"]), "{v}");
    }
    let out = std::process::Command::new(binary())
        .args(["model", "check", "no-such.onnx"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such.onnx"));
}

/// GPU memory is admitted against the budget: idle models are evicted to make room, and a model
/// that can never fit is refused with `too-large`, not a crash.
#[test]
fn gpu_memory_is_admitted_against_the_budget() {
    let Some(probe) = gpu_engine(1 << 30) else { return };
    let measured = probe.load(&digits_model()).unwrap();
    run_digits(&measured, 0);
    // Room for one copy of the model, not two.
    let budget = probe.memory().0 * 3 / 2;
    let gpu = gpu_engine(budget).unwrap();
    let first = gpu.load(&digits_model()).unwrap();
    let second = gpu.load(&digits_model()).unwrap();
    run_digits(&first, 0);
    let (used, cap) = gpu.memory();
    assert!(used > 0 && used <= cap, "{used} of {cap}");
    // The second copy does not fit beside the first: the idle first is evicted.
    run_digits(&second, 1);
    assert!(gpu.memory().0 <= budget);
    run_digits(&first, 2);
    assert_eq!(gpu.stats().evictions, 2, "{:?}", gpu.stats());
    let (used, _) = gpu.memory();
    assert!(used <= budget, "{used} bytes in use, over the {budget}-byte budget");

    let tiny = gpu_engine(4 << 10).unwrap();
    let model = tiny.load(&digits_model()).unwrap();
    let err = model.run_placed(digits_case(0).0).unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge, "{err}");
    assert!(err.message.contains("nn.gpu_memory_bytes"), "{err}");
    assert_eq!(tiny.memory().0, 0, "nothing stays allocated after a refusal");
}

/// A lost device (a driver reset) is recreated on the next call, and the model re-uploaded.
/// The call's deadline cuts a GPU compute: its thread stops waiting on the device at once
/// (the work already queued drains on the device), so its slot is free for the next call.
#[test]
fn a_gpu_compute_is_cut_at_its_deadline() {
    use infercell::nn::{Bounds, Cancel, ElemType, ErrorCode};
    use std::time::{Duration, Instant};
    let Some(gpu) = gpu_engine(1 << 30) else { return };
    let x = || {
        vec![("x".to_string(), HostTensor::new(vec![1, 1], ElemType::F32, 0.001f32.to_le_bytes().to_vec()).unwrap())]
    };
    // Products of 256 x 256 matrices, as many as make about 3 s of work on this device, cut at
    // 300 ms (the work already queued drains on the device before the test's engine is gone).
    let one = gpu.load(&infercell_tests::onnx::matmul_chain_of(1, 256)).unwrap();
    one.run_placed(x()).unwrap();
    let started = Instant::now();
    one.run_placed(x()).unwrap();
    let products = ((3.0 / started.elapsed().as_secs_f64()) as usize).clamp(8, 4000);
    let model = gpu.load(&infercell_tests::onnx::matmul_chain_of(products, 256)).unwrap();
    let cancel = Arc::new(Cancel::default());
    let cutter = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            cancel.cancel();
        })
    };
    let started = Instant::now();
    let err = model.run_bounded(x(), &Bounds { cancel: &cancel, max_bytes: u64::MAX }).expect_err("cut");
    let took = started.elapsed();
    cutter.join().unwrap();
    assert_eq!(err.code, ErrorCode::Timeout, "{err:?}");
    assert!(took < Duration::from_millis(1500), "{products} products cut at 300 ms ended after {took:?}");
}

#[test]
fn a_lost_device_is_recreated() {
    let Some(gpu) = gpu_engine(1 << 30) else { return };
    let model = gpu.load(&digits_model()).unwrap();
    let placed = run_digits(&model, 0);
    assert_eq!((placed.gpu_nodes, placed.cpu_nodes), (6, 0));
    gpu.lose_device();
    run_digits(&model, 1);
    run_digits(&model, 2);
    assert_eq!(gpu.stats().devices_recreated, 1, "{:?}", gpu.stats());
}
