//! The fast CPU engine where present: ONNX Runtime through the `ort` crate.
//!
//! `ort` is built with `load-dynamic`: nothing is linked or downloaded at build time, and the
//! server loads the `libonnxruntime.so` shipped in PyPI's `onnxruntime` wheel at start-up
//! (`[nn] onnxruntime` or `ORT_DYLIB_PATH`; `scripts/install-onnxruntime.sh` installs it). When
//! that fails the server runs on tract alone, so ONNX Runtime is an accelerator, never a
//! requirement.
//!
//! This module owns the process's one ONNX Runtime environment and, per loaded model, a pool of
//! sessions. `ort`'s `Session::run` takes `&mut self`, and one global lock around a session
//! would serialize every caller of a popular model; instead a call takes a free session from
//! the pool (or builds one more from the kept model bytes), runs, and puts it back, so the pool
//! grows to the number of calls that ever ran at once (bounded by the compute pool). Each
//! session uses one intra-op thread: the host's compute pool already parallelises calls.
//!
//! Inputs are checked exactly as the tract engine checks them, with the same messages, so a
//! guest sees the same errors whichever engine runs its model.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use half::f16;
use ort::environment::Environment;
use ort::session::Session;
use ort::value::{DynValue, PrimitiveTensorElementType, Tensor, TensorElementType, ValueType};

use super::{ElemType, Engine, ErrorCode, HostTensor, LoadedModel, NnError, TensorInfo, match_inputs};

/// The process's ONNX Runtime environment: `ort` allows one, so every [`OnnxRuntime`] shares it.
static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// The ONNX Runtime engine.
pub struct OnnxRuntime {
    environment: Environment,
}

impl OnnxRuntime {
    /// Loads the ONNX Runtime shared library at `path` and creates the environment (once per
    /// process; later calls reuse it, whatever their path).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut slot = ENVIRONMENT.lock().map_err(|_| anyhow::anyhow!("ONNX Runtime environment lock poisoned"))?;
        if let Some(environment) = slot.as_ref() {
            return Ok(Self { environment: environment.clone() });
        }
        let environment = ort::init_from(path)
            .with_context(|| format!("loading ONNX Runtime from {}", path.display()))?
            .with_name("infercell")
            .with_telemetry(false)
            .build()
            .context("creating the ONNX Runtime environment")?;
        *slot = Some(environment.clone());
        Ok(Self { environment })
    }

    fn session(&self, onnx: &[u8]) -> Result<Session, ort::Error> {
        Session::builder(&self.environment)?.with_intra_threads(1)?.with_inter_threads(1)?.commit_from_memory(onnx)
    }
}

struct OrtModel {
    engine: OnnxRuntime,
    /// Kept to build more sessions when every pooled one is busy.
    onnx: Vec<u8>,
    idle: Mutex<Vec<Session>>,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    /// Nodes of the ONNX graph.
    nodes: u32,
}

impl Engine for OnnxRuntime {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn load(&self, onnx: &[u8]) -> Result<Arc<dyn LoadedModel>, NnError> {
        let session = self.session(onnx).map_err(|e| match e.code() {
            ort::ErrorCode::InvalidProtobuf | ort::ErrorCode::NoModel => {
                NnError::new(ErrorCode::InvalidEncoding, format!("not an ONNX model: {}", e.message()))
            }
            _ => NnError::new(
                ErrorCode::UnsupportedOperation,
                format!("ONNX Runtime cannot run this model: {}", e.message()),
            ),
        })?;
        let inputs = describe(session.inputs().iter().map(|o| (o.name(), o.dtype())))?;
        let outputs = describe(session.outputs().iter().map(|o| (o.name(), o.dtype())))?;
        Ok(Arc::new(OrtModel {
            engine: OnnxRuntime { environment: self.environment.clone() },
            onnx: onnx.to_vec(),
            idle: Mutex::new(vec![session]),
            inputs,
            outputs,
            nodes: tract_onnx::prelude::Framework::proto_model_for_read(
                &tract_onnx::onnx(),
                &mut std::io::Cursor::new(onnx),
            )
            .ok()
            .and_then(|m| m.graph.map(|g| g.node.len() as u32))
            .unwrap_or(0),
        }))
    }
}

impl LoadedModel for OrtModel {
    fn engine(&self) -> &'static str {
        "onnxruntime"
    }

    fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    fn nodes(&self) -> u32 {
        self.nodes
    }

    fn run(&self, given: Vec<(String, HostTensor)>) -> Result<Vec<(String, HostTensor)>, NnError> {
        self.run_until(given, None)
    }

    /// ONNX Runtime allocates inside the session: only the deadline is enforced here, and the
    /// outputs are checked against the bytes by the caller.
    fn run_bounded(
        &self,
        inputs: Vec<(String, HostTensor)>,
        bounds: &super::Bounds<'_>,
    ) -> Result<(Vec<(String, HostTensor)>, super::Placement), NnError> {
        let outputs = self.run_until(inputs, Some(bounds.cancel))?;
        Ok((outputs, super::Placement { cpu_nodes: self.nodes, ..super::Placement::default() }))
    }
}

impl OrtModel {
    /// Runs a pooled session; `cancel` sets ONNX Runtime's terminate flag for this run.
    fn run_until(
        &self,
        given: Vec<(String, HostTensor)>,
        cancel: Option<&super::Cancel>,
    ) -> Result<Vec<(String, HostTensor)>, NnError> {
        let tensors = match_inputs(&self.inputs, given)?;
        let ordered: Vec<(String, DynValue)> = self
            .inputs
            .iter()
            .zip(&tensors)
            .map(|(info, tensor)| Ok((info.name.clone(), to_ort(tensor)?)))
            .collect::<Result<_, NnError>>()?;

        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut session = match pooled {
            Some(session) => session,
            None => self.engine.session(&self.onnx).map_err(runtime_error)?,
        };
        let options = match cancel {
            None => None,
            Some(cancel) => {
                let options = std::sync::Arc::new(ort::session::RunOptions::new().map_err(runtime_error)?);
                let stop = options.clone();
                let hook = cancel.on_cancel(move || {
                    let _ = stop.terminate();
                });
                Some((options, cancel, hook))
            }
        };
        let run = match &options {
            Some((options, _, _)) => session.run_with_options(ordered, options),
            None => session.run(ordered),
        };
        if let Some((_, cancel, hook)) = &options {
            cancel.forget(*hook);
        }
        let result = run
            .map_err(|e| {
                if cancel.is_some_and(super::Cancel::is_cancelled) { super::Cancel::error() } else { runtime_error(e) }
            })
            .and_then(|outputs| {
                self.outputs
                    .iter()
                    .zip(outputs.values())
                    .map(|(info, value)| Ok((info.name.clone(), from_ort(&value)?)))
                    .collect::<Result<Vec<_>, NnError>>()
            });
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(session);
        }
        result
    }
}

fn runtime_error(e: ort::Error) -> NnError {
    NnError::new(ErrorCode::RuntimeError, e.message().to_string())
}

fn describe<'a>(outlets: impl Iterator<Item = (&'a str, &'a ValueType)>) -> Result<Vec<TensorInfo>, NnError> {
    outlets
        .map(|(name, dtype)| match dtype {
            ValueType::Tensor { ty, shape, .. } => Ok(TensorInfo {
                name: name.to_string(),
                datatype: element_name(*ty).to_string(),
                shape: shape.iter().map(|d| if *d < 0 { -1 } else { *d }).collect(),
            }),
            other => Err(NnError::new(
                ErrorCode::UnsupportedOperation,
                format!("`{name}` is a {other}, not a tensor: wasi:nn carries tensors only"),
            )),
        })
        .collect()
}

fn element_name(ty: TensorElementType) -> &'static str {
    match ty {
        TensorElementType::Bool => "BOOL",
        TensorElementType::Uint8 => "UINT8",
        TensorElementType::Uint16 => "UINT16",
        TensorElementType::Uint32 => "UINT32",
        TensorElementType::Uint64 => "UINT64",
        TensorElementType::Int8 => "INT8",
        TensorElementType::Int16 => "INT16",
        TensorElementType::Int32 => "INT32",
        TensorElementType::Int64 => "INT64",
        TensorElementType::Float16 => "FP16",
        TensorElementType::Bfloat16 => "BF16",
        TensorElementType::Float32 => "FP32",
        TensorElementType::Float64 => "FP64",
        TensorElementType::String => "BYTES",
        _ => "UNSUPPORTED",
    }
}

fn typed_vec<T, const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect()
}

fn to_ort(t: &HostTensor) -> Result<DynValue, NnError> {
    let shape: Vec<i64> = t.dims.iter().map(|d| i64::from(*d)).collect();
    let value = match t.ty {
        ElemType::F32 => Tensor::from_array((shape, typed_vec(&t.data, f32::from_le_bytes))).map(Tensor::into_dyn),
        ElemType::F64 => Tensor::from_array((shape, typed_vec(&t.data, f64::from_le_bytes))).map(Tensor::into_dyn),
        ElemType::F16 => Tensor::from_array((shape, typed_vec(&t.data, f16::from_le_bytes))).map(Tensor::into_dyn),
        ElemType::U8 => Tensor::from_array((shape, t.data.clone())).map(Tensor::into_dyn),
        ElemType::I32 => Tensor::from_array((shape, typed_vec(&t.data, i32::from_le_bytes))).map(Tensor::into_dyn),
        ElemType::I64 => Tensor::from_array((shape, typed_vec(&t.data, i64::from_le_bytes))).map(Tensor::into_dyn),
        ElemType::Bool => {
            Tensor::from_array((shape, t.data.iter().map(|b| *b != 0).collect::<Vec<bool>>())).map(Tensor::into_dyn)
        }
        ElemType::I8 => Tensor::from_array((shape, typed_vec(&t.data, i8::from_le_bytes))).map(Tensor::into_dyn),
        ElemType::I16 => Tensor::from_array((shape, typed_vec(&t.data, i16::from_le_bytes))).map(Tensor::into_dyn),
        ElemType::U16 => Tensor::from_array((shape, typed_vec(&t.data, u16::from_le_bytes))).map(Tensor::into_dyn),
        ElemType::U32 => Tensor::from_array((shape, typed_vec(&t.data, u32::from_le_bytes))).map(Tensor::into_dyn),
        ElemType::U64 => Tensor::from_array((shape, typed_vec(&t.data, u64::from_le_bytes))).map(Tensor::into_dyn),
        ElemType::Bf16 => {
            return Err(NnError::new(ErrorCode::UnsupportedOperation, "the onnxruntime engine has no BF16 tensors"));
        }
    };
    value.map_err(|e| NnError::new(ErrorCode::InvalidArgument, e.message().to_string()))
}

fn from_ort(value: &DynValue) -> Result<HostTensor, NnError> {
    let ty = value.dtype().tensor_type();
    match ty {
        Some(TensorElementType::Float32) => extract(value, ElemType::F32, f32::to_le_bytes),
        Some(TensorElementType::Float64) => extract(value, ElemType::F64, f64::to_le_bytes),
        Some(TensorElementType::Float16) => extract(value, ElemType::F16, f16::to_le_bytes),
        Some(TensorElementType::Uint8) => extract(value, ElemType::U8, u8::to_le_bytes),
        Some(TensorElementType::Int32) => extract(value, ElemType::I32, i32::to_le_bytes),
        Some(TensorElementType::Int64) => extract(value, ElemType::I64, i64::to_le_bytes),
        Some(TensorElementType::Bool) => extract(value, ElemType::Bool, |b: bool| [u8::from(b)]),
        Some(TensorElementType::Int8) => extract(value, ElemType::I8, i8::to_le_bytes),
        Some(TensorElementType::Int16) => extract(value, ElemType::I16, i16::to_le_bytes),
        Some(TensorElementType::Uint16) => extract(value, ElemType::U16, u16::to_le_bytes),
        Some(TensorElementType::Uint32) => extract(value, ElemType::U32, u32::to_le_bytes),
        Some(TensorElementType::Uint64) => extract(value, ElemType::U64, u64::to_le_bytes),
        Some(other) => Err(NnError::new(
            ErrorCode::UnsupportedOperation,
            format!("output type {} is not supported", element_name(other)),
        )),
        None => Err(NnError::new(ErrorCode::UnsupportedOperation, format!("output {} is not a tensor", value.dtype()))),
    }
}

fn extract<T: PrimitiveTensorElementType + Copy, const N: usize>(
    value: &DynValue,
    ty: ElemType,
    to_bytes: impl Fn(T) -> [u8; N],
) -> Result<HostTensor, NnError> {
    let (shape, data) = value.try_extract_tensor::<T>().map_err(runtime_error)?;
    let dims = shape.iter().map(|d| u32::try_from(*d).unwrap_or(u32::MAX)).collect();
    Ok(HostTensor { dims, ty, data: data.iter().flat_map(|v| to_bytes(*v)).collect() })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::nn::tract::Tract;

    /// The engine from `ORT_DYLIB_PATH`; `None` (skip) locally without it, a failure under CI.
    fn engine() -> Option<OnnxRuntime> {
        match std::env::var("ORT_DYLIB_PATH") {
            Ok(path) if !path.is_empty() => Some(OnnxRuntime::load(Path::new(&path)).unwrap()),
            _ => {
                assert!(!crate::nn::strict_tests(), "run scripts/install-onnxruntime.sh first");
                None
            }
        }
    }

    #[test]
    fn loads_describes_and_refuses_like_tract() {
        let Some(ort) = engine() else { return };
        let onnx = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../samples/digits/digits.onnx")).unwrap();
        let garbage = ort.load(b"this is not an onnx model").err().unwrap();
        assert_eq!(garbage.code, ErrorCode::InvalidEncoding);
        assert!(garbage.message.starts_with("not an ONNX model: "), "{}", garbage.message);

        let (a, b) = (ort.load(&onnx).unwrap(), Tract.load(&onnx).unwrap());
        assert_eq!(serde_json::to_value(a.inputs()).unwrap(), serde_json::to_value(b.inputs()).unwrap());
        assert_eq!(serde_json::to_value(a.outputs()).unwrap(), serde_json::to_value(b.outputs()).unwrap());
        let pixels: Vec<u8> = (0..2 * 64).flat_map(|i| ((i % 17) as f32).to_le_bytes()).collect();
        let input =
            |name: &str| vec![(name.to_string(), HostTensor::new(vec![2, 64], ElemType::F32, pixels.clone()).unwrap())];
        let (x, y) = (a.run(input("input")).unwrap(), b.run(input("input")).unwrap());
        assert_eq!(x[0].1.dims, vec![2, 10]);
        let floats = |t: &HostTensor| typed_vec(&t.data, f32::from_le_bytes);
        for (p, q) in floats(&x[0].1).iter().zip(floats(&y[0].1)) {
            assert!((p - q).abs() <= 1e-5, "{p} vs {q}");
        }
        let mut extra = input("input");
        extra.extend(input("pixels"));
        let unknown = a.run(extra.clone()).err().unwrap();
        assert!(unknown.code == ErrorCode::InvalidArgument && unknown.message.starts_with("unknown input `pixels`"));
        assert_eq!(Some(unknown), b.run(extra).err());
        assert_eq!(a.run(input("pixels")).err(), b.run(input("pixels")).err());
    }
}
