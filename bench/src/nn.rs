//! Inference benchmarks (issue 3, P4 and P5), on the digits MLP and on open_nsfw (ResNet-50):
//! - P5: each engine run natively (no WebAssembly at all), beside ONNX Runtime native.
//! - P4: the same model called from its sample guest through wasi:nn (fresh store, input
//!   parsing and preprocessing in the sandbox, tensor copies across the boundary), beside the
//!   same work done natively (for the CNN: the same `image` crate decode, resize and layout,
//!   then the engine): the difference is what the sandbox adds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use infercell::nn::onnxruntime::OnnxRuntime;
use infercell::nn::tract::Tract;
use infercell::nn::{ElemType, Engine, Graphs, HostTensor};
use infercell::runtime::nn::{BoxFuture, Located, ModelPin, ModelSource, NnAccess};
use infercell::runtime::{Grants, GuestRequest, Limits, Runtime, RuntimeConfig};

use crate::repo_root;

/// One model of a sample, and the guest that calls it.
struct Workload {
    /// The component in samples/target or tests/guests/target, without `.wasm`.
    component: &'static str,
    /// The request's path and query.
    path: &'static str,
    query: String,
    /// The name the guest loads the model by.
    model: &'static str,
    onnx: Vec<u8>,
    /// The guest's request body.
    body: Vec<u8>,
    warmup: u32,
}

/// Serves one model from memory.
struct OneModel(&'static str, Vec<u8>);

impl ModelSource for OneModel {
    fn lookup<'a>(&'a self, _tenant: &'a str, name: &'a str, _pin: &'a ModelPin) -> BoxFuture<'a, Option<Located>> {
        Box::pin(async move {
            (name == self.0).then(|| Located {
                digest: format!("sha256:bench-{name}"),
                selector: "auto".to_string(),
                version: 1,
            })
        })
    }
    fn read(&self, _digest: &str) -> anyhow::Result<Vec<u8>> {
        Ok(self.1.clone())
    }
}

/// Mean time of `run` over `iters` calls after `warmup` calls.
fn time(warmup: u32, iters: u32, mut run: impl FnMut() -> Result<()>) -> Result<Duration> {
    for _ in 0..warmup {
        run()?;
    }
    let started = Instant::now();
    for _ in 0..iters {
        run()?;
    }
    Ok(started.elapsed() / iters)
}

/// The engine called natively: `input` builds the input tensor (preprocessing included).
fn time_native(
    engine: &dyn Engine,
    work: &Workload,
    iters: u32,
    input: impl Fn() -> Result<(String, HostTensor)>,
) -> Result<Duration> {
    let model = engine.load(&work.onnx).map_err(|e| anyhow::anyhow!("{e}"))?;
    time(work.warmup, iters, || {
        model.run(vec![input()?]).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    })
}

/// Mean time of a guest call, and of the part of it spent outside host inference.
async fn time_guest(engine: Arc<dyn Engine>, work: &Workload, iters: u32) -> Result<(Duration, Duration)> {
    let tmp = tempfile::tempdir()?;
    let dir = cap_std::fs::Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority())?;
    let runtime = Runtime::new(RuntimeConfig::default(), dir)?;
    let wasm = ["samples", "tests/guests"]
        .iter()
        .map(|dir| repo_root().join(format!("{dir}/target/wasm32-wasip2/release/{}.wasm", work.component)))
        .find_map(|path| std::fs::read(path).ok())
        .with_context(|| format!("{}.wasm missing: run scripts/build-samples.sh", work.component))?;
    let prepared = runtime.prepare_new("sha256:bench", &wasm).map_err(|e| anyhow::anyhow!("{e}"))?;
    let graphs = Arc::new(Graphs::new(vec![engine], 1 << 30, 1));
    let access = NnAccess {
        tenant: "bench".into(),
        models: [(work.model.to_string(), ModelPin::Current)].into(),
        gpu: false,
        load_bytes: false,
        max_model_bytes: 1 << 30,
        graphs,
        source: Arc::new(OneModel(work.model, work.onnx.clone())),
    };
    let limits = Limits { memory_bytes: 128 << 20, timeout: Duration::from_secs(30), fuel: None };
    let grants = Grants { nn: Some(access), ..Grants::default() };
    let call = || async {
        let req = GuestRequest {
            method: "POST".into(),
            path: work.path.into(),
            query: work.query.clone(),
            body: work.body.clone(),
            ..Default::default()
        };
        let outcome = runtime.invoke(&prepared, &limits, &grants, req).await;
        match outcome.result {
            Ok(r) if r.status == 200 => {
                Ok(outcome.usage.wall.saturating_sub(outcome.usage.nn.cpu + outcome.usage.nn.gpu))
            }
            other => anyhow::bail!("{} failed: {other:?}", work.component),
        }
    };
    for _ in 0..work.warmup {
        call().await?;
    }
    let started = Instant::now();
    let mut outside_nn = Duration::ZERO;
    for _ in 0..iters {
        outside_nn += call().await?;
    }
    Ok((started.elapsed() / iters, outside_nn / iters))
}

/// open_nsfw's preprocessing natively, with the same `image` crate operations the guest SDK
/// uses: decode, resize to 256x256 (triangle filter), center crop 224, BGR minus the Caffe means.
fn open_nsfw_input(jpeg: &[u8]) -> Result<(String, HostTensor)> {
    let rgb = image::load_from_memory(jpeg)?.to_rgb8();
    let resized = image::imageops::resize(&rgb, 256, 256, image::imageops::FilterType::Triangle);
    let crop = image::imageops::crop_imm(&resized, 16, 16, 224, 224).to_image();
    let mut data = Vec::with_capacity(224 * 224 * 3 * 4);
    for pixel in crop.pixels() {
        for (channel, mean) in [(2, 104.0f32), (1, 117.0), (0, 123.0)] {
            data.extend_from_slice(&(f32::from(pixel[channel]) - mean).to_le_bytes());
        }
    }
    let tensor = HostTensor::new(vec![1, 224, 224, 3], ElemType::F32, data).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(("input:0".into(), tensor))
}

/// One engine's row: native and guest call times, what the guest adds, the ratio, and the
/// guest call's time outside host inference (instantiation, parsing, preprocessing, copies).
fn print_row(what: &str, engine: &str, native: Duration, (guest, outside_nn): (Duration, Duration), unit: f64) {
    let units = if unit > 1e5 { "us" } else { "ms" };
    let row = format!("nn {what} {engine} {units}");
    use crate::report::{Better, figure};
    figure(format!("{row} native"), native.as_secs_f64() * unit, units, Better::Lower);
    figure(format!("{row} guest"), guest.as_secs_f64() * unit, units, Better::Lower);
    figure(format!("{row} added"), (guest.as_secs_f64() - native.as_secs_f64()) * unit, units, Better::Lower);
    println!(
        "  {:<14} {:>14.2} {:>20.2} {:>12.2} {:>8.3} {:>16.2}",
        engine,
        native.as_secs_f64() * unit,
        guest.as_secs_f64() * unit,
        (guest.as_secs_f64() - native.as_secs_f64()) * unit,
        guest.as_secs_f64() / native.as_secs_f64(),
        outside_nn.as_secs_f64() * unit,
    );
}

pub async fn run(iters: u32) -> Result<()> {
    let mut engines: Vec<Arc<dyn Engine>> = vec![Arc::new(Tract)];
    match std::env::var("ORT_DYLIB_PATH") {
        Ok(path) if !path.is_empty() => engines.push(Arc::new(OnnxRuntime::load(std::path::Path::new(&path))?)),
        _ => eprintln!("ORT_DYLIB_PATH unset: ONNX Runtime rows skipped (scripts/install-onnxruntime.sh)"),
    }
    let header = |unit: &str| {
        println!(
            "  {:<14} {:>14} {:>20} {:>12} {:>8} {:>16}",
            "engine",
            format!("native {unit}"),
            format!("guest+wasi:nn {unit}"),
            format!("added {unit}"),
            "ratio",
            format!("guest non-nn {unit}"),
        )
    };

    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("samples/digits/expected.json"))?)?;
    let raw = &expected["cases"][0]["pixels"];
    let scaled: Vec<u8> = raw
        .as_array()
        .context("pixels")?
        .iter()
        .flat_map(|p| (p.as_f64().unwrap_or(0.0) as f32 / 16.0).to_le_bytes())
        .collect();
    let digits = Workload {
        component: "digits",
        path: "/",
        query: String::new(),
        model: "digits",
        onnx: std::fs::read(repo_root().join("samples/digits/digits.onnx"))?,
        body: serde_json::json!({ "pixels": raw }).to_string().into_bytes(),
        warmup: 200,
    };
    let digits_input = || {
        let input = HostTensor::new(vec![1, 64], ElemType::F32, scaled.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(("input".to_string(), input))
    };
    println!("digits MLP (64 -> 32 -> 10), batch 1, {iters} calls each, one thread:");
    header("us");
    let mut native_ort = None;
    for engine in &engines {
        let native = time_native(engine.as_ref(), &digits, iters, digits_input)?;
        let guest = time_guest(engine.clone(), &digits, iters).await?;
        if engine.name() == "onnxruntime" {
            native_ort = Some(native);
        }
        print_row("digits", engine.name(), native, guest, 1e6);
    }
    if let Some(ort) = native_ort {
        let tract = time_native(engines[0].as_ref(), &digits, iters, digits_input)?;
        println!("  P5: tract native / ONNX Runtime native = {:.2}", tract.as_secs_f64() / ort.as_secs_f64());
    }
    println!("  P4 goal: added latency <= 25 us for an MLP (fresh sandbox + JSON + wasi:nn per call)");

    let dir = repo_root().join("samples/moderate-image");
    let Ok(onnx) = std::fs::read(dir.join("open-nsfw.onnx")) else {
        eprintln!("samples/moderate-image/open-nsfw.onnx missing: CNN rows skipped (scripts/make-models.sh)");
        return Ok(());
    };
    let jpeg = std::fs::read(dir.join("testdata/landscape.jpg"))?;
    let cnn_iters = (iters / 100).max(10);
    let (input_name, tensor) = open_nsfw_input(&jpeg)?;
    let raw = Workload {
        component: "hostile",
        path: "/raw",
        query: format!("model=open-nsfw&input={input_name}&shape=1,224,224,3"),
        model: "open-nsfw",
        onnx: onnx.clone(),
        body: tensor.data.clone(),
        warmup: 5,
    };
    println!("\nopen_nsfw ResNet-50, batch 1, the preprocessed tensor in and the scores out, {cnn_iters} calls each:");
    header("ms");
    for engine in &engines {
        let native = time_native(engine.as_ref(), &raw, cnn_iters, || Ok((input_name.clone(), tensor.clone())))?;
        let guest = time_guest(engine.clone(), &raw, cnn_iters).await?;
        print_row("open_nsfw", engine.name(), native, guest, 1e3);
    }
    println!("  P4 goal: ratio <= 1.03 for a CNN (fresh sandbox, 602 KB tensor copied in, wasi:nn per call)");

    let cnn = Workload {
        component: "moderate_image",
        path: "/",
        query: String::new(),
        model: "open-nsfw",
        onnx,
        body: jpeg.clone(),
        warmup: 5,
    };
    let preprocess = time(3, cnn_iters, || open_nsfw_input(&jpeg).map(|_| ()))?;
    println!(
        "\nmoderate-image: open_nsfw on a 640x427 JPEG, preprocessing (decode, resize, crop, BGR) in the guest vs natively, {cnn_iters} calls each:"
    );
    header("ms");
    let mut native_ort = None;
    for engine in &engines {
        let native = time_native(engine.as_ref(), &cnn, cnn_iters, || open_nsfw_input(&jpeg))?;
        let guest = time_guest(engine.clone(), &cnn, cnn_iters).await?;
        if engine.name() == "onnxruntime" {
            native_ort = Some(native);
        }
        print_row("moderate-image", engine.name(), native, guest, 1e3);
    }
    if let Some(ort) = native_ort {
        let tract = time_native(engines[0].as_ref(), &cnn, cnn_iters, || open_nsfw_input(&jpeg))?;
        println!("  P5: tract native / ONNX Runtime native = {:.2}", tract.as_secs_f64() / ort.as_secs_f64());
    }
    println!("  native preprocessing alone: {:.2} ms", preprocess.as_secs_f64() * 1e3);
    Ok(())
}
