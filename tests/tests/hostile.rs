//! The hostile-guest suite: one tenant's code misbehaving in every way we know, against the
//! real binary. After each case another tenant is still answered correctly, the abuser's call
//! was admitted and billed (its request id is in its usage), and no instance is left running
//! (the active-instance gauge is back to 0). Upload-time refusals store nothing. Memory stays
//! flat over a thousand repetitions. Guests: `tests/guests/hostile` and `tests/guests/sockets`.
#![allow(clippy::unwrap_used)]

use infercell_tests::*;

/// What a case must answer.
enum Expect {
    /// This status, with this in the error message.
    Error(u16, &'static str),
    /// 200, with a body starting with this.
    Ok(&'static str),
    /// 200, with a body starting with the first and never containing the second.
    OkWithout(&'static str, &'static str),
}

/// Call-time cases: a path of the hostile guest and what the platform must answer.
const CASES: &[(&str, &str, Expect)] = &[
    ("infinite loop", "hostile-loop/loop", Expect::Error(504, "timed out after 1s")),
    ("fuel exhaustion", "hostile-fuel/loop", Expect::Error(500, "fuel limit of 5000000")),
    ("stack overflow", "hostile/stack", Expect::Error(500, "function trapped")),
    ("memory bomb", "hostile/alloc", Expect::Error(500, "memory limit of 16 MiB")),
    ("guest panic", "hostile/trap", Expect::Error(500, "hostile guest panicked on purpose")),
    ("stdout flood", "hostile/stdout", Expect::Ok("")),
    ("stderr flood", "hostile/stderr", Expect::Ok("")),
    ("log flood", "hostile/log", Expect::Ok("wrote 10000 log lines")),
    ("environment snooping", "hostile/env", Expect::Ok("{\"vars\":[],\"args\":[]}")),
    ("reading /etc/passwd", "hostile/fs", Expect::Ok("denied")),
    ("`..` escapes from /files", "hostile-files/files-escape", Expect::OkWithout("[[\"read", "\"ok:")),
    ("an ungranted file", "hostile-files/file?name=secret.txt", Expect::Ok("denied")),
    ("reading the Authorization header", "hostile/headers", Expect::Ok("[")),
    ("a response body past the limit", "hostile-big/big-body", Expect::Error(500, "over the 16777216-byte limit")),
    ("thousands of headers", "hostile/many-headers", Expect::Error(500, "10001 headers, more than the 100")),
    ("an invalid header name", "hostile/bad-header", Expect::Error(500, "invalid header name")),
    ("an invalid status code", "hostile/status/1000", Expect::Error(500, "invalid HTTP status 1000")),
    ("a status below 100", "hostile/status/42", Expect::Error(500, "invalid HTTP status 42")),
    ("a 4 GiB tensor claim", "hostile/nn/huge", Expect::Ok("error ErrorCode::InvalidArgument")),
    ("another tenant's model", "hostile/nn/other", Expect::Ok("error ErrorCode::NotFound")),
    ("malformed ONNX", "hostile/nn/garbage", Expect::Ok("error ErrorCode::InvalidEncoding")),
    ("raw model bytes without nn_load_bytes", "hostile-files/nn/garbage", Expect::Ok("error ErrorCode::Security")),
    ("the GPU without a grant", "hostile/nn/gpu", Expect::Ok("error ErrorCode::Security")),
    ("a wrong tensor shape", "hostile/nn/wrong-shape", Expect::Ok("error ErrorCode::InvalidArgument")),
    ("a wrong tensor type", "hostile/nn/wrong-type", Expect::Ok("error ErrorCode::InvalidArgument")),
    ("a wrong input name", "hostile/nn/wrong-name", Expect::Ok("error ErrorCode::InvalidArgument")),
    ("a dropped resource", "hostile/nn/dropped", Expect::Error(500, "function trapped")),
    ("exhausting the resource table", "hostile/nn/table", Expect::Error(500, "more than 10000 wasi:nn tensors")),
    ("an error the guest reports", "hostile/bad-request", Expect::Error(400, "bad on purpose")),
];

// Only the infinite loop is about time (`hostile-loop`, 1 s). Every other case gets a timeout
// that no machine, however slow or loaded, reaches in a debug build: the verdict is the
// outcome, never a race against the clock.
const HOSTILE: &str = "name = \"hostile\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"30s\"\n[capabilities]\nmodels = [\"digits\", \"someone-elses-model\"]\nnn_load_bytes = true\n";
const HOSTILE_LOOP: &str = "name = \"hostile-loop\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"1s\"\n";
const HOSTILE_FUEL: &str = "name = \"hostile-fuel\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"30s\"\nfuel = 5000000\n";
const HOSTILE_FILES: &str =
    "name = \"hostile-files\"\n[limits]\nmemory = \"16MiB\"\n[capabilities]\nfiles = [\"labels.txt\"]\n";
const HOSTILE_BIG: &str = "name = \"hostile-big\"\n[limits]\nmemory = \"128MiB\"\ntimeout = \"30s\"\n";

/// A server with the abuser (`evil`, hostile guest, digits model) and its neighbour (`good`,
/// echo, and a model the abuser names).
fn setup() -> (Server, String, String) {
    let server = Server::start();
    let evil = server.tenant("evil", "standard");
    let good = server.tenant("good", "standard");
    server.push_digits(&evil);
    assert_eq!(server.upload(&evil, HOSTILE, component("hostile")).status(), 201);
    assert_eq!(server.upload(&evil, HOSTILE_LOOP, component("hostile")).status(), 201);
    assert_eq!(server.upload(&evil, HOSTILE_FUEL, component("hostile")).status(), 201);
    assert_eq!(server.upload(&evil, HOSTILE_BIG, component("hostile")).status(), 201);
    assert_eq!(server.upload(&evil, HOSTILE_FILES, component("hostile")).status(), 201);
    let fetch = "name = \"fetch\"\n[limits]\nmemory = \"16MiB\"\n[capabilities]\nallowed_hosts = [\"127.0.0.1:9\"]\n";
    assert_eq!(server.upload(&evil, fetch, component("fetch")).status(), 201);
    for (name, body) in [("labels.txt", "cat\ndog\n"), ("secret.txt", "not granted")] {
        let url = format!("{}/v1/files/{name}", server.url);
        assert_eq!(server.http.put(url).bearer_auth(&evil).body(body).send().unwrap().status(), 201);
    }
    server.deploy(&good, "echo");
    let resp = server.push_model(&good, "name = \"someone-elses-model\"\n", digits_model());
    assert_eq!(resp.status(), 201);
    (server, evil, good)
}

/// A server with `config`, an abuser (`evil`, standard) and a neighbour (`good`, free, echo).
fn abuser_beside_a_neighbour(config: Option<&str>) -> (Server, String, String) {
    let server = Server::start_with_config(config);
    let evil = server.tenant("evil", "standard");
    let good = server.tenant("good", "free");
    server.deploy(&good, "echo");
    (server, evil, good)
}

fn neighbour_is_served(server: &Server, good: &str, case: &str) {
    let resp = server.invoke(good, "good/echo", "still fine");
    assert_eq!(resp.status(), 200, "after {case}");
    assert_eq!(resp.text().unwrap(), "still fine", "after {case}");
}

#[test]
fn every_hostile_guest_costs_only_its_own_call() {
    let (server, evil, good) = setup();
    assert!(CASES.len() >= 25, "the suite has {} call-time cases (and the outbound ones)", CASES.len());
    // The neighbour calls all along, concurrently with the abuse; every one of its calls must
    // succeed. It holds `quiet` during each call, so the abuser's checks can see the platform
    // between two of its calls.
    let done = std::sync::atomic::AtomicBool::new(false);
    let quiet = std::sync::Mutex::new(());
    std::thread::scope(|scope| {
        let neighbour = scope.spawn(|| {
            let mut served = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                {
                    let _call = quiet.lock().unwrap();
                    neighbour_is_served(&server, &good, "concurrent abuse");
                }
                served += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            served
        });
        abuse(&server, &evil, &good, &quiet);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(neighbour.join().expect("the neighbour's calls all succeeded") > 0);
    });
}

fn abuse(server: &Server, evil: &str, good: &str, quiet: &std::sync::Mutex<()>) {
    for (case, path, expect) in CASES {
        let resp = server.invoke(evil, &format!("evil/{path}"), "");
        let request_id = resp.headers()["infercell-request-id"].to_str().unwrap().to_string();
        assert!(resp.headers().contains_key("infercell-usage"), "{case}: the call is metered");
        match expect {
            Expect::Error(status, needle) => {
                let msg = expect_error(resp, *status);
                assert!(msg.contains(needle), "{case}: `{needle}` not in `{msg}`");
            }
            Expect::Ok(prefix) | Expect::OkWithout(prefix, _) => {
                assert_eq!(resp.status(), 200, "{case}");
                let body = resp.text().unwrap();
                assert!(body.starts_with(prefix), "{case}: `{body}` does not start with `{prefix}`");
                assert!(!body.contains(evil), "{case}: the caller's key reached the guest");
                if let Expect::OkWithout(_, forbidden) = expect {
                    assert!(!body.contains(forbidden), "{case}: `{forbidden}` in `{body}`");
                }
            }
        }
        neighbour_is_served(server, good, case);
        let usage: Value = server.get("/v1/usage?limit=1000", Some(evil)).json().unwrap();
        let billed = usage["records"].as_array().unwrap().iter().any(|r| r["request_id"] == request_id.as_str());
        assert!(billed, "{case}: the abuser's call is billed");
        let _quiet = quiet.lock().unwrap();
        assert_eq!(server.metric("infercell_active_instances"), 0.0, "{case}: no instance left running");
    }
    // Outbound HTTP to a host it was not granted: a loopback listener records whether anything
    // connected (tests never aim at an address off this machine, even to be denied).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let resp = server.invoke(evil, &format!("evil/fetch?to=127.0.0.1:{port}/"), "");
    assert!(resp.headers().contains_key("infercell-usage"), "the denied fetch is metered");
    assert_eq!(resp.text().unwrap(), "error: ErrorCode::HttpRequestDenied");
    assert!(listener.accept().is_err(), "a host not granted is never connected to");
    neighbour_is_served(server, good, "outbound HTTP to a host not allowed");
    // SSRF: the tenant grants itself this machine's own addresses, by name and in literal forms
    // the OS reads as loopback. The platform refuses what they resolve to.
    let ssrf = format!(
        "name = \"ssrf\"\n[limits]\nmemory = \"16MiB\"\n[capabilities]\nallowed_hosts = [\"localhost:{port}\", \"2130706433:{port}\", \"0x7f.1:{port}\", \"[::1]:{port}\", \"0.0.0.0:{port}\"]\n"
    );
    assert_eq!(server.upload(evil, &ssrf, component("fetch")).status(), 201);
    for form in ["localhost", "2130706433", "0x7f.1", "[::1]", "0.0.0.0"] {
        let resp = server.invoke(evil, &format!("evil/ssrf?to={form}:{port}/"), "");
        assert!(resp.headers().contains_key("infercell-usage"), "{form}: the refused fetch is metered");
        assert_eq!(resp.text().unwrap(), "error: ErrorCode::DestinationIpProhibited", "{form}");
        neighbour_is_served(server, good, "outbound HTTP to a private address");
    }
    assert!(listener.accept().is_err(), "a private address is never connected to, whatever the grant");
    // The host kept the evidence: each denial is audited and counted.
    let audit: Value = server.get("/v1/audit", Some(evil)).json().unwrap();
    let actions: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"deny:gpu"), "{actions:?}");
    assert!(actions.contains(&"deny:allowed_hosts"), "{actions:?}");
    assert!(actions.contains(&"deny:network"), "{actions:?}");
    assert!(actions.contains(&"deny:nn_load_bytes"), "{actions:?}");
}

#[test]
fn imports_and_manifests_that_ask_for_too_much_are_refused_at_upload() {
    let server = Server::start();
    let key = server.tenant("evil", "free");
    let cases: Vec<(&str, String, Vec<u8>, &str)> = vec![
        ("importing sockets", "name = \"net\"\n".into(), component("sockets"), "wasi:sockets"),
        (
            "64 GiB of memory on the free plan",
            "name = \"big\"\n[limits]\nmemory = \"64GiB\"\n".into(),
            component("hostile"),
            "memory",
        ),
        ("the GPU on the free plan", "name = \"g\"\n[capabilities]\ngpu = true\n".into(), component("hostile"), "gpu"),
        (
            "raw model bytes on the free plan",
            "name = \"b\"\n[capabilities]\nnn_load_bytes = true\n".into(),
            component("hostile"),
            "nn_load_bytes (loading wasi:nn graphs from raw bytes) is not allowed on the `free` plan",
        ),
        ("an unknown manifest key", "name = \"k\"\nroot = true\n".into(), component("hostile"), "root"),
        ("a path-like name", "name = \"../etc\"\n".into(), component("hostile"), "../etc"),
        ("a core module, not a component", "name = \"core\"\n".into(), b"\0asm\x01\0\0\0".to_vec(), "core"),
    ];
    for (case, manifest, bytes, needle) in cases {
        let msg = expect_error(server.upload(&key, &manifest, bytes), 400);
        assert!(msg.contains(needle), "{case}: `{needle}` not in `{msg}`");
    }
    let msg = expect_error(server.upload(&key, "name = \"net\"\n", component("sockets")), 400);
    assert!(msg.contains("allowed_hosts"), "the refusal names the grant: {msg}");
    let listed: Value = server.get("/v1/functions", Some(&key)).json().unwrap();
    assert_eq!(listed["functions"], json!([]), "nothing was stored");
}

/// A 157-byte model whose constant folding asks for 40 GB: test-loaded in a memory-limited
/// child process, refused, and the server never tries (it would abort).
#[test]
fn a_model_declaring_giant_shapes_is_refused_and_the_server_lives() {
    let (server, evil, good) = abuser_beside_a_neighbour(None);
    let giant = std::fs::read(repo_root().join("tests/fixtures/giant-constant.onnx")).unwrap();
    let msg = expect_error(server.push_model(&evil, "name = \"giant\"\nengine = \"tract\"\n", giant), 400);
    assert!(msg.contains("needs more than 2048 MiB of memory"), "{msg}");
    neighbour_is_served(&server, &good, "a giant model");
    let models: Value = server.get("/v1/models", Some(&evil)).json().unwrap();
    assert_eq!(models["models"], json!([]));
    assert!(server.rss_bytes() < 1 << 30, "the server never allocated the constant");
}

/// The bytes a compute's tensors would hold are checked before the engine makes them: a
/// model whose output is 4 MiB a row, fed 100,000 rows (400 GB), is refused with a clear
/// error, from a function (its memory limit) and on `/v2` (the plan's `model_memory`), and
/// the server never allocates them; one row is served.
#[test]
fn a_compute_past_the_call_memory_is_refused_before_the_engine_allocates() {
    let (server, evil, good) = abuser_beside_a_neighbour(Some("[plans.standard]\nmodel_memory = \"64MiB\"\n"));
    let resp = server.push_model(&evil, "name = \"wide\"\nengine = \"tract\"\n", infercell_tests::onnx::wide());
    assert_eq!(resp.status(), 201, "{}", resp.text().unwrap());
    let manifest = "name = \"wide\"\n[limits]\nmemory = \"32MiB\"\n[capabilities]\nmodels = [\"wide\"]\n";
    assert_eq!(server.upload(&evil, manifest, component("hostile")).status(), 201);
    let rows = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| 1.0f32.to_le_bytes()).collect() };
    let call = |n: usize| {
        let url = format!("{}/fn/evil/wide/raw?model=wide&input=x&shape={n},1", server.url);
        server.http.post(url).bearer_auth(&evil).body(rows(n)).send().unwrap()
    };
    let one = call(1);
    assert_eq!(one.status(), 200);
    assert_eq!(one.bytes().unwrap().len(), 4 << 20);
    let resp = call(100_000);
    assert_ne!(resp.status(), 200);
    let msg = resp.text().unwrap();
    assert!(msg.contains("needs more memory than the call may use") && msg.contains("bytes left to it"), "{msg}");
    neighbour_is_served(&server, &good, "a compute past the call's memory");
    let infer = |n: usize| {
        let body = json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [n, 1], "data": vec![1.0; n] }] });
        server.post("/v2/models/wide/infer", Some(&evil), body.to_string())
    };
    let msg = expect_error(infer(100_000), 413);
    assert!(msg.contains("needs more memory than the call may use") && msg.contains("model_memory"), "{msg}");
    assert_eq!(infer(1).status(), 200);
    assert!(server.rss_bytes() < 2 << 30, "the server never allocated the 400 GB");
    neighbour_is_served(&server, &good, "a /v2 compute past the plan's model_memory");
    // ONNX Runtime allocates inside its session: its outputs are held to the same bytes once
    // made (32 rows: 128 MiB over 64 MiB), and the call gets none of them.
    if onnxruntime_present() {
        let manifest = "name = \"wide-ort\"\nengine = \"onnxruntime\"\n";
        assert_eq!(server.push_model(&evil, manifest, infercell_tests::onnx::wide()).status(), 201);
        let body = |n: usize| json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [n, 1], "data": vec![1.0; n] }] });
        let msg = expect_error(server.post("/v2/models/wide-ort/infer", Some(&evil), body(32).to_string()), 413);
        assert!(msg.contains("the outputs take 134217728 bytes") && msg.contains("model_memory"), "{msg}");
        assert_eq!(server.post("/v2/models/wide-ort/infer", Some(&evil), body(1).to_string()).status(), 200);
    }
}

/// A model whose tensor's shape comes from an input's values: tract makes a plan per value
/// and folds the tensor while it builds it, so each new plan is built in the memory-limited
/// probe first. A 100,000 x 100,000 shape (40 GB) is refused with a clear error before the
/// server builds anything, the refusal is remembered, and small shapes are served.
#[test]
fn a_shape_from_input_values_that_would_fold_a_giant_tensor_is_refused() {
    let (server, evil, good) = abuser_beside_a_neighbour(None);
    let model = infercell_tests::onnx::constant_of_input_shape();
    let resp = server.push_model(&evil, "name = \"zeros\"\nengine = \"tract\"\n", model);
    assert_eq!(resp.status(), 201, "{}", resp.text().unwrap());
    let infer = |rows: i64, cols: i64| {
        let body = json!({ "inputs": [{ "name": "shape", "datatype": "INT64", "shape": [2], "data": [rows, cols] }] });
        server.post("/v2/models/zeros/infer", Some(&evil), body.to_string())
    };
    let small: Value = infer(3, 4).json().unwrap();
    assert_eq!(small["outputs"][0]["shape"], json!([3, 4]), "{small}");
    for _ in 0..2 {
        let msg = expect_error(infer(100_000, 100_000), 413);
        assert!(msg.contains("building this model's plan for these inputs needs more than"), "{msg}");
        neighbour_is_served(&server, &good, "a shape from input values");
    }
    assert!(server.rss_bytes() < 1 << 30, "the server never folded the 40 GB tensor");
    assert_eq!(infer(2, 2).status(), 200);
}

#[test]
fn memory_stays_flat_over_a_thousand_hostile_calls() {
    let (server, evil, good) = setup();
    let paths = ["hostile/trap", "hostile/nn/huge", "hostile/bad-header", "hostile/nn/dropped", "hostile/status/1000"];
    let round = |n: usize| {
        for i in 0..n {
            let path = paths[i % paths.len()];
            let status = server.invoke(&evil, &format!("evil/{path}"), "").status();
            assert!(status == 200 || status == 500, "{path}: {status}");
        }
    };
    // Warm up past the point where per-function log rings (1000 lines) and allocator arenas
    // have filled, so that what is measured next is growth per call.
    round(1200);
    let before = server.rss_bytes();
    round(1000);
    let after = server.rss_bytes();
    neighbour_is_served(&server, &good, "a thousand hostile calls");
    assert_eq!(server.metric("infercell_active_instances"), 0.0);
    let growth = after.saturating_sub(before);
    assert!(growth < 16 << 20, "RSS grew {} KiB over 1000 hostile calls ({before} -> {after})", growth >> 10);
}
