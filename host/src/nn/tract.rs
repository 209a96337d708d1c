//! The always-available CPU engine: tract-onnx (pure Rust).
//!
//! A model is parsed, typed, decluttered and optimized once; the resulting plan is an
//! `Arc<TypedSimplePlan>`, which is `Send + Sync` and allocates its per-call state in `run`,
//! so one loaded graph serves every concurrent caller without a lock.

use std::sync::Arc;

use tract_onnx::prelude::*;

use super::{ElemType, Engine, ErrorCode, HostTensor, LoadedModel, NnError, TensorInfo, match_inputs};

/// The tract engine.
pub struct Tract;

struct TractModel {
    plan: Arc<TypedSimplePlan>,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
}

impl Engine for Tract {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, onnx_bytes: &[u8]) -> Result<Arc<dyn LoadedModel>, NnError> {
        let model = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(onnx_bytes))
            .map_err(|e| NnError::new(ErrorCode::InvalidEncoding, format!("not an ONNX model: {e:#}")))?;
        let typed = model.into_optimized().map_err(|e| {
            NnError::new(ErrorCode::UnsupportedOperation, format!("tract cannot run this model: {e:#}"))
        })?;
        let describe = |outlets: &[OutletId], facts: Vec<&TypedFact>| -> Vec<TensorInfo> {
            outlets
                .iter()
                .zip(facts)
                .map(|(outlet, fact)| TensorInfo {
                    name: typed.outlet_label(*outlet).unwrap_or(&typed.node(outlet.node).name).to_string(),
                    datatype: datum_name(fact.datum_type).to_string(),
                    shape: fact.shape.iter().map(|d| d.as_i64().unwrap_or(-1)).collect(),
                })
                .collect()
        };
        let input_outlets = typed.input_outlets().map_err(internal)?.to_vec();
        let output_outlets = typed.output_outlets().map_err(internal)?.to_vec();
        let input_facts: Vec<&TypedFact> =
            (0..input_outlets.len()).map(|i| typed.input_fact(i)).collect::<TractResult<_>>().map_err(internal)?;
        let output_facts: Vec<&TypedFact> =
            (0..output_outlets.len()).map(|i| typed.output_fact(i)).collect::<TractResult<_>>().map_err(internal)?;
        let inputs = describe(&input_outlets, input_facts);
        let outputs = describe(&output_outlets, output_facts);
        let plan =
            typed.into_runnable().map_err(|e| NnError::new(ErrorCode::UnsupportedOperation, format!("{e:#}")))?;
        Ok(Arc::new(TractModel { plan, inputs, outputs }))
    }
}

impl LoadedModel for TractModel {
    fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    fn run(&self, given: Vec<(String, HostTensor)>) -> Result<Vec<(String, HostTensor)>, NnError> {
        let ordered: TVec<TValue> = match_inputs(&self.inputs, given)?
            .iter()
            .map(|t| Ok(to_tract(t)?.into_tvalue()))
            .collect::<Result<_, NnError>>()?;
        let outputs = self.plan.run(ordered).map_err(|e| NnError::new(ErrorCode::RuntimeError, format!("{e:#}")))?;
        self.outputs.iter().zip(outputs).map(|(info, value)| Ok((info.name.clone(), from_tract(&value)?))).collect()
    }
}

fn internal(e: TractError) -> NnError {
    NnError::new(ErrorCode::RuntimeError, format!("{e:#}"))
}

fn datum_name(dt: DatumType) -> &'static str {
    match dt {
        DatumType::Bool => "BOOL",
        DatumType::U8 => "UINT8",
        DatumType::U16 => "UINT16",
        DatumType::U32 => "UINT32",
        DatumType::U64 => "UINT64",
        DatumType::I8 => "INT8",
        DatumType::I16 => "INT16",
        DatumType::I32 => "INT32",
        DatumType::I64 => "INT64",
        DatumType::F16 => "FP16",
        DatumType::F32 => "FP32",
        DatumType::F64 => "FP64",
        DatumType::String => "BYTES",
        _ => "UNSUPPORTED",
    }
}

fn typed_vec<T, const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect()
}

fn to_tract(t: &HostTensor) -> Result<Tensor, NnError> {
    let shape: Vec<usize> = t.dims.iter().map(|d| *d as usize).collect();
    let bad = |e: TractError| NnError::new(ErrorCode::InvalidArgument, format!("{e:#}"));
    match t.ty {
        ElemType::F32 => Tensor::from_shape(&shape, &typed_vec(&t.data, f32::from_le_bytes)),
        ElemType::F64 => Tensor::from_shape(&shape, &typed_vec(&t.data, f64::from_le_bytes)),
        ElemType::F16 => Tensor::from_shape(&shape, &typed_vec(&t.data, f16::from_le_bytes)),
        ElemType::U8 => Tensor::from_shape(&shape, &t.data),
        ElemType::I32 => Tensor::from_shape(&shape, &typed_vec(&t.data, i32::from_le_bytes)),
        ElemType::I64 => Tensor::from_shape(&shape, &typed_vec(&t.data, i64::from_le_bytes)),
        ElemType::Bf16 => {
            return Err(NnError::new(ErrorCode::UnsupportedOperation, "the tract engine has no BF16 tensors"));
        }
    }
    .map_err(bad)
}

fn from_tract(t: &Tensor) -> Result<HostTensor, NnError> {
    let ty = match t.datum_type() {
        DatumType::F32 => ElemType::F32,
        DatumType::F64 => ElemType::F64,
        DatumType::F16 => ElemType::F16,
        DatumType::U8 => ElemType::U8,
        DatumType::I32 => ElemType::I32,
        DatumType::I64 => ElemType::I64,
        other => {
            return Err(NnError::new(
                ErrorCode::UnsupportedOperation,
                format!("output type {} cannot be returned through wasi:nn", datum_name(other)),
            ));
        }
    };
    let dims = t.shape().iter().map(|d| u32::try_from(*d).unwrap_or(u32::MAX)).collect();
    Ok(HostTensor { dims, ty, data: t.as_bytes().to_vec() })
}
