//! A small closed-loop HTTP/1.1 load generator: C keep-alive connections, each sending the
//! next request as soon as the previous answer arrives, for a fixed time.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use http_body_util::{BodyExt as _, Full};

#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub bearer: Option<String>,
    /// The request body; a closed-loop run expects 200, and this body back when `echo`.
    pub body: bytes::Bytes,
    pub echo: bool,
    /// Extra request headers (e.g. `inference-header-content-length` for binary tensors).
    pub headers: Vec<(String, String)>,
}

impl Target {
    /// An echo target: posts `hello, sandbox` and expects it back.
    pub fn echo(url: String, bearer: Option<String>) -> Self {
        Self { url, bearer, body: bytes::Bytes::from_static(b"hello, sandbox"), echo: true, headers: Vec::new() }
    }
}

/// How a run sends: closed loop (next request when the answer arrives) or paced.
#[derive(Clone, Copy)]
pub enum Mode {
    ClosedLoop,
    /// Each connection sends one request per interval (open loop); any status is accepted,
    /// for a tenant flooding past its quota.
    Paced(Duration),
}

pub struct Report {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub async fn run(target: &Target, connections: usize, duration: Duration) -> Result<Report> {
    run_mode(target, connections, duration, Mode::ClosedLoop).await
}

pub async fn run_mode(target: &Target, connections: usize, duration: Duration, mode: Mode) -> Result<Report> {
    let uri: hyper::Uri = target.url.parse()?;
    let authority = uri.authority().context("url has no host")?.to_string();
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (uri, authority, bearer) = (uri.clone(), authority.clone(), target.bearer.clone());
        let (payload, echo, headers) = (target.body.clone(), target.echo, target.headers.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&authority).await?;
            let mut latencies = Vec::new();
            let mut next = Instant::now();
            while Instant::now() < deadline {
                if let Mode::Paced(interval) = mode {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                // Origin-form request target (`/path`), as browsers and curl send it.
                let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let mut req = hyper::Request::post(target).header("host", authority.as_str());
                if let Some(b) = &bearer {
                    req = req.header("authorization", format!("Bearer {b}"));
                }
                for (name, value) in &headers {
                    req = req.header(name.as_str(), value.as_str());
                }
                let req = req.header("content-type", "application/json").body(Full::new(payload.clone()))?;
                let t = Instant::now();
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                if let Mode::ClosedLoop = mode {
                    anyhow::ensure!(status == 200, "status {status}");
                    anyhow::ensure!(!echo || body == payload, "wrong body");
                }
                latencies.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0)
    };
    Ok(Report { rps: all.len() as f64 / elapsed, p50_ms: pct(0.50), p99_ms: pct(0.99) })
}

/// One keep-alive HTTP/1.1 connection to `authority` (`host:port`), its driver spawned.
pub async fn connect(authority: &str) -> Result<hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>>> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Runs [`run_mode`] on a thread and runtime of its own, as a separate client would: its
/// connections' I/O (megabyte bodies) never waits in the same task queues as the measured ones.
pub fn run_apart(
    target: &Target,
    connections: usize,
    duration: Duration,
    mode: Mode,
) -> std::thread::JoinHandle<Result<Report>> {
    let target = target.clone();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run_mode(
            &target,
            connections,
            duration,
            mode,
        ))
    })
}
