//! One call pipeline (`host/src/invocation/`): every call that ran is billed once, whatever it
//! answered and whoever went away; refusals are not billed; bills tell a model from a function.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;

use infercell_tests::onnx::matmul_chain as chain_model;
use infercell_tests::*;

fn records(server: &Server, key: &str) -> Vec<Value> {
    let usage: Value = server.get("/v1/usage?limit=1000", Some(key)).json().unwrap();
    usage["records"].as_array().unwrap().clone()
}

#[test]
fn a_function_answering_503_is_billed_once() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    server.deploy(&key, "hostile");
    let resp = server.invoke(&key, "acme/hostile/status/503", "");
    assert_eq!(resp.status(), 503, "the function's own status is passed through");
    assert!(resp.headers()["infercell-usage"].to_str().unwrap().contains("invocations=1"));
    let id = resp.headers()["infercell-request-id"].to_str().unwrap().to_string();
    let records = records(&server, &key);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["request_id"], id.as_str());
    assert_eq!(records[0]["status"], 503);
    assert_eq!(records[0]["outcome"], "ok");
    assert_eq!(server.metric(r#"infercell_invocations_total{tenant="acme",function="hostile",outcome="ok"}"#), 1.0);

    // An answer the host cannot send (status 1000) ran too: billed, and stored as `error`.
    assert_eq!(server.invoke(&key, "acme/hostile/status/1000", "").status(), 500);
    let both = self::records(&server, &key);
    assert_eq!(both.len(), 2);
    assert_eq!((both[1]["outcome"].as_str(), &both[1]["status"]), (Some("error"), &json!(500)));
    assert_eq!(server.metric(r#"infercell_invocations_total{tenant="acme",function="hostile",outcome="error"}"#), 1.0);
}

#[test]
fn a_model_and_a_function_of_one_name_are_separate_bill_lines() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    server.push_digits(&key);
    server.deploy(&key, "digits");
    let case = &digits_expected()["cases"][0];
    let resp = server.invoke(&key, "acme/digits", &json!({ "pixels": case["pixels"] }).to_string());
    assert_eq!(resp.status(), 200);
    let pixels: Vec<f64> = case["pixels"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() / 16.0).collect();
    let body = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 64], "data": pixels }] });
    assert_eq!(server.post("/v2/models/digits/infer", Some(&key), body.to_string()).status(), 200);

    let kinds: Vec<(String, String)> = records(&server, &key)
        .iter()
        .map(|r| (r["kind"].as_str().unwrap().into(), r["function"].as_str().unwrap().into()))
        .collect();
    assert_eq!(kinds, [("function".into(), "digits".into()), ("model".into(), "digits".into())]);

    let out = server.cli(&key, &["billing", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bill: Value = serde_json::from_slice(&out.stdout).unwrap();
    let invocations: Vec<(&str, &str, &str)> = bill["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["meter"] == "invocations")
        .map(|l| (l["kind"].as_str().unwrap(), l["function"].as_str().unwrap(), l["quantity"].as_str().unwrap()))
        .collect();
    assert_eq!(invocations, [("function", "digits", "1"), ("model", "digits", "1")], "{bill}");
    let summary: Vec<(&str, i64)> = bill["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["kind"].as_str().unwrap(), f["invocations"].as_i64().unwrap()))
        .collect();
    assert_eq!(summary, [("function", 1), ("model", 1)]);

    // CSV: the five columns as before, `kind` added last.
    let csv = server.get("/v1/billing?format=csv", Some(&key)).text().unwrap();
    let mut rows = csv.lines();
    assert_eq!(rows.next(), Some("function,meter,quantity,unit_price,amount,kind"));
    let invocation_rows: Vec<&str> = rows.filter(|r| r.starts_with("digits,invocations,")).collect();
    assert_eq!(invocation_rows.len(), 2, "{csv}");
    assert!(invocation_rows[0].ends_with(",function") && invocation_rows[1].ends_with(",model"), "{csv}");
    let table = String::from_utf8_lossy(&server.cli(&key, &["billing"]).stdout).to_string();
    assert!(table.contains("KIND") && table.contains("model    digits"), "{table}");
}

/// 48 products of 1024 x 1024 matrices: about 100 GFLOP in a few hundred bytes.
fn slow_model() -> Vec<u8> {
    chain_model(48)
}

/// The deadline stops the engine: the compute ends at the next node after the cut, the call
/// answers 504, and its record holds the engine time it really used. The same model run to the
/// end takes many times longer.
#[test]
fn a_call_cut_by_its_timeout_while_the_engine_computes_is_billed_its_engine_time() {
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    let resp = server.push_model(&key, "name = \"slow\"\nengine = \"tract\"\n", slow_model());
    assert_eq!(resp.status(), 201, "{}", resp.text().unwrap());
    let manifest =
        "name = \"cut\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"500ms\"\n[capabilities]\nmodels = [\"slow\"]\n";
    assert_eq!(server.upload(&key, manifest, component("hostile")).status(), 201);
    let manifest =
        "name = \"whole\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"30s\"\n[capabilities]\nmodels = [\"slow\"]\n";
    assert_eq!(server.upload(&key, manifest, component("hostile")).status(), 201);
    assert_eq!(server.invoke(&key, "acme/whole/nn/slow", "").text().unwrap(), "ok: computed");
    let whole: f64 = records(&server, &key)[0]["meters"]["nn_cpu_ms"].as_str().unwrap().parse().unwrap();

    let resp = server.invoke(&key, "acme/cut/nn/slow", "");
    let usage = resp.headers()["infercell-usage"].to_str().unwrap().to_string();
    let msg = expect_error(resp, 504);
    assert!(msg.contains("timed out after 500ms"), "{msg}");
    let records = records(&server, &key);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[1]["outcome"], "timeout");
    let nn_cpu_ms: f64 = records[1]["meters"]["nn_cpu_ms"].as_str().unwrap().parse().unwrap();
    assert!(nn_cpu_ms > 0.0, "the engine time before the cut is billed ({usage})");
    assert!(nn_cpu_ms < whole / 2.0, "the engine stopped at the cut: {nn_cpu_ms} ms of a {whole} ms compute");
    assert!(usage.contains(&format!("nn_cpu_ms={}", records[1]["meters"]["nn_cpu_ms"].as_str().unwrap())), "{usage}");
}

/// Deploys `spin` (a loop cut at 2 s) for `acme`, calls it over a raw socket and hangs up once
/// the call is running.
fn start_a_call_and_hang_up(server: &Server, key: &str) {
    let manifest = "name = \"spin\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"2s\"\n";
    assert_eq!(server.upload(key, manifest, component("hostile")).status(), 201);
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /fn/acme/spin/loop HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    wait_until("the call is running", || server.metric("infercell_active_instances") >= 1.0);
    stream.shutdown(std::net::Shutdown::Both).unwrap();
}

/// A client that hangs up mid-call does not cancel it: the call runs to its end and its record
/// is committed.
#[test]
fn a_client_that_disconnects_mid_call_is_still_billed() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    start_a_call_and_hang_up(&server, &key);
    wait_until("the call's record is committed", || records(&server, &key).len() == 1);
    let records = records(&server, &key);
    assert_eq!(records[0]["outcome"], "timeout");
    assert_eq!(records[0]["status"], 504);
    assert_eq!(server.metric("infercell_active_instances"), 0.0);
    let out = server.cli(&key, &["usage", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["records"].as_array().unwrap().len(), 1, "infercell usage counts it");
}

/// A call whose client hung up runs on without a connection; a SIGTERM then waits for it, so
/// its record is committed before the server exits.
#[test]
fn shutdown_waits_for_calls_whose_clients_hung_up() {
    let mut server = Server::start();
    let key = server.tenant("acme", "free");
    start_a_call_and_hang_up(&server, &key);
    server.terminate();
    assert!(server.wait().success());
    server.restart();
    let records = records(&server, &key);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "timeout");
}

/// A `/v2` model call has a deadline too, the plan's `model_timeout`: past it the engine stops
/// at its next node, the call gets 504 and is billed the engine time it used, and the next
/// call is served.
#[test]
fn a_v2_model_call_past_the_plan_deadline_is_a_504_billed_its_time() {
    let server = Server::start_with_config(Some("[plans.standard]\nmodel_timeout = \"500ms\"\n"));
    let key = server.tenant("acme", "standard");
    let resp = server.push_model(&key, "name = \"slow\"\nengine = \"tract\"\n", slow_model());
    assert_eq!(resp.status(), 201, "{}", resp.text().unwrap());
    server.push_digits(&key);
    let body = json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0.001] }] });
    let resp = server.post("/v2/models/slow/infer", Some(&key), body.to_string());
    let msg = expect_error(resp, 504);
    assert!(msg.contains("model timed out after 500ms"), "{msg}");
    let records = records(&server, &key);
    let cut = records.iter().find(|r| r["function"] == "slow").expect("the cut call is billed");
    assert_eq!(cut["kind"], "model");
    assert_eq!(cut["outcome"], "timeout");
    assert_eq!(cut["status"], 504);
    let nn_cpu_ms: f64 = cut["meters"]["nn_cpu_ms"].as_str().unwrap().parse().unwrap();
    assert!(nn_cpu_ms > 0.0, "{cut}");
    let pixels = vec![0.0; 64];
    let body = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 64], "data": pixels }] });
    assert_eq!(server.post("/v2/models/digits/infer", Some(&key), body.to_string()).status(), 200);
}

/// ONNX Runtime is stopped by its terminate flag: a compute ten times the size of a measured
/// one, cut at 500 ms, bills less than half of what it would have taken.
#[test]
fn onnx_runtime_stops_at_the_deadline() {
    if !onnxruntime_present() {
        return;
    }
    let server = Server::start_with_config(Some("[plans.standard]\nmodel_timeout = \"500ms\"\n"));
    let key = server.tenant("acme", "standard");
    for (name, products) in [("tenth", 48), ("whole", 480)] {
        let manifest = format!("name = \"{name}\"\nengine = \"onnxruntime\"\n");
        let resp = server.push_model(&key, &manifest, chain_model(products));
        assert_eq!(resp.status(), 201, "{}", resp.text().unwrap());
    }
    let body = json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0.001] }] }).to_string();
    // The tenth may itself pass the deadline on a slow machine: its billed time still measures it.
    let _ = server.post("/v2/models/tenth/infer", Some(&key), body.clone());
    let resp = server.post("/v2/models/whole/infer", Some(&key), body);
    let msg = expect_error(resp, 504);
    assert!(msg.contains("model timed out"), "{msg}");
    let records = records(&server, &key);
    let ms = |name: &str| -> f64 {
        let r = records.iter().find(|r| r["function"] == name).expect("billed");
        r["meters"]["nn_cpu_ms"].as_str().unwrap().parse().unwrap()
    };
    let (tenth, whole) = (ms("tenth"), ms("whole"));
    assert!(whole > 0.0 && whole < 5.0 * tenth.max(500.0), "cut at {whole} ms; a tenth of the work took {tenth} ms");
}
