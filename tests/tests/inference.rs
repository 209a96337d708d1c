//! Inference through wasi:nn against the real binary: the digits sample gives ONNX Runtime's
//! answers, models are per tenant and granted per function, and every misuse of wasi:nn is a
//! clear error, never a crash or an allocation the guest did not pay for.
#![allow(clippy::unwrap_used)]

use infercell_tests::*;

fn usage_meter(resp: &Response, meter: &str) -> f64 {
    let usage = resp.headers()["infercell-usage"].to_str().unwrap().to_string();
    usage.split(", ").find_map(|kv| kv.strip_prefix(&format!("{meter}="))).unwrap().parse().unwrap()
}

#[test]
fn digits_gives_onnxruntimes_answers() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    let pushed = server.push_digits(&key);
    assert_eq!(pushed["name"], "digits");
    assert_eq!(pushed["version"], 1);
    assert_eq!(pushed["inputs"][0]["name"], "input");
    assert_eq!(pushed["inputs"][0]["datatype"], "FP32");
    assert_eq!(pushed["inputs"][0]["shape"], json!([-1, 64]));
    assert_eq!(pushed["outputs"][0]["name"], "probabilities");
    server.deploy(&key, "digits");

    let expected = digits_expected();
    for case in expected["cases"].as_array().unwrap() {
        let resp = server.invoke(&key, "acme/digits", &json!({ "pixels": case["pixels"] }).to_string());
        assert_eq!(resp.status(), 200);
        assert!(usage_meter(&resp, "nn_cpu_ms") > 0.0, "host inference is metered");
        let got: Value = resp.json().unwrap();
        assert_eq!(got["digit"], case["digit"]);
        let (got, want) = (got["probabilities"].as_array().unwrap(), case["probabilities"].as_array().unwrap());
        assert_eq!(got.len(), 10);
        for (g, w) in got.iter().zip(want) {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!((g - w).abs() <= 1e-4, "{g} vs onnxruntime's {w}");
        }
    }
    // The bill shows host inference time.
    let bill: Value = server.get("/v1/billing", Some(&key)).json().unwrap();
    let nn = bill["lines"].as_array().unwrap().iter().find(|l| l["meter"] == "nn_cpu_ms").unwrap().clone();
    assert!(nn["quantity"].as_str().unwrap().parse::<f64>().unwrap() > 0.0);
}

#[test]
fn digits_refuses_bad_pixels_naming_the_problem() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    server.push_digits(&key);
    server.deploy(&key, "digits");
    let mut pixels = vec![json!(0); 64];
    for (body, needle) in [
        (json!({ "pixels": vec![0; 63] }).to_string(), "64 numbers"),
        (json!({ "pixels": vec![0; 65] }).to_string(), "got 65"),
        (json!({ "pixels": "zeros" }).to_string(), "must be an array"),
        (json!({ "image": [] }).to_string(), "expected {\"pixels\""),
        ("not json".to_string(), "not JSON"),
        (
            {
                pixels[5] = json!(17);
                json!({ "pixels": pixels.clone() }).to_string()
            },
            "pixels[5] = 17 is outside 0..16",
        ),
        (
            {
                pixels[5] = json!("x");
                json!({ "pixels": pixels.clone() }).to_string()
            },
            "pixels[5] is not a number",
        ),
    ] {
        let msg = expect_error(server.invoke(&key, "acme/digits", &body), 400);
        assert!(msg.contains(needle), "`{needle}` not in `{msg}`");
    }
}

#[test]
fn models_are_per_tenant_and_granted_per_function() {
    let server = Server::start();
    let a = server.tenant("alpha", "free");
    let b = server.tenant("beta", "free");
    server.push_digits(&a);
    server.deploy(&a, "digits");

    // Beta deploys the same function (which asks for `digits`) but has no such model.
    server.deploy(&b, "digits");
    let body = json!({ "pixels": vec![0; 64] }).to_string();
    let msg = expect_error(server.invoke(&b, "beta/digits", &body), 404);
    assert!(msg.contains("no model named `digits`"), "{msg}");
    let listed: Value = server.get("/v1/models", Some(&b)).json().unwrap();
    assert_eq!(listed["models"], json!([]));
    expect_error(server.get("/v1/models/digits", Some(&b)), 404);
    expect_error(server.delete("/v1/models/digits", &b), 404);

    // Alpha's function without the grant gets the same answer as for an unknown model.
    assert_eq!(server.upload(&a, "name = \"nogrant\"\n", component("digits")).status(), 201);
    let msg = expect_error(server.invoke(&a, "alpha/nogrant", &body), 404);
    assert!(msg.contains("no model named `digits`"), "{msg}");
    // Granted: works.
    assert_eq!(server.invoke(&a, "alpha/digits", &body).status(), 200);

    // A probe granted nothing: the same not-found for a real and an unknown name.
    server.deploy(&a, "hostile");
    let real = server.invoke(&a, "alpha/hostile/nn/digits", "").text().unwrap();
    let unknown = server.invoke(&a, "alpha/hostile/nn/other", "").text().unwrap();
    assert!(real.starts_with("error ErrorCode::NotFound"), "{real}");
    assert_eq!(real.replace("digits", "X"), unknown.replace("someone-elses-model", "X"));
}

#[test]
fn wasi_nn_misuse_is_an_error_value_not_a_crash() {
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    server.push_digits(&key);
    let manifest = "name = \"hostile\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"5s\"\n[capabilities]\nmodels = [\"digits\"]\nnn_load_bytes = true\n";
    assert_eq!(server.upload(&key, manifest, component("hostile")).status(), 201);
    for (probe, expected) in [
        ("digits", "ok: loaded"),
        ("garbage", "error ErrorCode::InvalidEncoding: not an ONNX model"),
        ("gpu", "error ErrorCode::Security: this function is not granted the GPU"),
        ("huge", "error ErrorCode::InvalidArgument: input `input`: tensor of dimensions [1073741824, 4]"),
        ("wrong-shape", "error ErrorCode::InvalidArgument: input `input` must have shape [-1, 64]"),
        ("wrong-type", "error ErrorCode::InvalidArgument: input `input` must be FP32, got INT64"),
        ("wrong-name", "error ErrorCode::InvalidArgument: missing input `input`"),
        ("batch", "ok: [3, 10]"),
    ] {
        let resp = server.invoke(&key, &format!("acme/hostile/nn/{probe}"), "");
        assert_eq!(resp.status(), 200, "{probe}");
        let text = resp.text().unwrap();
        assert!(text.starts_with(expected), "{probe}: `{text}` does not start with `{expected}`");
    }
    assert_eq!(server.invoke(&key, "acme/hostile/ok", "").status(), 200);
    // Without `nn_load_bytes` raw bytes are refused before they are read.
    let manifest = "name = \"plain\"\n[limits]\nmemory = \"16MiB\"\n[capabilities]\nmodels = [\"digits\"]\n";
    assert_eq!(server.upload(&key, manifest, component("hostile")).status(), 201);
    let text = server.invoke(&key, "acme/plain/nn/garbage", "").text().unwrap();
    assert!(
        text.starts_with("error ErrorCode::Security: loading a graph from raw bytes needs capabilities.nn_load_bytes"),
        "{text}"
    );
}

#[test]
fn bad_model_uploads_are_refused_and_change_nothing() {
    let server = Server::start_with_config(Some("[plans.free]\nmax_model_bytes = \"8KiB\"\n"));
    let key = server.tenant("acme", "free");
    let standard = server.tenant("big", "standard");
    let msg = expect_error(server.push_model(&key, "name = \"m\"\n", b"garbage, not protobuf".to_vec()), 400);
    assert!(msg.contains("not an ONNX model"), "{msg}");
    let msg = expect_error(server.push_model(&key, "name = \"m\"\nflavour = 1\n", digits_model()), 400);
    assert!(msg.contains("flavour"), "{msg}");
    let msg = expect_error(server.push_model(&key, "name = \"M M\"\n", digits_model()), 400);
    assert!(msg.contains("must match"), "{msg}");
    let msg = expect_error(server.push_model(&key, "name = \"m\"\nengine = \"magic\"\n", digits_model()), 400);
    assert!(msg.contains("no engine `magic`"), "{msg}");
    // digits.onnx is about 10 KB: over this free plan's 8 KiB.
    let msg = expect_error(server.push_model(&key, "name = \"m\"\n", digits_model()), 413);
    assert!(msg.contains("limit"), "{msg}");
    let listed: Value = server.get("/v1/models", Some(&key)).json().unwrap();
    assert_eq!(listed["models"], json!([]));
    // The same bytes are fine on a bigger plan; versions count up; delete removes them all.
    server.push_digits(&standard);
    assert_eq!(server.push_digits(&standard)["version"], 2);
    let got: Value = server.get("/v1/models/digits", Some(&standard)).json().unwrap();
    assert_eq!(got["latest_version"], 2);
    assert_eq!(got["outputs"][0]["shape"], json!([-1, 10]));
    assert_eq!(server.delete("/v1/models/digits", &standard).status(), 200);
    expect_error(server.get("/v1/models/digits", Some(&standard)), 404);
}

#[test]
fn concurrent_calls_share_one_loaded_graph() {
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    server.push_digits(&key);
    server.deploy(&key, "digits");
    let expected = digits_expected();
    let cases: Vec<Value> = expected["cases"].as_array().unwrap().clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (url, key, cases) = (format!("{}/fn/acme/digits", server.url), key.clone(), cases.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                for i in 0..6 {
                    let case = &cases[(t + i) % cases.len()];
                    let resp = client
                        .post(&url)
                        .bearer_auth(&key)
                        .body(json!({ "pixels": case["pixels"] }).to_string())
                        .send()
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                    let got: Value = resp.json().unwrap();
                    assert_eq!(got["digit"], case["digit"]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let metrics = server.get("/metrics", Some(ADMIN_KEY)).text().unwrap();
    assert!(metrics.contains("infercell_graph_cache_misses_total 1\n"), "the graph was loaded once: {metrics}");
    assert!(metrics.contains("infercell_graph_cache_graphs 1\n"));
}

#[test]
fn cli_pushes_and_lists_models() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    let out = server.cli(&key, &["model", "push", "digits", "samples/digits/digits.onnx"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("pushed model digits@1") && text.contains("input FP32 [-1, 64]"), "{text}");
    let out = server.cli(&key, &["model", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["models"][0]["name"], "digits");
    let out = server.cli(&key, &["deploy", "samples/digits"]);
    assert!(out.status.success());
    let out = server.cli(&key, &["invoke", "acme/digits", "--data", &json!({ "pixels": vec![0; 64] }).to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["probabilities"].as_array().unwrap().len(), 10);
    let out = server.cli(&key, &["model", "push", "bad", "Cargo.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an ONNX model"));
}

/// Pushes digits as model `digits` on `engine`, into a fresh tenant; returns its key.
fn tenant_with_digits_on(server: &Server, tenant: &str, engine: &str) -> String {
    let key = server.tenant(tenant, "free");
    let resp = server.push_model(&key, &format!("name = \"digits\"\nengine = \"{engine}\"\n"), digits_model());
    assert_eq!(resp.status(), 201, "pushing digits on {engine}: {}", resp.text().unwrap());
    let got: Value = server.get("/v1/models/digits", Some(&key)).json().unwrap();
    assert_eq!(got["versions"][0]["engine"], engine);
    key
}

#[test]
fn both_engines_give_onnxruntimes_answers() {
    if !onnxruntime_present() {
        return;
    }
    let server = Server::start();
    let on_ort = tenant_with_digits_on(&server, "onnx", "onnxruntime");
    let on_tract = tenant_with_digits_on(&server, "tract", "tract");
    server.deploy(&on_ort, "digits");
    server.deploy(&on_tract, "digits");

    let expected = digits_expected();
    for case in expected["cases"].as_array().unwrap() {
        let body = json!({ "pixels": case["pixels"] }).to_string();
        let mut answers = Vec::new();
        for (key, function) in [(&on_ort, "onnx/digits"), (&on_tract, "tract/digits")] {
            let resp = server.invoke(key, function, &body);
            assert_eq!(resp.status(), 200, "{function}");
            let got: Value = resp.json().unwrap();
            assert_eq!(got["digit"], case["digit"], "{function}");
            let probabilities: Vec<f64> =
                got["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
            assert_eq!(probabilities.len(), 10);
            for (g, w) in probabilities.iter().zip(case["probabilities"].as_array().unwrap()) {
                let w = w.as_f64().unwrap();
                assert!((g - w).abs() <= 1e-4, "{function}: {g} vs onnxruntime's {w}");
            }
            answers.push(probabilities);
        }
        for (o, t) in answers[0].iter().zip(&answers[1]) {
            assert!((o - t).abs() <= 1e-5, "onnxruntime {o} vs tract {t}");
        }
    }
}

#[test]
fn onnxruntime_refuses_misuse_as_tract_does() {
    if !onnxruntime_present() {
        return;
    }
    let server = Server::start();
    let on_ort = tenant_with_digits_on(&server, "onnx", "onnxruntime");
    let on_tract = tenant_with_digits_on(&server, "tract", "tract");
    let manifest =
        "name = \"hostile\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"5s\"\n[capabilities]\nmodels = [\"digits\"]\n";
    for key in [&on_ort, &on_tract] {
        assert_eq!(server.upload(key, manifest, component("hostile")).status(), 201);
    }
    for (probe, expected) in [
        ("digits", "ok: loaded"),
        ("wrong-shape", "error ErrorCode::InvalidArgument: input `input` must have shape [-1, 64]"),
        ("wrong-type", "error ErrorCode::InvalidArgument: input `input` must be FP32, got INT64"),
        ("wrong-name", "error ErrorCode::InvalidArgument: missing input `input`"),
        ("batch", "ok: [3, 10]"),
    ] {
        let ort = server.invoke(&on_ort, &format!("onnx/hostile/nn/{probe}"), "").text().unwrap();
        let tract = server.invoke(&on_tract, &format!("tract/hostile/nn/{probe}"), "").text().unwrap();
        assert!(ort.starts_with(expected), "{probe}: `{ort}` does not start with `{expected}`");
        assert_eq!(ort, tract, "{probe}: the engines disagree");
    }
}

/// Pushes open_nsfw as model `open-nsfw` on `engine` and deploys moderate-image, into a fresh
/// tenant on the standard plan (the model is larger than the free plan allows); returns its key.
fn tenant_with_moderate_image(server: &Server, dir: &std::path::Path, tenant: &str, engine: &str) -> String {
    let key = server.tenant(tenant, "standard");
    let onnx = std::fs::read(dir.join("open-nsfw.onnx")).unwrap();
    let resp = server.push_model(&key, &format!("name = \"open-nsfw\"\nengine = \"{engine}\"\n"), onnx);
    assert_eq!(resp.status(), 201, "pushing open-nsfw on {engine}: {}", resp.text().unwrap());
    // A ResNet-50 in a debug build on a loaded machine: the call is not about time.
    let manifest = std::fs::read_to_string(function_dir("moderate-image").join("function.toml")).unwrap();
    let manifest = manifest.replace("timeout = \"10s\"", "timeout = \"30s\"");
    let resp = server.upload(&key, &manifest, component("moderate-image"));
    assert_eq!(resp.status(), 201, "deploying moderate-image: {}", resp.text().unwrap());
    key
}

#[test]
fn moderate_image_calls_a_landscape_safe_and_refuses_garbage() {
    let Some(dir) = moderate_image_dir() else { return };
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let server = Server::start();
    let mut engines = vec!["tract"];
    if onnxruntime_present() {
        engines.push("onnxruntime");
    }
    let mut answers = Vec::new();
    for engine in engines {
        let tenant = engine.replace("onnxruntime", "onnx");
        let key = tenant_with_moderate_image(&server, &dir, &tenant, engine);
        let function = format!("{tenant}/moderate-image");
        for case in expected["cases"].as_array().unwrap() {
            let image = std::fs::read(dir.join(case["image"].as_str().unwrap())).unwrap();
            let resp = server.post(&format!("/fn/{function}"), Some(&key), image);
            assert_eq!(resp.status(), 200, "{function} {}", case["image"]);
            assert!(usage_meter(&resp, "nn_cpu_ms") > 0.0, "host inference is metered");
            let got: Value = resp.json().unwrap();
            let (sfw, nsfw) =
                (got["probabilities"]["sfw"].as_f64().unwrap(), got["probabilities"]["nsfw"].as_f64().unwrap());
            assert!((sfw + nsfw - 1.0).abs() < 1e-4, "{got}");
            assert!(sfw > 0.9, "{engine}: a landscape photo is safe: {got}");
            // The guest's decoder and resize are not PIL's, so compare with the reference loosely.
            assert!((sfw - case["sfw"].as_f64().unwrap()).abs() < 0.02, "{engine}: {got} vs {case}");
            answers.push(sfw);
        }
        for (body, needle) in [(&b"definitely not an image"[..], "not a JPEG or PNG image"), (b"", "expected a JPEG")] {
            let msg = expect_error(server.post(&format!("/fn/{function}"), Some(&key), body.to_vec()), 400);
            assert!(msg.contains(needle), "`{needle}` not in `{msg}`");
        }
    }
    // Both engines see the same tensor from the same guest: they agree closely.
    if answers.len() == 4 {
        assert!((answers[0] - answers[2]).abs() < 1e-4, "tract {} vs onnxruntime {}", answers[0], answers[2]);
    }
}
