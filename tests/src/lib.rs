//! Test harness: starts the real `infercell` binary on `127.0.0.1:0` with its own data
//! directory, reads the bound address from its output, and talks to it over HTTP.
//!
//! The binary and the sample components must be built first; `scripts/test.sh` does both
//! (`cargo build -p infercell` and `scripts/build-samples.sh`).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub mod conformance;
pub mod onnx;

pub use reqwest::blocking::{Client, Response};
pub use serde_json::{Value, json};

/// The admin key every test server is started with.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `infercell` binary next to the test executable (target/<profile>/infercell).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("infercell");
    assert!(bin.exists(), "{} is missing: run `cargo build -p infercell` (scripts/test.sh does)", bin.display());
    bin
}

/// A built component: `samples/<name>` or `tests/guests/<name>` (cargo names the file with `_`).
pub fn component(name: &str) -> Vec<u8> {
    let root = repo_root();
    for dir in ["samples", "tests/guests"] {
        let path = root.join(dir).join("target/wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
        if path.exists() {
            return std::fs::read(path).unwrap();
        }
    }
    panic!("component {name}.wasm is not built: run scripts/build-samples.sh");
}

/// The directory of a sample or test guest, holding its function.toml.
pub fn function_dir(name: &str) -> PathBuf {
    let root = repo_root();
    ["samples", "tests/guests"]
        .iter()
        .map(|d| root.join(d).join(name))
        .find(|p| p.join("function.toml").exists())
        .unwrap()
}

/// A running server, killed on drop.
pub struct Server {
    pub url: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
    config: Option<String>,
    pub http: Client,
}

impl Server {
    /// A server on a fresh temporary data directory.
    pub fn start() -> Self {
        Self::start_with_config(None)
    }

    /// A server with `infercell.toml` overrides.
    pub fn start_with_config(config: Option<&str>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let mut server = Self {
            url: String::new(),
            data_dir,
            child: None,
            _tmp: Some(tmp),
            config: config.map(str::to_string),
            // A transport timeout far past any call's own: a slow machine fails an assertion, not a socket.
            http: Client::builder().timeout(Duration::from_secs(300)).build().unwrap(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.arg("serve").arg("--listen").arg("127.0.0.1:0").arg("--data-dir").arg(&self.data_dir);
        if let Some(config) = &self.config {
            std::fs::create_dir_all(&self.data_dir).unwrap();
            let path = self.data_dir.join("test-config.toml");
            std::fs::write(&path, config).unwrap();
            cmd.arg("--config").arg(path);
        }
        cmd.env("INFERCELL_ADMIN_KEY", ADMIN_KEY)
            .env("INFERCELL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines.next().expect("server exited before listening").unwrap();
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.trim().to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.url = url;
        self.child = Some(child);
    }

    /// Stops the server with SIGTERM and waits for it to exit; returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.terminate();
        self.wait()
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server not running").id()
    }

    /// The server process's resident memory, in bytes (Linux).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib * 1024
    }

    /// The value of a metric line (`name{labels}`, exactly as /metrics prints it), or 0.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics", Some(ADMIN_KEY)).text().unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Whether any file under the data directory holds `needle` (test config files aside).
    pub fn data_dir_holds(&self, needle: &[u8]) -> Option<PathBuf> {
        let mut stack = vec![self.data_dir.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.file_name().is_some_and(|n| n != "test-config.toml") {
                    let bytes = std::fs::read(&path).unwrap();
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        return Some(path);
                    }
                }
            }
        }
        None
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        let child = self.child.as_ref().expect("server not running");
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    }

    /// Waits for the server process to exit (after [`Server::terminate`]). A server that is
    /// still running a minute later is killed and the test fails: a hang is a failure, never a
    /// stuck run.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server not running");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not exit within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server with SIGKILL (no chance to clean up).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("server not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts the server again on the same data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the server first");
        self.spawn();
    }

    /// Replaces the `infercell.toml` overrides the next (re)start uses.
    pub fn set_config(&mut self, config: Option<&str>) {
        self.config = config.map(str::to_string);
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> Response {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        req.send().unwrap()
    }

    pub fn delete(&self, path: &str, key: &str) -> Response {
        self.http.delete(format!("{}{path}", self.url)).bearer_auth(key).send().unwrap()
    }

    pub fn post(&self, path: &str, key: Option<&str>, body: impl Into<reqwest::blocking::Body>) -> Response {
        let mut req = self.http.post(format!("{}{path}", self.url)).body(body);
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        req.send().unwrap()
    }

    /// Creates a tenant (admin) and returns its owner key.
    pub fn tenant(&self, name: &str, plan: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/v1/tenants", self.url))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"name": name, "plan": plan}))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 201, "creating tenant {name}");
        let v: Value = resp.json().unwrap();
        v["api_key"].as_str().unwrap().to_string()
    }

    /// Uploads `component` with the manifest text; returns the raw response.
    pub fn upload(&self, key: &str, manifest: &str, component: Vec<u8>) -> Response {
        let form = reqwest::blocking::multipart::Form::new()
            .part("manifest", reqwest::blocking::multipart::Part::text(manifest.to_string()))
            .part("component", reqwest::blocking::multipart::Part::bytes(component).file_name("c.wasm"));
        self.http.post(format!("{}/v1/functions", self.url)).bearer_auth(key).multipart(form).send().unwrap()
    }

    /// Uploads a sample under its own manifest (or `name` overriding its name); asserts 201.
    pub fn deploy(&self, key: &str, sample: &str) -> Value {
        let manifest = std::fs::read_to_string(function_dir(sample).join("function.toml")).unwrap();
        let resp = self.upload(key, &manifest, component(sample));
        let status = resp.status();
        let body = resp.text().unwrap();
        assert_eq!(status, 201, "deploying {sample}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Calls a function.
    pub fn invoke(&self, key: &str, path: &str, body: &str) -> Response {
        self.post(&format!("/fn/{path}"), Some(key), body.to_string())
    }

    /// Runs the CLI against this server with `key`.
    pub fn cli(&self, key: &str, args: &[&str]) -> std::process::Output {
        Command::new(binary())
            .args(args)
            .env("INFERCELL_URL", &self.url)
            .env("INFERCELL_KEY", key)
            .current_dir(repo_root())
            .output()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The JSON error body of a response, asserting its status and shape.
pub fn expect_error(resp: Response, status: u16) -> String {
    let actual = resp.status().as_u16();
    let request_id = resp.headers().get("infercell-request-id").map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().unwrap();
    assert_eq!(actual, status, "unexpected status; body: {text}");
    let body: Value = serde_json::from_str(&text).expect("error body is JSON");
    let message = body["error"].as_str().expect("error has a message").to_string();
    assert_eq!(body["request_id"].as_str(), request_id.as_deref(), "request_id matches the header");
    message
}

impl Server {
    /// Pushes an ONNX model under `name`; returns the raw response.
    pub fn push_model(&self, key: &str, manifest: &str, onnx: Vec<u8>) -> Response {
        let form = reqwest::blocking::multipart::Form::new()
            .part("manifest", reqwest::blocking::multipart::Part::text(manifest.to_string()))
            .part("model", reqwest::blocking::multipart::Part::bytes(onnx).file_name("model.onnx"));
        self.http.post(format!("{}/v1/models", self.url)).bearer_auth(key).multipart(form).send().unwrap()
    }

    /// Pushes `samples/digits/digits.onnx` as model `digits`; asserts 201.
    pub fn push_digits(&self, key: &str) -> Value {
        let resp = self.push_model(key, "name = \"digits\"\n", digits_model());
        let status = resp.status();
        let body = resp.text().unwrap();
        assert_eq!(status, 201, "pushing digits: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// The committed digits model.
pub fn digits_model() -> Vec<u8> {
    std::fs::read(repo_root().join("samples/digits/digits.onnx")).unwrap()
}

/// `samples/digits/expected.json`: inputs with ONNX Runtime's outputs.
pub fn digits_expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_root().join("samples/digits/expected.json")).unwrap()).unwrap()
}

/// `samples/moderate-image/`, where `scripts/make-models.sh` puts open_nsfw (not committed: 23 MB),
/// its test photos and ONNX Runtime's reference outputs. Locally a test that needs them skips
/// when they are missing; under `CI=true` or `scripts/test.sh` ([`strict`]) it fails, since scripts/test.sh makes them first.
pub fn moderate_image_dir() -> Option<PathBuf> {
    let dir = repo_root().join("samples/moderate-image");
    if dir.join("open-nsfw.onnx").is_file() && dir.join("expected.json").is_file() {
        return Some(dir);
    }
    assert!(
        !strict(),
        "samples/moderate-image/open-nsfw.onnx is missing: scripts/make-models.sh must run first (scripts/test.sh does it)"
    );
    eprintln!("skipping: samples/moderate-image/open-nsfw.onnx is missing (run scripts/make-models.sh)");
    None
}

impl Server {
    /// Makes a key with `role` for the tenant of `owner_key`; returns `(id, api_key)`.
    pub fn key(&self, owner_key: &str, role: &str) -> (String, String) {
        let resp =
            self.post("/v1/keys", Some(owner_key), json!({ "role": role, "name": format!("{role} key") }).to_string());
        let status = resp.status();
        let v: Value = resp.json().unwrap();
        assert_eq!(status, 201, "creating a {role} key: {v}");
        (v["id"].as_str().unwrap().to_string(), v["api_key"].as_str().unwrap().to_string())
    }
}

/// Waits until `done()` holds, polling; fails naming `what` after a minute. Tests wait on
/// observable state this way, never on a sleep that guesses how fast the machine is.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a test whose dependency is missing must fail instead of skipping: under CI
/// (`CI=true`) and under `scripts/test.sh` (`INFERCELL_STRICT_TESTS=1`), which installs every
/// dependency first, so the suite a contributor runs is the suite CI runs.
pub fn strict() -> bool {
    std::env::var("CI").as_deref() == Ok("true") || std::env::var("INFERCELL_STRICT_TESTS").as_deref() == Ok("1")
}

/// The GPU engine with a budget of `budget` bytes, or `None` (skip) without an adapter; under
/// [`strict`] an adapter must be found.
pub fn gpu_engine(budget: u64) -> Option<infercell::nn::gpu::Wgpu> {
    let found = infercell::nn::gpu::Wgpu::discover(budget);
    if found.is_none() {
        assert!(!strict(), "scripts/test.sh installs lavapipe: a GPU adapter must be found");
        eprintln!("skipping: no Vulkan adapter (apt-get install mesa-vulkan-drivers)");
    }
    found
}

/// The FP32 values of a host tensor.
pub fn floats(t: &infercell::nn::HostTensor) -> Vec<f64> {
    t.data.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap()))).collect()
}

/// Whether ONNX Runtime is installed (`ORT_DYLIB_PATH`, which the server inherits). Locally a
/// test that needs it skips without it; under `CI=true` or `scripts/test.sh` it fails, since both install it.
pub fn onnxruntime_present() -> bool {
    if std::env::var("ORT_DYLIB_PATH").is_ok_and(|p| !p.is_empty()) {
        return true;
    }
    assert!(
        !strict(),
        "ORT_DYLIB_PATH is not set: scripts/install-onnxruntime.sh must run first (scripts/test.sh does it)"
    );
    eprintln!("skipping: ORT_DYLIB_PATH is not set (export ORT_DYLIB_PATH=\"$(scripts/install-onnxruntime.sh)\")");
    false
}
