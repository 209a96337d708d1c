//! Benchmarks, each run beside its baseline in the same process or script.
//!
//! - `invoke`: one echo call through infercell's runtime (fresh store, limits, log capture,
//!   metering) vs bare wasmtime with the same engine settings. Goal: ratio <= 1.10.
//! - `http`: echo req/s and latency through the infercell server (auth, routing, metrics)
//!   vs a bare hyper + wasmtime server (`serve-bare`, below). Goal: ratio >= 0.90.
//!
//! - `gpu`: open_nsfw (ResNet-50) on the wgpu engine beside ONNX Runtime on the CPU, at
//!   several batch sizes (`bench/gpu.sh`, for a machine with a real GPU).
//!
//! - `isolation`: a quiet tenant's `/v2` calls beside a neighbour alternating tiny and huge
//!   inputs, or sending computes past their deadline. Goal: quiet p99 ratio <= 2.0.
//!
//! - `drill`: the rollback drill under steady load (`scripts/rollback-drill.sh`): release
//!   changes fail no request; a failing canary is rolled back within two intervals.
//!
//! - `overhead`: what model monitoring and tracing (off) cost a call in the hot path.
//!
//! Run `bench/run.sh` (release build); results go to `bench/RESULTS.md` by hand, with the
//! machine and commit. Nothing here is a test: timings never gate CI. Any benchmark takes
//! `--json FILE` to write its figures (with commit and machine), and
//! `infercell-bench compare OLD.json NEW.json [--threshold 10]` prints each figure's change and
//! flags those worse by more than the threshold (exit status 1 when any is).

mod bare;
mod drill;
mod gpu;
mod isolation;
mod load;
mod nn;
mod overhead;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use infercell::runtime::{GuestRequest, Limits, Runtime, RuntimeConfig};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

fn echo_wasm() -> Result<Vec<u8>> {
    let path = repo_root().join("samples/target/wasm32-wasip2/release/echo.wasm");
    std::fs::read(&path).with_context(|| format!("{} missing: run scripts/build-samples.sh", path.display()))
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().collect();
    // `--json FILE`, wherever it is, is this function's: the benchmarks never see it.
    let json = match args.iter().position(|a| a == "--json") {
        Some(at) if at + 1 < args.len() => Some(args.drain(at..at + 2).nth(1).unwrap_or_default()),
        _ => None,
    };
    let bench = args.get(1).cloned().unwrap_or_default();
    run(&args).await?;
    if let Some(path) = json {
        report::write(&path, &bench, &args[1..])?;
    }
    Ok(())
}

async fn run(args: &[String]) -> Result<()> {
    let args = args.to_vec();
    match args.get(1).map(String::as_str) {
        Some("compare") => {
            let (Some(old), Some(new)) = (args.get(2), args.get(3)) else {
                bail!("usage: infercell-bench compare OLD.json NEW.json [--threshold PERCENT]");
            };
            let threshold = args.windows(2).find(|w| w[0] == "--threshold").map_or(Ok(10.0), |w| w[1].parse())?;
            if report::compare(old, new, threshold)? > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Some("overhead") => overhead::run(arg(&args, "--iters", 20_000) as u32).await,
        Some("invoke") => invoke(arg(&args, "--iters", 20_000), arg(&args, "--rounds", 5)).await,
        Some("http") => {
            http(arg(&args, "--seconds", 5), arg(&args, "--connections", 16) as usize, arg(&args, "--rounds", 3)).await
        }
        Some("serve-bare") => serve_bare().await,
        Some("fairness") => fairness(arg(&args, "--seconds", 5)).await,
        Some("isolation") => {
            let priority = args.windows(2).find(|w| w[0] == "--priority").map_or("idle", |w| w[1].as_str());
            isolation::run(arg(&args, "--seconds", 5), arg(&args, "--rounds", 3) as usize, priority).await
        }
        Some("drill") => drill::run(arg(&args, "--connections", 4) as usize, arg(&args, "--interval", 5)).await,
        Some("nn") => nn::run(arg(&args, "--iters", 5000) as u32).await,
        Some("gpu") => {
            let batches: Vec<u32> = args
                .windows(2)
                .find(|w| w[0] == "--batch")
                .map_or("1,32", |w| w[1].as_str())
                .split(',')
                .map(|b| b.trim().parse().context("--batch takes sizes such as 1,32"))
                .collect::<Result<_>>()?;
            gpu::run(&batches, arg(&args, "--iters", 10) as u32).await
        }
        Some("p3") => p3(arg(&args, "--seconds", 5), arg(&args, "--connections", 16) as usize, false).await,
        Some("p3v2") => p3(arg(&args, "--seconds", 5), arg(&args, "--connections", 16) as usize, true).await,
        _ => {
            eprintln!(
                "usage: infercell-bench [--json FILE] invoke [--iters N] [--rounds R] | overhead [--iters N] | compare OLD.json NEW.json [--threshold P] | http [--seconds S] [--connections C] [--rounds R] | fairness [--seconds S] | isolation [--seconds S] [--rounds R] [--priority idle|low] | drill [--connections C] [--interval S] | nn [--iters N] | gpu [--batch 1,32] [--iters N] | p3 [--seconds S] [--connections C] | p3v2 [--seconds S] [--connections C] | serve-bare"
            );
            std::process::exit(2)
        }
    }
}

async fn invoke(iters: u64, rounds: u64) -> Result<()> {
    let wasm = echo_wasm()?;
    let tmp = tempfile::tempdir()?;
    let dir = cap_std::fs::Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority())?;
    let runtime = Runtime::new(RuntimeConfig::default(), dir)?;
    let prepared = runtime.prepare_new("sha256:bench", &wasm).map_err(|e| anyhow::anyhow!("{e}"))?;
    let limits = Limits { memory_bytes: 64 << 20, timeout: Duration::from_secs(10), fuel: None };
    let grants = infercell::runtime::Grants::default();
    let bare = bare::Bare::new(&wasm)?;
    let body = b"hello, sandbox".to_vec();

    let run_infercell = || async {
        let start = Instant::now();
        for _ in 0..iters {
            let request =
                GuestRequest { method: "POST".into(), path: "/".into(), body: body.clone(), ..Default::default() };
            let outcome = runtime.invoke(&prepared, &limits, &grants, request).await;
            if outcome.result.map(|r| r.body).ok().as_deref() != Some(&body[..]) {
                bail!("infercell echo answered wrongly");
            }
        }
        Ok(start.elapsed() / iters as u32)
    };
    let run_bare = || async {
        let start = Instant::now();
        for _ in 0..iters {
            if bare.call(body.clone()).await? != body {
                bail!("bare echo answered wrongly");
            }
        }
        Ok(start.elapsed() / iters as u32)
    };
    // Warm up both, then alternate so drift hits both equally.
    run_infercell().await?;
    run_bare().await?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        ours.push(run_infercell().await?);
        theirs.push(run_bare().await?);
    }
    let (ours, theirs) = (median(ours), median(theirs));
    println!("invoke echo, in process, fresh store per call ({iters} calls x {rounds} rounds, median round):");
    println!("  infercell runtime   {:>8.2} us/call", ours.as_secs_f64() * 1e6);
    println!("  bare wasmtime       {:>8.2} us/call", theirs.as_secs_f64() * 1e6);
    println!("  ratio               {:>8.3}   (goal <= 1.10)", ours.as_secs_f64() / theirs.as_secs_f64());
    report::figure("invoke echo infercell us/call", ours.as_secs_f64() * 1e6, "us", report::Better::Lower);
    report::figure("invoke echo bare wasmtime us/call", theirs.as_secs_f64() * 1e6, "us", report::Better::Lower);
    report::figure(
        "invoke ratio infercell/bare",
        ours.as_secs_f64() / theirs.as_secs_f64(),
        "x",
        report::Better::Lower,
    );
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// An infercell server (release binary next to this one) with `echo` deployed for tenant
/// `bench` on the standard plan, plus any extra tenants on the given plans.
struct Infercell {
    server: Spawned,
    tmp: tempfile::TempDir,
    keys: std::collections::HashMap<String, String>,
}

impl Infercell {
    fn start(config: &str, tenants: &[(&str, &str)]) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let bin = exe.parent().context("exe dir")?.join("infercell");
        anyhow::ensure!(bin.exists(), "{} missing: cargo build --release -p infercell", bin.display());
        let tmp = tempfile::tempdir()?;
        let config_path = tmp.path().join("infercell.toml");
        std::fs::write(&config_path, config)?;
        let admin = "bench-admin-key";
        let server = Spawned::start(
            std::process::Command::new(&bin)
                .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(tmp.path().join("data"))
                .arg("--config")
                .arg(&config_path)
                .env("INFERCELL_ADMIN_KEY", admin)
                .env("INFERCELL_LOG", "warn"),
        )?;
        let cli = |key: &str, args: &[&str]| -> Result<String> {
            let out = std::process::Command::new(&bin)
                .args(args)
                .env("INFERCELL_URL", &server.url)
                .env("INFERCELL_KEY", key)
                .current_dir(repo_root())
                .output()?;
            anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let mut keys = std::collections::HashMap::new();
        for (tenant, plan) in tenants {
            let created: serde_json::Value =
                serde_json::from_str(&cli(admin, &["tenant", "create", tenant, "--plan", plan, "--json"])?)?;
            let key = created["api_key"].as_str().context("api_key")?.to_string();
            cli(&key, &["deploy", "samples/echo"])?;
            keys.insert(tenant.to_string(), key);
        }
        Ok(Self { server, tmp, keys })
    }

    /// Pushes `onnx` as `tenant`'s model `name` (tract or ONNX Runtime, as the server picks).
    fn push_model(&self, tenant: &str, name: &str, onnx: &[u8]) -> Result<()> {
        let path = self.tmp.path().join(format!("{tenant}-{name}.onnx"));
        std::fs::write(&path, onnx)?;
        let bin = std::env::current_exe()?.parent().context("exe dir")?.join("infercell");
        let out = std::process::Command::new(bin)
            .args(["model", "push", name])
            .arg(&path)
            .env("INFERCELL_URL", &self.server.url)
            .env("INFERCELL_KEY", self.keys.get(tenant).context("key")?)
            .output()?;
        anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// Runs the CLI as `tenant` (from the repository root); its stdout.
    fn cli(&self, tenant: &str, args: &[&str]) -> Result<String> {
        let bin = std::env::current_exe()?.parent().context("exe dir")?.join("infercell");
        let out = std::process::Command::new(bin)
            .args(args)
            .env("INFERCELL_URL", &self.server.url)
            .env("INFERCELL_KEY", self.keys.get(tenant).context("key")?)
            .current_dir(repo_root())
            .output()?;
        anyhow::ensure!(out.status.success(), "infercell {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn target(&self, tenant: &str) -> load::Target {
        load::Target::echo(format!("{}/fn/{tenant}/echo", self.server.url), self.keys.get(tenant).cloned())
    }
}

async fn http(seconds: u64, connections: usize, rounds: u64) -> Result<()> {
    let exe = std::env::current_exe()?;
    let metered = Infercell::start("", &[("bench", "standard")])?;
    let unmetered = Infercell::start("[metering]\nenabled = false\n", &[("bench", "standard")])?;
    let bare_server = Spawned::start(std::process::Command::new(&exe).arg("serve-bare"))?;
    let targets = [
        ("infercell server", metered.target("bench")),
        ("infercell, metering off", unmetered.target("bench")),
        ("bare hyper + wasmtime", load::Target::echo(format!("{}/", bare_server.url), None)),
    ];
    let duration = Duration::from_secs(seconds);
    for (_, target) in &targets {
        load::run(target, connections, Duration::from_secs(1)).await?;
    }
    let mut results: Vec<Vec<load::Report>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, (_, target)) in targets.iter().enumerate() {
            results[i].push(load::run(target, connections, duration).await?);
        }
    }
    let medians: Vec<load::Report> = results
        .into_iter()
        .map(|mut v| {
            v.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            v.swap_remove(v.len() / 2)
        })
        .collect();
    println!("HTTP echo, {connections} keep-alive connections, {seconds} s x {rounds} rounds (median round):");
    println!("  {:<28} {:>10} {:>10} {:>10}", "", "req/s", "p50 ms", "p99 ms");
    for ((name, _), r) in targets.iter().zip(&medians) {
        println!("  {:<28} {:>10.0} {:>10.3} {:>10.3}", name, r.rps, r.p50_ms, r.p99_ms);
        report::load_figures(&format!("http echo {name}"), r);
    }
    println!("  ratio infercell / bare       {:>10.3}   (goal >= 0.90)", medians[0].rps / medians[2].rps);
    report::figure("http echo ratio infercell/bare", medians[0].rps / medians[2].rps, "x", report::Better::Higher);
    println!("  metering cost                {:>9.1}%   (goal <= 5%)", (1.0 - medians[0].rps / medians[1].rps) * 100.0);
    Ok(())
}

/// A tenant at 10x its rate quota beside a quiet tenant: how much does the quiet one's p99 move?
async fn fairness(seconds: u64) -> Result<()> {
    let server = Infercell::start("", &[("quiet", "standard"), ("noisy", "free")])?;
    let quiet = server.target("quiet");
    let noisy = server.target("noisy");
    let duration = Duration::from_secs(seconds);
    load::run(&quiet, 4, Duration::from_secs(1)).await?;
    let alone = load::run(&quiet, 4, duration).await?;
    // The free plan allows 10 requests/s: noisy sends 100/s (4 connections, one every 40 ms).
    let flood = load::run_mode(&noisy, 4, duration, load::Mode::Paced(Duration::from_millis(40)));
    let (with_noise, flooded) = tokio::join!(load::run(&quiet, 4, duration), flood);
    let (with_noise, flooded) = (with_noise?, flooded?);
    println!("fairness: quiet tenant (4 closed-loop connections) beside a tenant at 10x its rate quota, {seconds} s:");
    println!("  {:<28} {:>10} {:>10} {:>10}", "", "req/s", "p50 ms", "p99 ms");
    println!("  {:<28} {:>10.0} {:>10.3} {:>10.3}", "quiet alone", alone.rps, alone.p50_ms, alone.p99_ms);
    println!(
        "  {:<28} {:>10.0} {:>10.3} {:>10.3}",
        "quiet beside noisy", with_noise.rps, with_noise.p50_ms, with_noise.p99_ms
    );
    println!("  {:<28} {:>10.0}", "noisy sent (mostly 429)", flooded.rps);
    println!("  p99 ratio                    {:>10.3}   (goal <= 2.0)", with_noise.p99_ms / alone.p99_ms);
    report::figure("fairness quiet p99 ratio", with_noise.p99_ms / alone.p99_ms, "x", report::Better::Lower);
    Ok(())
}

/// P3: digits over HTTP through infercell (guest + wasi:nn) vs the FastAPI + uvicorn +
/// ONNX Runtime peer (bench/peers/), same model, same load generator and connections.
async fn p3(seconds: u64, connections: usize, v2: bool) -> Result<()> {
    let server = Infercell::start("", &[("bench", "standard")])?;
    let key = server.keys.get("bench").context("key")?.clone();
    let bin = std::env::current_exe()?.parent().context("exe dir")?.join("infercell");
    for args in [vec!["model", "push", "digits", "samples/digits/digits.onnx"], vec!["deploy", "samples/digits"]] {
        let out = std::process::Command::new(&bin)
            .args(&args)
            .env("INFERCELL_URL", &server.server.url)
            .env("INFERCELL_KEY", &key)
            .current_dir(repo_root())
            .output()?;
        anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("samples/digits/expected.json"))?)?;
    let body = bytes::Bytes::from(serde_json::json!({ "pixels": expected["cases"][0]["pixels"] }).to_string());

    let venv = std::process::Command::new(repo_root().join("bench/peers/setup.sh")).output()?;
    anyhow::ensure!(venv.status.success(), "bench/peers/setup.sh failed: {}", String::from_utf8_lossy(&venv.stderr));
    let venv_bin = String::from_utf8(venv.stdout)?.trim().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).to_string();
    let mut peer = std::process::Command::new(format!("{venv_bin}/uvicorn"))
        .args([
            "fastapi_digits:app",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--workers",
            &workers,
            "--log-level",
            "warning",
        ])
        .current_dir(repo_root().join("bench/peers"))
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the FastAPI peer did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let targets: Vec<(&str, load::Target)> = if !v2 {
        vec![
            (
                "infercell (guest + wasi:nn)",
                load::Target {
                    url: format!("{}/fn/bench/digits", server.server.url),
                    bearer: Some(key),
                    body: body.clone(),
                    echo: false,
                    headers: Vec::new(),
                },
            ),
            (
                "FastAPI + uvicorn + ORT",
                load::Target {
                    url: format!("http://127.0.0.1:{port}/digits"),
                    bearer: None,
                    body,
                    echo: false,
                    headers: Vec::new(),
                },
            ),
        ]
    } else {
        // The same 64 pixels as an Open Inference Protocol request, JSON and binary.
        let pixels: Vec<f32> = expected["cases"][0]["pixels"]
            .as_array()
            .context("pixels")?
            .iter()
            .map(|p| p.as_f64().unwrap_or(0.0) as f32 / 16.0)
            .collect();
        let json_body = bytes::Bytes::from(
            serde_json::json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 64], "data": pixels }] })
                .to_string(),
        );
        let header = serde_json::json!({
            "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 64], "parameters": { "binary_data_size": 256 } }],
            "parameters": { "binary_data_output": true },
        })
        .to_string();
        let mut binary = header.clone().into_bytes();
        binary.extend(pixels.iter().flat_map(|p| p.to_le_bytes()));
        let binary = bytes::Bytes::from(binary);
        let length = vec![("inference-header-content-length".to_string(), header.len().to_string())];
        let target = |url: String, bearer: Option<String>, body: &bytes::Bytes, headers: &Vec<(String, String)>| {
            load::Target { url, bearer, body: body.clone(), echo: false, headers: headers.clone() }
        };
        let ours = format!("{}/v2/models/digits/infer", server.server.url);
        let peer = format!("http://127.0.0.1:{port}/v2/models/digits/infer");
        vec![
            ("infercell /v2 JSON", target(ours.clone(), Some(key.clone()), &json_body, &Vec::new())),
            ("FastAPI /v2 JSON", target(peer.clone(), None, &json_body, &Vec::new())),
            ("infercell /v2 binary", target(ours, Some(key), &binary, &length)),
            ("FastAPI /v2 binary", target(peer, None, &binary, &length)),
        ]
    };
    for (name, t) in &targets {
        load::run(t, connections, Duration::from_secs(1)).await.with_context(|| format!("warming up {name}"))?;
    }
    let mut reports = Vec::new();
    for (name, t) in &targets {
        reports.push(load::run(t, connections, Duration::from_secs(seconds)).await.with_context(|| name.to_string())?);
    }
    let _ = peer.kill();
    let _ = peer.wait();
    let what = if v2 { "the Open Inference Protocol (/v2, the model direct)" } else { "HTTP (/fn, guest + wasi:nn)" };
    println!("P3: digits over {what}, {connections} keep-alive connections, {seconds} s (uvicorn workers: {workers}):");
    println!("  {:<28} {:>10} {:>10} {:>10}", "", "req/s", "p50 ms", "p99 ms");
    for ((name, _), r) in targets.iter().zip(&reports) {
        println!("  {:<28} {:>10.0} {:>10.3} {:>10.3}", name, r.rps, r.p50_ms, r.p99_ms);
        report::load_figures(&format!("{} digits {name}", if v2 { "p3v2" } else { "p3" }), r);
    }
    for pair in reports.chunks(2) {
        println!(
            "  req/s ratio {:.2} (goal >= 5), p99 ratio {:.2} (goal <= 0.2)",
            pair[0].rps / pair[1].rps,
            pair[0].p99_ms / pair[1].p99_ms
        );
    }
    Ok(())
}

/// A child server that printed `listening on http://ADDR`.
struct Spawned {
    child: std::process::Child,
    url: String,
}

impl Spawned {
    fn start(cmd: &mut std::process::Command) -> Result<Self> {
        use std::io::BufRead as _;
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let url = loop {
            let line = lines.next().context("server exited before listening")??;
            if let Some(url) = line.strip_prefix("listening on ") {
                break url.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Self { child, url })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The bare hyper + wasmtime echo server: read the body, fresh store, call, answer.
async fn serve_bare() -> Result<()> {
    use http_body_util::{BodyExt as _, Full};
    use hyper::service::service_fn;
    let bare = bare::Bare::new(&echo_wasm()?)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let bare = bare.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let bare = bare.clone();
                async move {
                    // The same request a function gets from infercell: method, path, query and
                    // headers (lower-case names, no Authorization), then the body.
                    let method = req.method().as_str().to_string();
                    let path = req.uri().path().to_string();
                    let query = req.uri().query().unwrap_or_default().to_string();
                    let headers = req
                        .headers()
                        .iter()
                        .filter(|(name, _)| *name != hyper::header::AUTHORIZATION)
                        .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                        .collect();
                    let body = req.into_body().collect().await?.to_bytes().to_vec();
                    let out = match bare.call_with(method, path, query, headers, body).await {
                        Ok(out) => hyper::Response::new(Full::new(bytes::Bytes::from(out))),
                        Err(e) => {
                            let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(e.to_string())));
                            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                            r
                        }
                    };
                    Ok::<_, hyper::Error>(out)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}
