//! Operations, as an operator meets them: the alert rules pass `promtool`, every alert has its
//! runbook and its unit tests (firing and silent), a real Prometheus scraping a running server
//! raises the availability alert for a failing function, and every panel of the Grafana
//! dashboard evaluates to data against that Prometheus, over metrics the server exports.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use infercell_tests::{ADMIN_KEY, Server, component, repo_root, strict};
use serde_json::{Value, json};

/// A Prometheus tool from Debian's `prometheus` package (scripts/test.sh installs it); `None`
/// (the test skips) without it, outside CI.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(!strict(), "scripts/test.sh installs Debian's prometheus package: `{name}` must be on the PATH");
        eprintln!("skipping: no `{name}` (apt-get install prometheus)");
    }
    found
}

fn ops() -> PathBuf {
    repo_root().join("ops/prometheus")
}

/// The alert names of the rules file, each once.
fn alerts(rules: &str) -> BTreeSet<String> {
    rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).map(|s| s.trim().to_string()).collect()
}

#[test]
fn every_alert_passes_promtool_and_has_a_runbook_and_tests_both_ways() {
    let Some(promtool) = tool("promtool") else { return };
    let check =
        Command::new(&promtool).args(["check", "rules", "rules/infercell.yml"]).current_dir(ops()).output().unwrap();
    assert!(check.status.success(), "promtool check rules: {}", String::from_utf8_lossy(&check.stdout));
    let tests: Vec<PathBuf> = std::fs::read_dir(ops().join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    assert!(!tests.is_empty());
    let run = Command::new(&promtool).arg("test").arg("rules").args(&tests).current_dir(ops()).output().unwrap();
    assert!(
        run.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );

    let rules = std::fs::read_to_string(ops().join("rules/infercell.yml")).unwrap();
    let names = alerts(&rules);
    assert!(names.len() >= 12, "{names:?}");
    // Every runbook_url names a runbook that exists, and each alert has its own.
    for line in rules.lines().filter_map(|l| l.trim().strip_prefix("runbook_url: ")) {
        assert!(repo_root().join(line.trim()).is_file(), "runbook_url {line} names no file");
    }
    let index = std::fs::read_to_string(repo_root().join("docs/runbooks/README.md")).unwrap();
    for name in &names {
        assert!(rules.contains(&format!("runbook_url: docs/runbooks/{name}.md")), "{name} has no runbook_url");
        assert!(index.contains(&format!("{name}.md")), "docs/runbooks/README.md does not list {name}");
    }
    // Every alert is tested firing and silent.
    let (mut fires, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for test in &tests {
        let text = std::fs::read_to_string(test).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (i, line) in lines.iter().enumerate() {
            if let Some(name) = line.strip_prefix("alertname: ") {
                let next = lines.get(i + 1).copied().unwrap_or_default();
                if next == "exp_alerts: []" { &mut silent } else { &mut fires }.insert(name.to_string());
            }
        }
    }
    for name in &names {
        assert!(fires.contains(name), "no promtool test sees {name} fire");
        assert!(silent.contains(name), "no promtool test sees {name} stay silent");
    }
}

/// A Prometheus server on loopback, stopped on drop.
struct Prometheus {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` (host:port) every second as job `infercell` with `key`, evaluating the
    /// project's rules every second.
    fn start(binary: &Path, target: &str, key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), key).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules:?}\nscrape_configs:\n  - job_name: infercell\n    authorization:\n      credentials_file: {key:?}\n    static_configs:\n      - targets: [{target:?}]\n",
            rules = ops().join("rules/infercell.yml").display().to_string(),
            key = dir.path().join("key").display().to_string(),
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { url: format!("http://127.0.0.1:{port}"), child, _dir: dir }
    }

    fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let resp = reqwest::blocking::Client::new().get(format!("{}{path}", self.url)).query(query).send().ok()?;
        resp.json().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 200 ms for up to `limit`, returning its first `Some`.
fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = f() {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every PromQL expression of the dashboard, with its panel's title.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("ops/grafana/infercell.json")).unwrap())
            .unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push((panel["title"].as_str().unwrap().to_string(), target["expr"].as_str().unwrap().to_string()));
        }
    }
    queries
}

/// The `infercell_...` metric names an expression reads (recording rules, `infercell:...`, are
/// the rules file's).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("infercell_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn dashboard_has_a_row_per_concern_over_exported_metrics() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("ops/grafana/infercell.json")).unwrap())
            .unwrap();
    let rows: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(rows, ["Traffic", "Errors", "Latency", "Saturation", "Engines", "Cost", "Releases", "Model drift"]);
    assert!(dashboard_queries().len() > 20);
}

#[test]
fn prometheus_raises_the_availability_alert_and_evaluates_every_panel() {
    let Some(prometheus) = tool("prometheus") else { return };
    let server = Server::start();
    let resp = server.post("/v1/keys", Some(ADMIN_KEY), json!({"role": "metrics", "name": "prometheus"}).to_string());
    assert_eq!(resp.status(), 201);
    let metrics_key = resp.json::<Value>().unwrap()["api_key"].as_str().unwrap().to_string();

    // acme (standard): a failing function, a released function with a canary promoted and
    // rolled back, and the digits model; thrifty (free, with a budget) calls echo.
    let acme = server.tenant("acme", "standard");
    let thrifty = server.tenant("thrifty", "free");
    let manifest = |name: &str| format!("name = \"{name}\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"5s\"\n");
    assert_eq!(server.upload(&acme, &manifest("flaky"), component("hostile")).status(), 201);
    for _ in 0..2 {
        assert_eq!(server.upload(&acme, &manifest("svc"), component("echo")).status(), 201);
    }
    assert_eq!(server.upload(&thrifty, &manifest("svc"), component("echo")).status(), 201);
    server.push_digits(&acme);
    let release = |method: reqwest::Method, path: &str, body: Value| {
        let resp = reqwest::blocking::Client::new()
            .request(method, format!("{}/v1/functions/svc/release{path}", server.url))
            .bearer_auth(&acme)
            .json(&body)
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.text().unwrap());
    };
    release(reqwest::Method::PUT, "", json!({"version": 1}));
    release(reqwest::Method::POST, "/canary", json!({"version": 2, "percent": 50}));
    release(reqwest::Method::POST, "/promote", json!({}));
    release(reqwest::Method::POST, "/rollback", json!({}));

    // thrifty's plan allows a burst of 20: a refusal, for the refusals panel.
    let refused = (0..40).filter(|_| server.invoke(&thrifty, "thrifty/svc/", "hi").status() == 429).count();
    assert!(refused > 0);

    // digits' monitor gets a baseline, so the drift panel has a score once the traffic below
    // has made a current window.
    let digits = |i: usize| {
        let pixels: Vec<f64> = (0..64).map(|p| ((p * 7 + i * 3) % 17) as f64 / 16.0).collect();
        json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": pixels}]})
    };
    for i in 0..40 {
        assert_eq!(server.post("/v2/models/digits/infer", Some(&acme), digits(i).to_string()).status(), 200);
    }
    assert_eq!(server.post("/v1/models/digits/monitor/baseline", Some(&acme), "").status(), 200);

    // Traffic until the test ends: every call of flaky fails (a trap: 500).
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, url, acme, thrifty) = (stop.clone(), server.url.clone(), acme.clone(), thrifty.clone());
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let flaky = http.post(format!("{url}/fn/acme/flaky/trap")).bearer_auth(&acme).send().unwrap();
                assert_eq!(flaky.status(), 500);
                let svc = http.post(format!("{url}/fn/acme/svc/")).bearer_auth(&acme).body("hi").send().unwrap();
                assert_eq!(svc.status(), 200);
                let infer = http
                    .post(format!("{url}/v2/models/digits/infer"))
                    .bearer_auth(&acme)
                    .json(&digits(i))
                    .send()
                    .unwrap();
                assert_eq!(infer.status(), 200);
                // The free plan allows 10 calls a second.
                let _ = http.post(format!("{url}/fn/thrifty/svc/")).bearer_auth(&thrifty).body("hi").send().unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let target = server.url.trim_start_matches("http://").to_string();
    let prom = Prometheus::start(&prometheus, &target, &metrics_key);
    let up = poll(Duration::from_secs(60), || {
        let targets = prom.api("/api/v1/targets", &[])?;
        let target = targets["data"]["activeTargets"].as_array()?.first()?.clone();
        (target["health"] == "up").then_some(target)
    });
    assert!(up.is_some(), "Prometheus never scraped the server: {:?}", prom.api("/api/v1/targets", &[]));

    // The fast availability burn for flaky: pending (its `for: 2m` runs) or firing.
    let alert = poll(Duration::from_secs(90), || {
        let alerts = prom.api("/api/v1/alerts", &[])?;
        alerts["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| {
                a["labels"]["alertname"] == "InfercellAvailabilityBudgetBurn"
                    && a["labels"]["name"] == "flaky"
                    && a["labels"]["long"] == "1h"
                    && (a["state"] == "pending" || a["state"] == "firing")
            })
            .cloned()
    });
    let alert =
        alert.unwrap_or_else(|| panic!("no availability alert for flaky: {:?}", prom.api("/api/v1/alerts", &[])));
    assert_eq!(alert["labels"]["tenant"], "acme");
    assert_eq!(alert["labels"]["severity"], "page");
    assert_eq!(alert["annotations"]["runbook_url"], "docs/runbooks/InfercellAvailabilityBudgetBurn.md");
    // The healthy function raises nothing.
    let alerts = prom.api("/api/v1/alerts", &[]).unwrap();
    assert!(!alerts["data"]["alerts"].as_array().unwrap().iter().any(|a| a["labels"]["name"] == "svc"), "{alerts}");

    // Every dashboard query evaluates without error and returns data.
    let exported = server.get("/metrics", Some(ADMIN_KEY)).text().unwrap();
    for (panel, expr) in dashboard_queries() {
        for name in metric_names(&expr) {
            assert!(
                exported.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
                "panel `{panel}` reads {name}, which the server does not export"
            );
        }
        let query = expr.replace("$__rate_interval", "15s").replace("$tenant", ".*");
        let answer = poll(Duration::from_secs(60), || {
            let answer = prom.api("/api/v1/query", &[("query", &query)])?;
            assert_eq!(answer["status"], "success", "panel `{panel}`: {query}: {answer}");
            (!answer["data"]["result"].as_array()?.is_empty()).then_some(answer)
        });
        assert!(answer.is_some(), "panel `{panel}` has no data: {query}");
    }

    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
}

/// `infercell model monitor digits --json`'s report.
fn monitor(server: &Server, key: &str, args: &[&str]) -> Value {
    let mut all = vec!["model", "monitor", "digits", "--json"];
    all.extend_from_slice(args);
    let out = server.cli(key, &all);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn model_monitor_shows_drift_when_the_inputs_shift() {
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    server.push_digits(&key);
    server.deploy(&key, "digits");
    let cases: Vec<Vec<f64>> = infercell_tests::digits_expected()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pixels"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect())
        .collect();
    // Calls through the function (wasi:nn) and through /v2 count alike.
    let call = |i: usize, shifted: bool| {
        let pixels: Vec<f64> = cases[i % cases.len()].iter().map(|p| if shifted { 16.0 - p } else { *p }).collect();
        if i.is_multiple_of(2) {
            let resp = server.invoke(&key, "acme/digits", &json!({ "pixels": pixels }).to_string());
            assert_eq!(resp.status(), 200);
        } else {
            let scaled: Vec<f64> = pixels.iter().map(|p| p / 16.0).collect();
            let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": scaled}]});
            assert_eq!(server.post("/v2/models/digits/infer", Some(&key), body.to_string()).status(), 200);
        }
    };

    // Before any call: nothing to take as the baseline.
    let out = server.cli(&key, &["model", "monitor", "digits", "--baseline", "now"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no call"), "{}", String::from_utf8_lossy(&out.stderr));
    for i in 0..64 {
        call(i, false);
    }
    let report = monitor(&server, &key, &[]);
    assert_eq!(report["version"], 1);
    assert_eq!(report["samples"], 64, "both routes count: {report}");
    assert_eq!(report["drift_score"], Value::Null, "no baseline yet");
    assert_eq!(report["inputs"][0]["features"], 64);
    assert_eq!(report["outputs"][0]["name"], "probabilities");
    let classes: u64 = report["outputs"][0]["predicted_classes"]["current"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(classes, 64);

    let report = monitor(&server, &key, &["--baseline", "now"]);
    assert_eq!(report["reference_samples"], 64);
    assert_eq!(report["samples"], 0);
    for i in 0..64 {
        call(i, false);
    }
    let same = monitor(&server, &key, &[])["drift_score"].as_f64().unwrap();
    assert!(same < 0.1, "the same inputs: {same}");

    monitor(&server, &key, &["--baseline", "now"]);
    for i in 0..64 {
        call(i, true);
    }
    let shifted = monitor(&server, &key, &[]);
    let score = shifted["drift_score"].as_f64().unwrap();
    assert!(score > 0.25 && score > same * 5.0, "inverted inputs: {score} (same: {same})");
    // The text form leads with the score; the metric carries it.
    let text = server.cli(&key, &["model", "monitor", "digits"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.starts_with(&format!("digits@1: drift score {score:.3}")), "{text}");
    let metrics = server.get("/metrics", Some(ADMIN_KEY)).text().unwrap();
    assert!(metrics.contains(r#"infercell_model_drift_score{tenant="acme",model="digits",version="1"}"#), "{metrics}");

    // Errors: an unknown model or version is a 404; an invoker may not read monitors.
    assert_eq!(server.get("/v1/models/nope/monitor", Some(&key)).status(), 404);
    assert_eq!(server.get("/v1/models/digits/monitor?version=9", Some(&key)).status(), 404);
    let (_, invoker) = server.key(&key, "invoker");
    assert_eq!(server.get("/v1/models/digits/monitor", Some(&invoker)).status(), 403);
    // Deleting the model forgets its monitor.
    assert_eq!(server.delete("/v1/models/digits", &key).status(), 200);
    assert!(!server.get("/metrics", Some(ADMIN_KEY)).text().unwrap().contains("infercell_model_drift_score{"));
}

/// The read-only `infercell` commands of every runbook, with their placeholders filled in for
/// a live server (a function `echo`, a model `digits`, tenant `acme`, version 1).
fn runbook_commands() -> Vec<(String, Vec<String>)> {
    let mut commands = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("docs/runbooks")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().map(str::trim).filter(|l| l.starts_with("infercell ")) {
            // Comments, line continuations and pipes are the shell's.
            let line = line.split("  #").next().unwrap().split(" | ").next().unwrap().trim_end_matches('\\').trim();
            let words: Vec<&str> = line.split_whitespace().skip(1).collect();
            // Commands that change things are the operator's call; the drill tests those.
            let changes = matches!(words.first(), Some(&"deploy"))
                || (words.first() == Some(&"release") && words.get(1) != Some(&"status"))
                || (words.first() == Some(&"model") && words.contains(&"--baseline"));
            if changes {
                continue;
            }
            let args = words
                .iter()
                .map(|w| {
                    match w.trim_matches('"') {
                        "FUNCTION" | "NAME" | "N" | "svc" => "echo",
                        "MODEL" => "digits",
                        "T" => "acme",
                        "OLD" | "NEW" | "STABLE" | "CANARY" | "V" => "1",
                        other => other,
                    }
                    .to_string()
                })
                .collect();
            commands.push((format!("{}: {line}", path.file_name().unwrap().to_string_lossy()), args));
        }
    }
    commands
}

#[test]
fn every_runbook_command_runs_against_a_server() {
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    server.deploy(&key, "echo");
    server.push_digits(&key);
    server.deploy(&key, "digits");
    assert_eq!(server.invoke(&key, "acme/echo", "hi").status(), 200);
    let since = "2026-01-01T00:00:00Z";
    let commands = runbook_commands();
    assert!(commands.len() >= 15, "{commands:?}");
    for (what, args) in commands {
        let args: Vec<String> = args
            .into_iter()
            .map(|a| match a.as_str() {
                "$ADMIN_KEY" => ADMIN_KEY.to_string(),
                "$TENANT_KEY" => key.clone(),
                "$SINCE" => since.to_string(),
                _ => a,
            })
            .collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = server.cli(&key, &refs);
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
