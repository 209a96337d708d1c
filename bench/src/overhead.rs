//! `overhead`: what the operations features cost a call in the hot path, in process.
//!
//! - Model monitoring: the statistics of one compute's inputs and outputs (`observe_inputs` and
//!   `Monitors::record`), for the digits MLP's shapes (64 features, 10 classes) and open_nsfw's
//!   (a 224x224x3 image, summarized; 2 classes), beside the engine's own compute of digits.
//! - Tracing off: the call's spans as the server makes them with no OTLP endpoint (the logger
//!   installed, the `request` span enabled for the request id, the phase spans disabled),
//!   beside the same future without spans.

use std::time::{Duration, Instant};

use anyhow::Result;
use infercell::nn::monitor::{Monitors, observe_inputs};
use infercell::nn::{ElemType, HostTensor};
use tracing::Instrument as _;

use crate::report::{Better, figure};

fn tensor(dims: &[u32], values: impl Iterator<Item = f32>) -> HostTensor {
    HostTensor { dims: dims.to_vec(), ty: ElemType::F32, data: values.flat_map(f32::to_le_bytes).collect() }
}

fn per_call(iters: u32, mut f: impl FnMut(u32)) -> Duration {
    for i in 0..iters / 10 {
        f(i);
    }
    let started = Instant::now();
    for i in 0..iters {
        f(i);
    }
    started.elapsed() / iters
}

pub async fn run(iters: u32) -> Result<()> {
    println!("overhead per call, in process, {iters} calls each (median of 5 rounds):");
    let monitors = Monitors::default();
    let shapes = [
        ("digits (1x64 in, 1x10 out)", vec![1, 64], vec![1, 10]),
        ("open_nsfw (1x224x224x3 in, 1x2 out)", vec![1, 224, 224, 3], vec![1, 2]),
    ];
    for (name, input_dims, output_dims) in shapes {
        let elements: u32 = input_dims.iter().product();
        let classes = output_dims[1];
        let median = median_of(5, || {
            per_call(iters, |i| {
                let inputs = vec![("x".to_string(), tensor(&input_dims, (0..elements).map(|e| ((e + i) % 17) as f32)))];
                let outputs = vec![("p".to_string(), tensor(&output_dims, (0..classes).map(|c| ((c + i) % 3) as f32)))];
                let observed = observe_inputs(&inputs);
                monitors.record("bench", name, 1, &observed, &outputs);
            })
        });
        // The tensors' own making, to subtract.
        let making = median_of(5, || {
            per_call(iters, |i| {
                let inputs = vec![("x".to_string(), tensor(&input_dims, (0..elements).map(|e| ((e + i) % 17) as f32)))];
                let outputs = vec![("p".to_string(), tensor(&output_dims, (0..classes).map(|c| ((c + i) % 3) as f32)))];
                std::hint::black_box((inputs, outputs));
            })
        });
        let cost = median.saturating_sub(making);
        println!("  monitoring, {name:<38} {:>8.2} us", cost.as_secs_f64() * 1e6);
        figure(format!("monitoring {name} us"), cost.as_secs_f64() * 1e6, "us", Better::Lower);
    }

    // The server's logger, no OTLP endpoint: tracing off.
    let config = infercell::config::Config::embedded();
    let telemetry = infercell::telemetry::init(&config.telemetry, tokio::runtime::Handle::current())?;
    let headers = http::HeaderMap::new();
    let method = http::Method::POST;
    let mut spanned = Vec::new();
    let mut bare = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        for i in 0..iters {
            let id = format!("{i:032x}");
            let span = infercell::telemetry::request_span(&id, &method, "/fn/bench/echo", &headers);
            async {
                for phase in 0..6u32 {
                    async { std::hint::black_box(phase) }
                        .instrument(tracing::debug_span!(target: "infercell::call", "phase"))
                        .await;
                }
            }
            .instrument(span)
            .await;
        }
        spanned.push(started.elapsed() / iters);
        let started = Instant::now();
        for i in 0..iters {
            let id = format!("{i:032x}");
            std::hint::black_box(&id);
            async {
                for phase in 0..6u32 {
                    async { std::hint::black_box(phase) }.await;
                }
            }
            .await;
        }
        bare.push(started.elapsed() / iters);
    }
    let cost = median(spanned).saturating_sub(median(bare));
    println!("  tracing off: request span + 6 phase spans {:>8.2} us", cost.as_secs_f64() * 1e6);
    figure("tracing off, spans of one call us", cost.as_secs_f64() * 1e6, "us", Better::Lower);
    telemetry.shutdown();
    Ok(())
}

fn median_of(rounds: usize, mut f: impl FnMut() -> Duration) -> Duration {
    median((0..rounds).map(|_| f()).collect())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
