//! Releases, as a user meets them: a release holds new uploads back, `@N` and `@alias` pin,
//! a failing canary is rolled back on its own, route keys stick, rollback is one command,
//! mirrors report their agreement, and a restart keeps all of it.
//!
//! One function `svc` has three versions: v1 and v3 are the echo sample (200, the body back),
//! v2 is the hostile guest, which fails `/internal` with a 500.

#![allow(clippy::unwrap_used)]

use infercell_tests::{Server, component, expect_error, wait_until};
use serde_json::{Value, json};

const ECHO: &str = "name = \"svc\"\n[limits]\nmemory = \"64MiB\"\ntimeout = \"5s\"\n";
const FAILING: &str = "name = \"svc\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"5s\"\n";

fn send(
    server: &Server,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::blocking::Response {
    let mut req = reqwest::blocking::Client::new().request(method, format!("{}{path}", server.url)).bearer_auth(key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().unwrap()
}

fn ok(resp: reqwest::blocking::Response) -> Value {
    let status = resp.status();
    let text = resp.text().unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn status(server: &Server, key: &str) -> Value {
    ok(server.get("/v1/functions/svc/release", Some(key)))
}

/// Calls `/fn/acme/svc/internal`; returns (status, infercell-version).
fn call(server: &Server, key: &str, target: &str, route_key: Option<&str>) -> (u16, u32) {
    let mut req = reqwest::blocking::Client::new()
        .post(format!("{}/fn/acme/{target}/internal", server.url))
        .bearer_auth(key)
        .body("hi");
    if let Some(k) = route_key {
        req = req.header("infercell-route-key", k);
    }
    let resp = req.send().unwrap();
    let version = resp.headers()["infercell-version"].to_str().unwrap().parse().unwrap();
    (resp.status().as_u16(), version)
}

fn setup() -> (Server, String) {
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    for (manifest, guest) in [(ECHO, "echo"), (FAILING, "hostile"), (ECHO, "echo")] {
        assert_eq!(server.upload(&key, manifest, component(guest)).status(), 201);
    }
    (server, key)
}

#[test]
fn a_release_holds_uploads_back_pins_route_and_rolls_back() {
    let (mut server, key) = setup();
    // No release: the newest version serves, as before.
    assert_eq!(call(&server, &key, "svc", None), (200, 3));
    assert_eq!(status(&server, &key)["serving"], 3);
    assert_eq!(status(&server, &key)["stable"], Value::Null);

    // Released at v1, a new upload does not serve until it is released.
    let v = ok(send(&server, &key, reqwest::Method::PUT, "/v1/functions/svc/release", Some(json!({"version": 1}))));
    assert_eq!(v["stable"], 1);
    let uploaded: Value = server.upload(&key, ECHO, component("echo")).json().unwrap();
    assert_eq!((uploaded["version"].as_u64(), uploaded["serving"].as_bool()), (Some(4), Some(false)));
    for _ in 0..5 {
        assert_eq!(call(&server, &key, "svc", None), (200, 1));
    }

    // `@N` and `@alias` pin, whatever the release says.
    assert_eq!(call(&server, &key, "svc@2", None), (500, 2));
    ok(send(&server, &key, reqwest::Method::PUT, "/v1/functions/svc/aliases/beta", Some(json!({"version": 2}))));
    assert_eq!(call(&server, &key, "svc@beta", None), (500, 2));
    ok(send(&server, &key, reqwest::Method::PUT, "/v1/functions/svc/aliases/beta", Some(json!({"version": 3}))));
    assert_eq!(call(&server, &key, "svc@beta", None), (200, 3), "an alias moves in one command");
    let missing = server.invoke(&key, "acme/svc@gamma/internal", "");
    assert!(expect_error(missing, 404).contains("svc@gamma"));
    let bad = send(&server, &key, reqwest::Method::PUT, "/v1/functions/svc/aliases/2x", Some(json!({"version": 2})));
    assert!(expect_error(bad, 400).contains("start"), "aliases start with a letter");
    let nowhere = send(&server, &key, reqwest::Method::PUT, "/v1/functions/svc/aliases/x", Some(json!({"version": 9})));
    expect_error(nowhere, 404);

    // One command back: set v3, then rollback returns to v1.
    ok(send(&server, &key, reqwest::Method::PUT, "/v1/functions/svc/release", Some(json!({"version": 3}))));
    assert_eq!(call(&server, &key, "svc", None), (200, 3));
    let out = server.cli(&key, &["release", "rollback", "svc", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["stable"].as_u64(), v["previous"].as_u64()), (Some(1), Some(3)));
    assert_eq!(call(&server, &key, "svc", None), (200, 1));
    let v =
        ok(send(&server, &key, reqwest::Method::POST, "/v1/functions/svc/release/rollback", Some(json!({"to": 3}))));
    assert_eq!(v["stable"], 3);
    let events: Vec<&str> = v["history"].as_array().unwrap().iter().map(|h| h["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["set", "set", "rollback", "rollback"]);

    // What cannot be done is refused and changes nothing.
    let nowhere = send(&server, &key, reqwest::Method::PUT, "/v1/functions/svc/release", Some(json!({"version": 42})));
    assert!(expect_error(nowhere, 404).contains("no version 42"));
    let bad_step = send(
        &server,
        &key,
        reqwest::Method::POST,
        "/v1/functions/svc/release/canary",
        Some(json!({"version": 2, "percent": 10, "step": 25})),
    );
    assert!(expect_error(bad_step, 400).contains("never lands on 100%"));
    let no_canary = send(&server, &key, reqwest::Method::POST, "/v1/functions/svc/release/promote", None);
    assert!(expect_error(no_canary, 409).contains("no canary"));
    assert_eq!(status(&server, &key)["stable"], 3);

    // An invoker may call, not move a release.
    let (_, invoker) = server.key(&key, "invoker");
    let denied =
        send(&server, &invoker, reqwest::Method::PUT, "/v1/functions/svc/release", Some(json!({"version": 1})));
    expect_error(denied, 403);
    assert_eq!(status(&server, &key)["stable"], 3);

    // A restart keeps the release and the aliases.
    server.stop();
    server.restart();
    assert_eq!(call(&server, &key, "svc", None), (200, 3));
    assert_eq!(call(&server, &key, "svc@beta", None), (200, 3));
    assert_eq!(status(&server, &key)["previous"], 1);
}

#[test]
fn a_failing_canary_is_rolled_back_on_its_own() {
    let (mut server, key) = setup();
    ok(send(&server, &key, reqwest::Method::PUT, "/v1/functions/svc/release", Some(json!({"version": 1}))));

    // The same route key always gets the same version while a canary runs (v3, healthy).
    let body = json!({"version": 3, "percent": 50, "interval": "1h"});
    ok(send(&server, &key, reqwest::Method::POST, "/v1/functions/svc/release/canary", Some(body)));
    let keyed: Vec<(String, u32)> =
        (0..12).map(|i| format!("user-{i}")).map(|k| (k.clone(), call(&server, &key, "svc", Some(&k)).1)).collect();
    for (k, version) in &keyed {
        for _ in 0..3 {
            assert_eq!(call(&server, &key, "svc", Some(k)).1, *version, "{k}");
        }
    }
    assert!(keyed.iter().any(|(_, v)| *v == 1) && keyed.iter().any(|(_, v)| *v == 3), "{keyed:?}");
    let busy = send(
        &server,
        &key,
        reqwest::Method::POST,
        "/v1/functions/svc/release/canary",
        Some(json!({"version": 2, "percent": 5})),
    );
    assert!(expect_error(busy, 409).contains("canary at 50% already"));
    let stopped = server.cli(&key, &["release", "rollback", "svc", "--json"]);
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    assert_eq!(status(&server, &key)["stable"], 1, "stopping a canary keeps the stable version");

    let out = server.cli(
        &key,
        &["release", "canary", "svc", "2", "--percent", "50", "--interval", "1h", "--min-requests", "5", "--json"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["canary"]["state"], "progressing");

    // Every call of v2 fails: once it has 5 in the interval it is rolled back, within a tick.
    wait_until("the canary to be rolled back", || {
        call(&server, &key, "svc", None);
        status(&server, &key)["canary"]["state"] == "rolled_back"
    });
    let v = status(&server, &key);
    assert_eq!(v["stable"], 1);
    let last = v["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["event"].as_str(), last["from"].as_u64(), last["to"].as_u64()),
        (Some("rollback"), Some(2), Some(1))
    );
    assert!(last["reason"].as_str().unwrap().starts_with("error rate 1.000 over"), "{last}");
    assert_eq!(last["actor"], "system");
    for _ in 0..20 {
        assert_eq!(call(&server, &key, "svc", None), (200, 1), "every later call is the stable version's");
    }
    assert_eq!(
        server.metric(
            "infercell_release_rollbacks_total{tenant=\"acme\",kind=\"function\",name=\"svc\",cause=\"automatic\"}"
        ),
        1.0
    );
    let audit = ok(server.get("/v1/audit", Some(&key)));
    let rollbacks: Vec<&Value> =
        audit["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "release.rollback").collect();
    assert_eq!(rollbacks.len(), 2, "the one by hand and the automatic one: {rollbacks:?}");
    assert_ne!(rollbacks[0]["actor"], "system", "by hand: the key's id");
    assert_eq!(rollbacks[1]["actor"], "system");
    assert!(rollbacks[1]["detail"].as_str().unwrap().contains("error rate"), "{}", rollbacks[1]);

    // A rolled-back version may be released again, explicitly; the restart keeps its state.
    server.stop();
    server.restart();
    assert_eq!(status(&server, &key)["canary"]["state"], "rolled_back");
    ok(send(&server, &key, reqwest::Method::PUT, "/v1/functions/svc/release", Some(json!({"version": 2}))));
    assert_eq!(call(&server, &key, "svc", None), (500, 2));
}

#[test]
fn a_healthy_canary_steps_up_and_is_promoted_and_resumes_after_a_restart() {
    let (mut server, key) = setup();
    ok(send(&server, &key, reqwest::Method::PUT, "/v1/functions/svc/release", Some(json!({"version": 1}))));
    // Deployed as a canary: v4 (echo) at 20%, +40% every second once it has 2 calls.
    let dir = tempfile::tempdir().unwrap();
    let echo = infercell_tests::repo_root().join("samples/target/wasm32-wasip2/release/echo.wasm");
    std::fs::write(dir.path().join("function.toml"), format!("component = {:?}\n{ECHO}", echo.display().to_string()))
        .unwrap();
    let dir = dir.path().to_str().unwrap();
    let deployed =
        server.cli(&key, &["deploy", dir, "--canary", "20", "--step", "40", "--interval", "1s", "--min-requests", "2"]);
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    let text = String::from_utf8_lossy(&deployed.stdout);
    assert!(text.contains("canary: 20%"), "{text}");
    assert_eq!(status(&server, &key)["canary"]["version"], 4);

    // A restart mid-canary resumes it at its percentage.
    server.stop();
    server.restart();
    assert_eq!(status(&server, &key)["canary"]["state"], "progressing");
    wait_until("the canary to be promoted", || {
        for _ in 0..10 {
            call(&server, &key, "svc", None);
        }
        status(&server, &key)["canary"]["state"] == "promoted"
    });
    let v = status(&server, &key);
    assert_eq!((v["stable"].as_u64(), v["previous"].as_u64()), (Some(4), Some(1)));
    let events: Vec<&str> = v["history"].as_array().unwrap().iter().map(|h| h["event"].as_str().unwrap()).collect();
    assert_eq!(events.first(), Some(&"set"));
    assert_eq!(events.last(), Some(&"promote"));
    assert!(events.contains(&"canary"), "{events:?}");
    assert_eq!(call(&server, &key, "svc", None), (200, 4));
    assert!(
        server.metric(
            "infercell_release_promotions_total{tenant=\"acme\",kind=\"function\",name=\"svc\",cause=\"automatic\"}"
        ) >= 1.0
    );
}

#[test]
fn a_mirror_copies_calls_and_reports_agreement() {
    let (server, key) = setup();
    ok(send(&server, &key, reqwest::Method::PUT, "/v1/functions/svc/release", Some(json!({"version": 1}))));
    // v3 is the same echo: every copy agrees.
    let out = server.cli(&key, &["release", "mirror", "svc", "3", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // One copy at a time: a copy that finds no free shadow slot is dropped, by design.
    for i in 1..=10 {
        assert_eq!(call(&server, &key, "svc", None), (200, 1), "the caller gets the stable answer");
        wait_until("the mirrored call", || status(&server, &key)["mirror"]["calls"] == i);
    }
    assert_eq!(status(&server, &key)["mirror"]["agreement"], 1.0);
    // v2 fails every copy: the caller never sees it, the status does.
    ok(send(
        &server,
        &key,
        reqwest::Method::PUT,
        "/v1/functions/svc/release/mirror",
        Some(json!({"version": 2, "percent": 50})),
    ));
    for i in 1..=10 {
        assert_eq!(call(&server, &key, "svc", None), (200, 1));
        wait_until("the mirrored call", || status(&server, &key)["mirror"]["calls"] == i / 2);
    }
    let mirror = status(&server, &key)["mirror"].clone();
    assert_eq!((mirror["agreement"].as_f64(), mirror["error_rate"].as_f64()), (Some(0.0), Some(1.0)), "{mirror}");
    // Shadow calls are billed as such.
    let bill = ok(server.get("/v1/billing?format=json", Some(&key)));
    let kinds: Vec<&str> = bill["functions"].as_array().unwrap().iter().filter_map(|f| f["kind"].as_str()).collect();
    assert!(kinds.contains(&"shadow"), "{bill}");
    let off = server.cli(&key, &["release", "mirror", "svc", "--off", "--json"]);
    assert!(off.status.success(), "{}", String::from_utf8_lossy(&off.stderr));
    assert_eq!(status(&server, &key)["mirror"], Value::Null);
}

#[test]
fn a_version_whose_smoke_tests_fail_is_stored_but_not_released() {
    let mut server = Server::start();
    let key = server.tenant("acme", "standard");
    let passing = format!("{ECHO}[[smoke]]\npath = \"/ping\"\nbody = \"ping\"\ncontains = [\"ping\"]\n");
    assert_eq!(server.upload(&key, &passing, component("echo")).status(), 201);
    ok(send(&server, &key, reqwest::Method::PUT, "/v1/functions/svc/release", Some(json!({"version": 1}))));
    // v2 answers /internal with a 500 where its smoke test wants a 200.
    let failing =
        format!("{FAILING}[[smoke]]\npath = \"/internal\"\n\n[[smoke]]\npath = \"/ok\"\ncontains = [\"ok\"]\n");
    let v: Value = server.upload(&key, &failing, component("hostile")).json().unwrap();
    assert_eq!((v["version"].as_u64(), v["smoke"]["passed"].as_bool()), (Some(2), Some(false)), "{v}");
    let versions = ok(server.get("/v1/functions/svc", Some(&key)));
    let smoke = &versions["versions"][1]["smoke"];
    assert_eq!(smoke["results"][0]["status"], 500, "{smoke}");
    assert_eq!(smoke["results"][1]["passed"], true, "{smoke}");
    assert_eq!(versions["versions"][0]["smoke"]["passed"], true);

    let refused = send(&server, &key, reqwest::Method::PUT, "/v1/functions/svc/release", Some(json!({"version": 2})));
    assert!(expect_error(refused, 409).contains("smoke tests"));
    let refused = send(
        &server,
        &key,
        reqwest::Method::POST,
        "/v1/functions/svc/release/canary",
        Some(json!({"version": 2, "percent": 10})),
    );
    expect_error(refused, 409);
    assert_eq!(call(&server, &key, "svc", None), (200, 1));
    // The report, and so the refusal, survive a restart.
    server.stop();
    server.restart();
    let refused = send(&server, &key, reqwest::Method::PUT, "/v1/functions/svc/release", Some(json!({"version": 2})));
    assert!(expect_error(refused, 409).contains("smoke tests"));

    // `deploy --release` of a failing version stores it and says why it is not released.
    let dir = tempfile::tempdir().unwrap();
    let hostile = infercell_tests::repo_root().join("tests/guests/target/wasm32-wasip2/release/hostile.wasm");
    std::fs::write(
        dir.path().join("function.toml"),
        format!("component = {:?}\n{failing}", hostile.display().to_string()),
    )
    .unwrap();
    let out = server.cli(&key, &["deploy", dir.path().to_str().unwrap(), "--release"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("svc@3 is stored but not released") && err.contains("GET /internal"), "{err}");
    assert_eq!(call(&server, &key, "svc", None), (200, 1), "the stable version still serves");
    // ... unless forced.
    let forced = server.cli(&key, &["release", "set", "svc", "3", "--force", "--json"]);
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    assert_eq!(call(&server, &key, "svc", None), (500, 3));

    // Without a release, a version whose smoke tests fail does not become the one that serves.
    assert_eq!(server.upload(&key, &passing.replace("\"svc\"", "\"lone\""), component("echo")).status(), 201);
    let lone_failing = failing.replace("\"svc\"", "\"lone\"");
    assert_eq!(server.upload(&key, &lone_failing, component("hostile")).status(), 201);
    let resp = server.invoke(&key, "acme/lone/ok", "");
    assert_eq!(resp.headers()["infercell-version"], "1", "the newest version that passed serves");

    // A smoke test that cannot be a request is refused at upload, and nothing is stored.
    let bad = format!("{ECHO}[[smoke]]\npath = \"ping\"\n");
    assert!(expect_error(server.upload(&key, &bad, component("echo")), 400).contains("must start with /"));
    assert_eq!(ok(server.get("/v1/functions/svc", Some(&key)))["latest_version"], 3);
}

#[test]
fn deploying_without_a_release_keeps_the_newest_version_until_a_canary_or_release() {
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    // A canary needs a version to run beside.
    let dir = tempfile::tempdir().unwrap();
    let echo = infercell_tests::repo_root().join("samples/target/wasm32-wasip2/release/echo.wasm");
    std::fs::write(dir.path().join("function.toml"), format!("component = {:?}\n{ECHO}", echo.display().to_string()))
        .unwrap();
    let dir = dir.path().to_str().unwrap();
    let out = server.cli(&key, &["deploy", dir, "--canary", "10"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no version yet"), "{out:?}");
    assert_eq!(server.get("/v1/functions/svc", Some(&key)).status(), 404, "nothing stored");
    // Deployed twice without flags: the newest serves, as it always did.
    server.cli(&key, &["deploy", dir]);
    server.cli(&key, &["deploy", dir]);
    assert_eq!(call(&server, &key, "svc", None), (200, 2));
    // A canary deploy pins the serving version first: v3 never takes every call.
    let out = server.cli(&key, &["deploy", dir, "--canary", "10", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["release"]["stable"].as_u64(), v["release"]["canary"]["version"].as_u64()), (Some(2), Some(3)));
    let served: Vec<u32> = (0..20).map(|_| call(&server, &key, "svc", None).1).collect();
    assert_eq!(served.iter().filter(|v| **v == 3).count(), 2, "{served:?}");
    let text = server.cli(&key, &["release", "status", "svc"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("svc: stable @2") && text.contains("canary @3 at 10%: progressing"), "{text}");
}

/// The digit `acme/digits[@N]` answers for a blank image.
fn digit(server: &Server, key: &str, target: &str) -> u64 {
    let resp = server.invoke(key, &format!("acme/{target}"), &json!({ "pixels": vec![0; 64] }).to_string());
    let v: Value = resp.json().unwrap();
    v["digit"].as_u64().unwrap_or_else(|| panic!("{v}"))
}

#[test]
fn a_function_version_keeps_the_model_version_it_was_deployed_with() {
    let mut server = Server::start();
    let key = server.tenant("acme", "standard");
    let manifest = std::fs::read_to_string(infercell_tests::function_dir("digits").join("function.toml")).unwrap();
    fn push_lookalike(server: &Server, key: &str, digit: usize) {
        let resp = server.push_model(key, "name = \"digits\"\n", infercell_tests::onnx::digits_lookalike(digit));
        assert_eq!(resp.status(), 201, "{}", resp.text().unwrap());
    }
    let push = |digit: usize| push_lookalike(&server, &key, digit);
    push(3); // model v1 always answers 3
    server.deploy(&key, "digits"); // function v1 resolves model digits@1
    push(7); // model v2 answers 7
    assert_eq!(digit(&server, &key, "digits"), 3, "function v1 keeps model v1");
    let v = server.deploy(&key, "digits"); // function v2 resolves digits@2
    assert_eq!(v["version"], 2);
    assert_eq!(digit(&server, &key, "digits"), 7);
    let versions = ok(server.get("/v1/functions/digits", Some(&key)));
    assert_eq!(versions["versions"][0]["model_pins"], json!({"digits": "1"}));
    assert_eq!(versions["versions"][1]["model_pins"], json!({"digits": "2"}));

    // Rolling the function back brings its model back.
    ok(send(&server, &key, reqwest::Method::PUT, "/v1/functions/digits/release", Some(json!({"version": 2}))));
    let out = server.cli(&key, &["release", "rollback", "digits", "--to", "1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(digit(&server, &key, "digits"), 3);
    // A restart keeps the pins: function v1 still loads model v1.
    server.stop();
    server.restart();
    assert_eq!(digit(&server, &key, "digits"), 3);
    assert_eq!(digit(&server, &key, "digits@2"), 7);

    // `digits@prod` follows the model's alias instead; the model's own release and alias commands.
    let follows = manifest.replace("models = [\"digits\"]", "models = [\"digits@prod\"]");
    assert_eq!(server.upload(&key, &follows, component("digits")).status(), 201); // function v3
    let out = server.cli(&key, &["alias", "set", "digits", "prod", "2", "--model", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(digit(&server, &key, "digits@3"), 7);
    server.cli(&key, &["alias", "set", "digits", "prod", "1", "--model"]);
    assert_eq!(digit(&server, &key, "digits@3"), 3, "the alias moved; the function follows");
    // What changed between two versions, as a reviewer reads it.
    let out = server.cli(&key, &["functions", "diff", "digits", "1", "3", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let diff: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fields: Vec<&str> = diff["changes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["model_pins", "capabilities.models"], "{diff}");
    let out = server.cli(&key, &["functions", "diff", "digits", "1", "3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("capabilities.models: -[\"digits\"] +[\"digits@prod\"]"), "{text}");
    let same = server.cli(&key, &["functions", "diff", "digits", "1", "1"]);
    assert!(String::from_utf8_lossy(&same.stdout).contains("no differences"));
    let missing = server.cli(&key, &["functions", "diff", "digits", "1", "9"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no version 9"));
    let pinned_missing = manifest.replace("models = [\"digits\"]", "models = [\"digits@9\"]");
    assert!(expect_error(server.upload(&key, &pinned_missing, component("digits")), 400).contains("no version 9"));

    // /v2/models/digits follows the model's release; a version segment may be an alias.
    let v2 = |path: &str| -> reqwest::blocking::Response {
        let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": vec![0.0; 64]}]});
        server.post(path, Some(&key), body.to_string())
    };
    let answered = |resp: reqwest::blocking::Response| -> u64 {
        resp.headers()["infercell-version"].to_str().unwrap().parse().unwrap()
    };
    assert_eq!(answered(v2("/v2/models/digits/infer")), 2, "no release: the newest");
    let out = server.cli(&key, &["release", "set", "digits", "1", "--model", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(answered(v2("/v2/models/digits/infer")), 1);
    assert_eq!(answered(v2("/v2/models/digits/versions/prod/infer")), 1);
    assert_eq!(answered(v2("/v2/models/digits/versions/2/infer")), 2);
    let status = ok(server.get("/v1/models/digits/release", Some(&key)));
    assert_eq!((status["model"].as_str(), status["stable"].as_u64()), (Some("digits"), Some(1)));

    // A model's mirror compares outputs: v3 answers as v1 does, v2 does not.
    push_lookalike(&server, &key, 3);
    let mirror = |version: &str, calls: u64| -> Value {
        let out = server.cli(&key, &["release", "mirror", "digits", version, "--model", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let status = || ok(server.get("/v1/models/digits/release", Some(&key)));
        for i in 1..=calls {
            assert_eq!(answered(v2("/v2/models/digits/infer")), 1, "the caller gets the stable answer");
            wait_until("the mirrored call", || status()["mirror"]["calls"] == i);
        }
        status()["mirror"].clone()
    };
    assert_eq!(mirror("3", 4)["agreement"], 1.0);
    assert_eq!(mirror("2", 3)["agreement"], 0.0);
}

#[test]
fn release_commands_refuse_what_cannot_be_done_and_change_nothing() {
    let (server, key) = setup();
    let put = |path: &str, body: Value| send(&server, &key, reqwest::Method::PUT, path, Some(body));
    let post = |path: &str, body: Option<Value>| send(&server, &key, reqwest::Method::POST, path, body);
    // No release yet: nothing to roll back.
    assert!(expect_error(post("/v1/functions/svc/release/rollback", None), 409).contains("no release"));
    // A deployer may move releases; another tenant's function does not exist for its key.
    let (_, deployer) = server.key(&key, "deployer");
    ok(send(&server, &deployer, reqwest::Method::PUT, "/v1/functions/svc/release", Some(json!({"version": 1}))));
    let other = server.tenant("other", "standard");
    expect_error(
        send(&server, &other, reqwest::Method::PUT, "/v1/functions/svc/release", Some(json!({"version": 1}))),
        404,
    );
    expect_error(server.get("/v1/functions/svc/release", Some(&other)), 404);
    expect_error(
        send(&server, &other, reqwest::Method::PUT, "/v1/functions/svc/aliases/prod", Some(json!({"version": 1}))),
        404,
    );

    // A release with no previous version has nowhere to roll back to.
    assert!(expect_error(post("/v1/functions/svc/release/rollback", None), 409).contains("no previous"));
    assert!(expect_error(post("/v1/functions/svc/release/rollback", Some(json!({"to": 1}))), 409).contains("already"));
    // Canaries: of the stable version, a bad share, a bad interval, a bad rate, unknown fields.
    let canary = |body: Value| post("/v1/functions/svc/release/canary", Some(body));
    assert!(expect_error(canary(json!({"version": 1, "percent": 10})), 409).contains("stable version already"));
    for percent in [0, 100] {
        assert!(expect_error(canary(json!({"version": 2, "percent": percent})), 400).contains("1 to 99"));
    }
    assert!(expect_error(canary(json!({"version": 2, "percent": 10, "interval": "soon"})), 400).contains("interval"));
    assert!(expect_error(canary(json!({"version": 2, "percent": 10, "max_error_rate": 2.0})), 400).contains("0 to 1"));
    expect_error(canary(json!({"version": 2, "percent": 10, "colour": "red"})), 400);
    // While a canary runs, `release set` and a second canary wait for it.
    ok(canary(json!({"version": 3, "percent": 10})));
    assert!(expect_error(put("/v1/functions/svc/release", json!({"version": 2})), 409).contains("canary at 10%"));
    ok(post("/v1/functions/svc/release/promote", None));
    // Mirrors: not of the stable version, 1 to 100 percent, --off needs one.
    let mirror = |body: Value| put("/v1/functions/svc/release/mirror", body);
    assert!(expect_error(mirror(json!({"version": 3})), 409).contains("stable version"));
    for percent in [0, 101] {
        assert!(expect_error(mirror(json!({"version": 1, "percent": percent})), 400).contains("1 to 100"));
    }
    let off = send(&server, &key, reqwest::Method::DELETE, "/v1/functions/svc/release/mirror", None);
    assert!(expect_error(off, 409).contains("no mirror"));
    // Aliases: listed, removed, a missing one is 404.
    ok(put("/v1/functions/svc/aliases/prod", json!({"version": 3})));
    let out = server.cli(&key, &["alias", "list", "svc", "--json"]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["aliases"], json!({"prod": 3}));
    let out = server.cli(&key, &["alias", "rm", "svc", "prod", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gone = send(&server, &key, reqwest::Method::DELETE, "/v1/functions/svc/aliases/prod", None);
    assert!(expect_error(gone, 404).contains("svc@prod"));
    // After all of that, the release is as the successful commands left it.
    let v = status(&server, &key);
    assert_eq!((v["stable"].as_u64(), v["previous"].as_u64(), &v["aliases"]), (Some(3), Some(1), &json!({})));
    // Deleting the function deletes its release; a new function of the name starts without one.
    assert_eq!(server.delete("/v1/functions/svc", &key).status(), 200);
    assert_eq!(server.upload(&key, ECHO, component("echo")).status(), 201);
    assert_eq!(status(&server, &key)["stable"], Value::Null);
    assert_eq!(call(&server, &key, "svc", None), (200, 4));
}
