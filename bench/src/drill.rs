//! `drill`: the rollback drill (`scripts/rollback-drill.sh`, docs/runbook.md), under a steady
//! load on one function, `svc`: v1 and v3 are the echo sample, v2 fails every call (the
//! hostile guest's `/internal`, a 500).
//!
//! (a) Release changes while the load runs: set v3, roll back, a canary of v3, promote, roll
//!     back, by the CLI as an operator would. Goal: no failed request.
//! (b) A canary of v2 at 10%: the time from the canary command to its automatic rollback, and
//!     the failed requests. Goal: rolled back within two intervals, and no more failures than
//!     the canary's share of the calls over that time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use http_body_util::{BodyExt as _, Full};

use crate::Infercell;

/// What the steady load saw.
#[derive(Default)]
struct Counts {
    ok: u64,
    failed: u64,
    /// Calls answered by each version (`infercell-version`).
    by_version: std::collections::BTreeMap<u32, u64>,
}

/// Paced calls on `connections` connections, one every `every` each, until `stop`; on a
/// thread and runtime of its own, as a separate client.
fn steady(
    url: String,
    key: String,
    connections: usize,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Counts>> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async move {
            let uri: hyper::Uri = url.parse()?;
            let authority = uri.authority().context("url has no host")?.to_string();
            let path = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
            let mut tasks = Vec::new();
            for _ in 0..connections {
                let (authority, path, key, stop) = (authority.clone(), path.clone(), key.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let mut sender = crate::load::connect(&authority).await?;
                    let mut counts = Counts::default();
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep_until(next.into()).await;
                        next += every;
                        let req = hyper::Request::post(path.as_str())
                            .header("host", authority.as_str())
                            .header("authorization", format!("Bearer {key}"))
                            .body(Full::new(bytes::Bytes::from_static(b"drill")))?;
                        let resp = sender.send_request(req).await?;
                        let status = resp.status();
                        let version = resp
                            .headers()
                            .get("infercell-version")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(0);
                        resp.into_body().collect().await?;
                        *counts.by_version.entry(version).or_default() += 1;
                        if status == 200 {
                            counts.ok += 1;
                        } else {
                            counts.failed += 1;
                        }
                    }
                    Ok::<_, anyhow::Error>(counts)
                }));
            }
            let mut all = Counts::default();
            for task in tasks {
                let counts = task.await??;
                all.ok += counts.ok;
                all.failed += counts.failed;
                for (v, n) in counts.by_version {
                    *all.by_version.entry(v).or_default() += n;
                }
            }
            Ok(all)
        })
    })
}

pub async fn run(connections: usize, interval_secs: u64) -> Result<()> {
    let server = Infercell::start("", &[("drill", "standard")])?;
    let dirs = tempfile::tempdir()?;
    let root = crate::repo_root();
    for (version, guest) in [
        (1, "samples/target/wasm32-wasip2/release/echo.wasm"),
        (2, "tests/guests/target/wasm32-wasip2/release/hostile.wasm"),
        (3, "samples/target/wasm32-wasip2/release/echo.wasm"),
    ] {
        let dir = dirs.path().join(format!("v{version}"));
        std::fs::create_dir(&dir)?;
        let wasm = root.join(guest);
        anyhow::ensure!(wasm.exists(), "{} missing: run scripts/build-samples.sh", wasm.display());
        std::fs::write(
            dir.join("function.toml"),
            format!(
                "name = \"svc\"\ncomponent = {:?}\n[limits]\nmemory = \"64MiB\"\ntimeout = \"5s\"\n",
                wasm.display().to_string()
            ),
        )?;
        server.cli("drill", &["deploy", dir.to_str().context("path")?])?;
    }
    let url = format!("{}/fn/drill/svc/internal", server.server.url);
    let key = server.keys.get("drill").context("key")?.clone();
    let every = Duration::from_millis(4);
    println!(
        "rollback drill: steady load of {connections} connections, one call every {} ms each, on /fn/drill/svc",
        every.as_millis()
    );

    // (a) Every release change an operator makes, while the load runs.
    server.cli("drill", &["release", "set", "svc", "1"])?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady(url.clone(), key.clone(), connections, every, stop.clone());
    let started = Instant::now();
    let steps: [&[&str]; 6] = [
        &["release", "set", "svc", "3"],
        &["release", "rollback", "svc"],
        &["release", "canary", "svc", "3", "--percent", "50"],
        &["release", "promote", "svc"],
        &["release", "rollback", "svc"],
        &["release", "rollback", "svc", "--to", "3"],
    ];
    for step in steps {
        tokio::time::sleep(Duration::from_secs(1)).await;
        server.cli("drill", step)?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let a = load.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    let took = started.elapsed().as_secs_f64();
    println!(
        "  (a) {} release changes (set, rollback, canary, promote, rollback, rollback --to) in {took:.1} s: {} calls ({:.0}/s), {} failed, by version {:?}   (goal: 0 failed)",
        steps.len(),
        a.ok + a.failed,
        (a.ok + a.failed) as f64 / took,
        a.failed,
        a.by_version
    );
    crate::report::figure("drill release changes failed calls", a.failed as f64, "calls", crate::report::Better::Lower);

    // (b) A canary whose every call fails, at 10%.
    server.cli("drill", &["release", "set", "svc", "1"])?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady(url, key, connections, every, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let interval = format!("{interval_secs}s");
    let began = Instant::now();
    server
        .cli("drill", &["release", "canary", "svc", "2", "--percent", "10", "--interval", &interval, "--step", "10"])?;
    let rolled_back = loop {
        let status: serde_json::Value =
            serde_json::from_str(&server.cli("drill", &["release", "status", "svc", "--json"])?)?;
        if status["canary"]["state"] == "rolled_back" {
            break began.elapsed();
        }
        anyhow::ensure!(began.elapsed() < Duration::from_secs(10 * interval_secs), "the canary was not rolled back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let b = load.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    let total = began.elapsed().as_secs_f64() + 1.0;
    let rate = (b.ok + b.failed) as f64 / total;
    let share = 0.10 * rate * rolled_back.as_secs_f64();
    let status: serde_json::Value =
        serde_json::from_str(&server.cli("drill", &["release", "status", "svc", "--json"])?)?;
    let reason =
        status["history"].as_array().and_then(|h| h.last()).map(|e| e["reason"].to_string()).unwrap_or_default();
    println!(
        "  (b) canary of a version failing every call, 10%, interval {interval}: rolled back {:.2} s after the command (goal: within {} s); {} failed of {} calls ({:.0}/s; the canary's share of that time: {share:.0})\n      reason: {reason}",
        rolled_back.as_secs_f64(),
        2 * interval_secs,
        b.failed,
        b.ok + b.failed,
        rate
    );
    crate::report::figure("drill rollback seconds", rolled_back.as_secs_f64(), "s", crate::report::Better::Lower);
    Ok(())
}
