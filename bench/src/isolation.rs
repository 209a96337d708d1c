//! `isolation`: a quiet tenant's `/v2` digits calls beside a hostile neighbour, who either
//! alternates tiny and huge inputs to the same kind of model, or keeps sending computes that run
//! past the plan's deadline (and, to tell causes apart, beside the tiny and the huge inputs
//! each alone; the hostile load is a separate client). The quiet tenant's p99 is measured alone and beside each, in
//! rounds (`--rounds`, default 3) whose medians are compared; the goal is a ratio <= 2.

use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::{Infercell, load};

/// `[1, 64]` digits rows of zeros, `batch` of them, as a `/v2` JSON request.
fn digits_request(batch: usize) -> bytes::Bytes {
    let data = vec![0.0f32; batch * 64];
    let body = serde_json::json!({
        "inputs": [{ "name": "input", "datatype": "FP32", "shape": [batch, 64], "data": data }]
    });
    bytes::Bytes::from(body.to_string())
}

fn v2(server: &Infercell, tenant: &str, model: &str, body: bytes::Bytes) -> Result<load::Target> {
    Ok(load::Target {
        url: format!("{}/v2/models/{model}/infer", server.server.url),
        bearer: Some(server.keys.get(tenant).context("key")?.clone()),
        body,
        echo: false,
        headers: Vec::new(),
    })
}

/// `priority` is the server's `nn.compute_priority` (`idle`, the default, or `low`).
pub async fn run(seconds: u64, rounds: usize, priority: &str) -> Result<()> {
    let config = format!("[plans.standard]\nmodel_timeout = \"500ms\"\n[nn]\ncompute_priority = \"{priority}\"\n");
    let server = Infercell::start(&config, &[("quiet", "standard"), ("hostile", "standard")])?;
    let digits = std::fs::read(crate::repo_root().join("samples/digits/digits.onnx"))?;
    for tenant in ["quiet", "hostile"] {
        server.push_model(tenant, "digits", &digits)?;
    }
    // 48 products of 1024 x 1024 matrices (100 GFLOP): seconds of work, cut at 500 ms.
    server.push_model("hostile", "slow", &infercell_tests::onnx::matmul_chain(48))?;
    let quiet = v2(&server, "quiet", "digits", digits_request(1))?;
    let tiny = v2(&server, "hostile", "digits", digits_request(1))?;
    let huge = v2(&server, "hostile", "digits", digits_request(4096))?;
    let slow = v2(
        &server,
        "hostile",
        "slow",
        bytes::Bytes::from(r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0.001]}]}"#),
    )?;
    let duration = Duration::from_secs(seconds);
    load::run(&quiet, 4, Duration::from_secs(1)).await?;
    // Rounds of: alone, beside tiny + huge inputs, beside computes cut at their deadline; the
    // medians are compared (on a shared machine one phase's p99 alone swings run to run).
    let paced = load::Mode::Paced(Duration::from_millis(1));
    let (mut alone, mut sizes, mut deadline, mut cut) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut tiny_only, mut huge_only) = (Vec::new(), Vec::new());
    // The hostile client runs on a thread and runtime of its own (see `load::run_apart`).
    let apart = |target: &load::Target, connections| load::run_apart(target, connections, duration, paced);
    let join = |h: std::thread::JoinHandle<Result<load::Report>>| h.join().map_err(|_| anyhow::anyhow!("panicked"))?;
    for _ in 0..rounds {
        alone.push(load::run(&quiet, 4, duration).await?);
        // Tiny and huge inputs, one connection each, back to back (any status accepted).
        let (t, h) = (apart(&tiny, 1), apart(&huge, 1));
        sizes.push(load::run(&quiet, 4, duration).await?);
        join(t)?;
        join(h)?;
        // Each alone, to tell which of the two costs the neighbour.
        let t = apart(&tiny, 1);
        tiny_only.push(load::run(&quiet, 4, duration).await?);
        join(t)?;
        let h = apart(&huge, 1);
        huge_only.push(load::run(&quiet, 4, duration).await?);
        join(h)?;
        // Two connections of computes cut at their deadline (504 each).
        let s = apart(&slow, 2);
        deadline.push(load::run(&quiet, 4, duration).await?);
        cut.push(join(s)?);
    }
    println!(
        "isolation: quiet tenant (/v2 digits, 4 closed-loop connections) beside a hostile one, compute threads at priority {priority}, {rounds} rounds of {seconds} s, medians:"
    );
    println!("  {:<40} {:>10} {:>10} {:>10}   p99 ms of each round", "", "req/s", "p50 ms", "p99 ms");
    let median = |runs: &[load::Report], f: fn(&load::Report) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (name, runs) in [
        ("quiet alone", &alone),
        ("beside tiny + huge (4096-row) inputs", &sizes),
        ("beside computes past their deadline", &deadline),
        ("beside tiny only", &tiny_only),
        ("beside huge only", &huge_only),
    ] {
        let each: Vec<String> = runs.iter().map(|r| format!("{:.2}", r.p99_ms)).collect();
        println!(
            "  {:<40} {:>10.0} {:>10.3} {:>10.3}   {}",
            name,
            median(runs, |r| r.rps),
            median(runs, |r| r.p50_ms),
            median(runs, |r| r.p99_ms),
            each.join(" ")
        );
    }
    println!(
        "  hostile computes cut at 500 ms: {:.1}/s, p50 {:.0} ms",
        median(&cut, |r| r.rps),
        median(&cut, |r| r.p50_ms)
    );
    let alone_p99 = median(&alone, |r| r.p99_ms);
    println!(
        "  p99 ratio: sizes {:.2}, deadline {:.2}   (goal <= 2.0)",
        median(&sizes, |r| r.p99_ms) / alone_p99,
        median(&deadline, |r| r.p99_ms) / alone_p99
    );
    use crate::report::{Better, figure};
    figure("isolation quiet p99 alone", alone_p99, "ms", Better::Lower);
    figure("isolation p99 ratio sizes", median(&sizes, |r| r.p99_ms) / alone_p99, "x", Better::Lower);
    figure("isolation p99 ratio deadline", median(&deadline, |r| r.p99_ms) / alone_p99, "x", Better::Lower);
    Ok(())
}
