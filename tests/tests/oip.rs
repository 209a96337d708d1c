//! The Open Inference Protocol under `/v2` against the real binary: metadata, readiness,
//! JSON and binary tensors, Triton's extensions, every error a client can cause, tenancy and
//! billing. (The Python clients run against it in `tests/clients/`, from scripts/test.sh.)
#![allow(clippy::unwrap_used)]

use infercell_tests::*;

const HEADER_LENGTH: &str = "inference-header-content-length";

fn digits_input(case: &Value) -> Value {
    let pixels: Vec<f64> = case["pixels"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() / 16.0).collect();
    json!({ "name": "input", "datatype": "FP32", "shape": [1, 64], "data": pixels })
}

fn assert_probabilities(got: &[f64], case: &Value) {
    let want = case["probabilities"].as_array().unwrap();
    assert_eq!(got.len(), 10);
    for (g, w) in got.iter().zip(want) {
        assert!((g - w.as_f64().unwrap()).abs() <= 1e-4, "{g} vs onnxruntime's {w}");
    }
}

fn post_json(server: &Server, path: &str, key: &str, body: &Value) -> Response {
    server.post(path, Some(key), body.to_string())
}

#[test]
fn health_and_server_metadata_answer_without_a_key() {
    let server = Server::start();
    for (path, field) in [("/v2/health/live", "live"), ("/v2/health/ready", "ready")] {
        let resp = server.get(path, None);
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.json::<Value>().unwrap()[field], true);
    }
    let meta: Value = server.get("/v2", None).json().unwrap();
    assert_eq!(meta["name"], "infercell");
    assert!(meta["extensions"].as_array().unwrap().contains(&json!("binary_tensor_data")));
}

#[test]
fn models_are_served_with_metadata_config_index_and_readiness() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    server.push_digits(&key);
    server.push_digits(&key); // version 2

    let meta: Value = server.get("/v2/models/digits", Some(&key)).json().unwrap();
    assert_eq!(meta["name"], "digits");
    assert_eq!(meta["versions"], json!(["1", "2"]));
    assert_eq!(meta["inputs"], json!([{ "name": "input", "datatype": "FP32", "shape": [-1, 64] }]));
    assert_eq!(meta["outputs"], json!([{ "name": "probabilities", "datatype": "FP32", "shape": [-1, 10] }]));
    assert_eq!(server.get("/v2/models/digits/versions/1", Some(&key)).status(), 200);

    let ready = server.get("/v2/models/digits/ready", Some(&key));
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().unwrap()["ready"], true);
    assert_eq!(server.get("/v2/models/digits/versions/2/ready", Some(&key)).status(), 200);

    let config: Value = server.get("/v2/models/digits/config", Some(&key)).json().unwrap();
    assert_eq!(config["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(config["input"][0]["dims"], json!([-1, 64]));

    let index: Value = server.post("/v2/repository/index", Some(&key), "{}").json().unwrap();
    assert_eq!(index.as_array().unwrap().len(), 2);
    assert_eq!(index[0], json!({ "name": "digits", "version": "1", "state": "READY", "reason": "" }));
}

#[test]
fn json_and_binary_inference_give_onnxruntimes_answers() {
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    server.push_digits(&key);
    let expected = digits_expected();
    let case = &expected["cases"][1];

    // JSON in, JSON out; id and parameters echoed.
    let body = json!({ "id": "req-7", "parameters": { "trace": "t1" }, "inputs": [digits_input(case)] });
    let resp = post_json(&server, "/v2/models/digits/infer", &key, &body);
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("infercell-usage"), "every call is metered");
    let got: Value = resp.json().unwrap();
    assert_eq!(got["model_name"], "digits");
    assert_eq!(got["model_version"], "1");
    assert_eq!(got["id"], "req-7");
    assert_eq!(got["parameters"]["trace"], "t1");
    assert_eq!(got["outputs"][0]["name"], "probabilities");
    assert_eq!(got["outputs"][0]["shape"], json!([1, 10]));
    let probabilities: Vec<f64> =
        got["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_probabilities(&probabilities, case);

    // Nested data is accepted too.
    let mut nested = digits_input(case);
    nested["data"] = json!([nested["data"].clone()]);
    let resp = post_json(&server, "/v2/models/digits/versions/1/infer", &key, &json!({ "inputs": [nested] }));
    assert_eq!(resp.status(), 200);

    // Binary in, binary out (Triton's extension), as tritonclient sends it.
    let pixels: Vec<u8> = case["pixels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| ((p.as_f64().unwrap() / 16.0) as f32).to_le_bytes())
        .collect();
    let header = json!({
        "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 64], "parameters": { "binary_data_size": 256 } }],
        "outputs": [{ "name": "probabilities", "parameters": { "binary_data": true } }],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(&pixels);
    let resp = server
        .http
        .post(format!("{}/v2/models/digits/infer", server.url))
        .bearer_auth(&key)
        .header(HEADER_LENGTH, header.len())
        .body(body)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let n: usize = resp.headers()[HEADER_LENGTH].to_str().unwrap().parse().unwrap();
    let bytes = resp.bytes().unwrap();
    let head: Value = serde_json::from_slice(&bytes[..n]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 40);
    let probabilities: Vec<f64> =
        bytes[n..].chunks_exact(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap()))).collect();
    assert_probabilities(&probabilities, case);

    // The bill names the model; statistics count the calls.
    let bill: Value = server.get("/v1/billing", Some(&key)).json().unwrap();
    let line = bill["lines"].as_array().unwrap().iter().find(|l| l["meter"] == "invocations").unwrap().clone();
    assert_eq!(line["function"], "digits");
    assert_eq!(line["quantity"], "3");
    let stats: Value = server.get("/v2/models/digits/stats", Some(&key)).json().unwrap();
    assert_eq!(stats["model_stats"][0]["inference_count"], 3);
    assert_eq!(stats["model_stats"][0]["inference_stats"]["success"]["count"], 3);
}

#[test]
fn every_client_mistake_is_a_400_naming_it_and_is_not_billed() {
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    server.push_digits(&key);
    let good = digits_input(&digits_expected()["cases"][0]);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut input = good.clone();
        f(&mut input);
        json!({ "inputs": [input] }).to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        ("{\"inputs\": [".to_string(), "malformed JSON"),
        (json!({ "inputs": [] }).to_string(), "missing input `input`"),
        (with(&|i| i["name"] = json!("pixels")), "unknown input `pixels`"),
        (
            with(&|i| {
                i["datatype"] = json!("INT64");
                i["data"] = json!(vec![0; 64]);
            }),
            "input `input` must be FP32, got INT64",
        ),
        (with(&|i| i["datatype"] = json!("INT64")), "0.0 is not a valid INT64 value"),
        (with(&|i| i["shape"] = json!([1, 63])), "needs 63 elements, the data has 64"),
        (with(&|i| i["data"].as_array_mut().unwrap().truncate(10)), "needs 64 elements, the data has 10"),
        (with(&|i| i["shape"] = json!([2, 32])), "input `input` must have shape [-1, 64]"),
        (with(&|i| i["datatype"] = json!("FLOAT")), "unknown datatype `FLOAT`"),
        (json!({ "inputs": [good.clone()], "outputs": [{ "name": "logits" }] }).to_string(), "unknown output `logits`"),
    ];
    for (body, needle) in cases {
        let msg = expect_error(server.post("/v2/models/digits/infer", Some(&key), body.clone()), 400);
        assert!(msg.contains(needle), "`{needle}` not in `{msg}` for {body}");
    }
    let bad_length = server
        .http
        .post(format!("{}/v2/models/digits/infer", server.url))
        .bearer_auth(&key)
        .header(HEADER_LENGTH, "12345")
        .body(format!("{} and then some", json!({ "inputs": [good] })))
        .send()
        .unwrap();
    assert!(expect_error(bad_length, 400).contains("Inference-Header-Content-Length"));
    let usage: Value = server.get("/v1/usage", Some(&key)).json().unwrap();
    assert_eq!(usage["records"].as_array().unwrap().len(), 0, "refused before running: not billed");
}

#[test]
fn unknown_models_versions_keys_and_tenants_are_refused() {
    let server = Server::start();
    let acme = server.tenant("acme", "free");
    let other = server.tenant("other", "free");
    server.push_digits(&acme);
    let body = json!({ "inputs": [digits_input(&digits_expected()["cases"][0])] }).to_string();

    assert!(expect_error(server.post("/v2/models/nope/infer", Some(&acme), body.clone()), 404).contains("nope"));
    assert!(
        expect_error(server.post("/v2/models/digits/versions/9/infer", Some(&acme), body.clone()), 404)
            .contains("no version `9`")
    );
    assert_eq!(server.get("/v2/models/nope", Some(&acme)).status(), 404);
    assert_eq!(server.get("/v2/models/nope/ready", Some(&acme)).status(), 404);
    assert_eq!(server.get("/v2/models/digits/versions/2", Some(&acme)).status(), 404);
    assert_eq!(server.get("/v2/models/nope/stats", Some(&acme)).status(), 404);
    // No key, a bad key.
    expect_error(server.post("/v2/models/digits/infer", None, body.clone()), 401);
    expect_error(server.post("/v2/models/digits/infer", Some("ick_nope_nope"), body.clone()), 401);
    expect_error(server.get("/v2/models/digits", None), 401);
    // Another tenant's model does not exist for this key, anywhere under /v2.
    assert_eq!(server.get("/v2/models/digits", Some(&other)).status(), 404);
    assert_eq!(server.get("/v2/models/digits/ready", Some(&other)).status(), 404);
    expect_error(server.post("/v2/models/digits/infer", Some(&other), body), 404);
    let index: Value = server.post("/v2/repository/index", Some(&other), "").json().unwrap();
    assert_eq!(index, json!([]));
}

/// ONNX node-test models pushed as models give their expected outputs through `/v2`, with
/// their integer parameters as INT64 tensors.
#[test]
fn onnx_node_test_models_answer_through_v2() {
    let dir = repo_root().join("tests/conformance/node-tests");
    let Ok(index) = std::fs::read_to_string(dir.join("index.json")) else {
        assert!(!strict(), "scripts/make-models.sh writes the node tests");
        return;
    };
    let index: Vec<Value> = serde_json::from_str(&index).unwrap();
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    // One case of each op that both engines run, plus the ones with integer parameter inputs.
    let mut seen = std::collections::HashSet::new();
    let mut checked = 0;
    for case in &index {
        let (name, op) = (case["name"].as_str().unwrap(), case["op"].as_str().unwrap());
        let spec: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(name).join("case.json")).unwrap()).unwrap();
        let has_int = spec["inputs"].as_array().unwrap().iter().any(|i| i["datatype"] != "FP32");
        if ["LpPool", "BatchNormalization", "MatMul"].contains(&op) || (!seen.insert(op) && !has_int) {
            continue;
        }
        let has_nan = spec.to_string().contains("\"nan\"") || spec.to_string().contains("inf\"");
        if has_nan || name == "test_slice_default_axes" {
            continue;
        }
        let model = name.trim_start_matches("test_").replace('_', "-").to_lowercase();
        let onnx = std::fs::read(dir.join(name).join("model.onnx")).unwrap();
        let resp = server.push_model(&key, &format!("name = \"{model}\"\n"), onnx);
        assert_eq!(resp.status(), 201, "{name}: {}", resp.text().unwrap());
        let resp = post_json(&server, &format!("/v2/models/{model}/infer"), &key, &json!({ "inputs": spec["inputs"] }));
        let status = resp.status();
        let got: Value = resp.json().unwrap();
        assert_eq!(status, 200, "{name}: {got}");
        for want in spec["outputs"].as_array().unwrap() {
            let out = got["outputs"].as_array().unwrap().iter().find(|o| o["name"] == want["name"]).unwrap();
            assert_eq!(out["datatype"], "FP32", "{name}");
            for (g, w) in out["data"].as_array().unwrap().iter().zip(want["data"].as_array().unwrap()) {
                let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
                assert!((g - w).abs() <= 1e-5 + 1e-3 * w.abs(), "{name}: {g} vs {w}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 60, "only {checked} node tests went through /v2");
}

/// A tensor function (predictor world) is served under `/v2` like a model: its manifest's
/// declared tensors are its metadata, requests are checked against them, and its calls are
/// billed as function calls, with guest time.
#[test]
fn predictor_functions_are_served_like_models() {
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    server.push_digits(&key);
    server.deploy(&key, "digits-predictor");

    let meta: Value = server.get("/v2/models/digits-predictor", Some(&key)).json().unwrap();
    assert_eq!(meta["platform"], "infercell_wasm");
    assert_eq!(meta["versions"], json!(["1"]));
    assert_eq!(meta["inputs"], json!([{ "name": "pixels", "datatype": "FP32", "shape": [-1, 64] }]));
    assert_eq!(meta["outputs"][1], json!({ "name": "digit", "datatype": "INT64", "shape": [-1] }));
    assert_eq!(server.get("/v2/models/digits-predictor/ready", Some(&key)).status(), 200);

    let expected = digits_expected();
    let cases = expected["cases"].as_array().unwrap();
    let pixels: Vec<Value> = cases[..3].iter().flat_map(|c| c["pixels"].as_array().unwrap().clone()).collect();
    let body = json!({ "inputs": [{ "name": "pixels", "datatype": "FP32", "shape": [3, 64], "data": pixels }] });
    let resp = post_json(&server, "/v2/models/digits-predictor/infer", &key, &body);
    assert_eq!(resp.status(), 200);
    let usage = resp.headers()["infercell-usage"].to_str().unwrap().to_string();
    assert!(usage.contains("nn_cpu_ms=") && !usage.contains("guest_ms=0,"), "{usage}");
    let got: Value = resp.json().unwrap();
    let digits = got["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "digit").unwrap();
    assert_eq!(digits["shape"], json!([3]));
    let want: Vec<Value> = cases[..3].iter().map(|c| c["digit"].clone()).collect();
    assert_eq!(digits["data"], json!(want));
    let probabilities = got["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "probabilities").unwrap();
    let first: Vec<f64> = probabilities["data"].as_array().unwrap()[..10].iter().map(|v| v.as_f64().unwrap()).collect();
    assert_probabilities(&first, &cases[0]);

    // The guest's own validation is a 400 naming the problem; the declared shape is checked first.
    let mut bad = vec![json!(0); 64];
    bad[3] = json!(17);
    let body = json!({ "inputs": [{ "name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": bad }] });
    let msg = expect_error(post_json(&server, "/v2/models/digits-predictor/infer", &key, &body), 400);
    assert!(msg.contains("pixels[0][3] = 17 is outside 0..16"), "{msg}");
    let body = json!({ "inputs": [{ "name": "pixels", "datatype": "FP32", "shape": [1, 8], "data": vec![0; 8] }] });
    let msg = expect_error(post_json(&server, "/v2/models/digits-predictor/infer", &key, &body), 400);
    assert!(msg.contains("must have shape [-1, 64]"), "{msg}");

    // /fn refuses it with a pointer to /v2; /v2 does not serve HTTP functions.
    let msg = expect_error(server.invoke(&key, "acme/digits-predictor", ""), 400);
    assert!(msg.contains("/v2/models/digits-predictor/infer"), "{msg}");
    server.deploy(&key, "echo");
    assert_eq!(server.get("/v2/models/echo", Some(&key)).status(), 404);

    // One name under /v2, one thing: a model and a tensor function cannot share it.
    let msg = expect_error(server.push_model(&key, "name = \"digits-predictor\"\n", digits_model()), 409);
    assert!(msg.contains("a tensor function named `digits-predictor` exists"), "{msg}");
    let manifest = std::fs::read_to_string(function_dir("digits-predictor").join("function.toml"))
        .unwrap()
        .replace("name = \"digits-predictor\"", "name = \"digits\"");
    let msg = expect_error(server.upload(&key, &manifest, component("digits-predictor")), 409);
    assert!(msg.contains("a model named `digits` exists"), "{msg}");
    server.deploy(&key, "digits"); // an HTTP function may share the model's name

    let bill: Value = server.get("/v1/billing", Some(&key)).json().unwrap();
    let guest = bill["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["function"] == "digits-predictor" && l["meter"] == "guest_ms")
        .unwrap()
        .clone();
    assert!(guest["quantity"].as_str().unwrap().parse::<f64>().unwrap() > 0.0);
    let stats: Value = server.get("/v2/models/digits-predictor/stats", Some(&key)).json().unwrap();
    assert_eq!(stats["model_stats"][0]["inference_count"], 1);
    assert_eq!(stats["model_stats"][0]["inference_stats"]["fail"]["count"], 1, "the guest's 400 counts as a failure");
}
