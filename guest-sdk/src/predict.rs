//! Tensor functions: the `predictor` world. A predictor takes named tensors and returns named
//! tensors; the host serves it under `/v2/models/{name}` (the Open Inference Protocol), so
//! Triton and KServe clients call it like a model, with the function's pre- and
//! post-processing around the model it loads through [`crate::nn`].
//!
//! Implement [`Predictor`] and export it with [`crate::export_predictor!`]. Declare the inputs
//! and outputs in `function.toml` (`[[inputs]]`, `[[outputs]]` with `name`, `datatype`, `shape`)
//! so `/v2` metadata shows them and the host checks requests against them before your code runs.

use crate::Error;

/// A named tensor: `name`, `datatype` ("FP32", "INT64", ... as the protocol names them),
/// `shape`, and little-endian row-major `data`.
pub use crate::bindings::infercell::function::types::Tensor;
/// The trait a tensor function implements: `fn predict(inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error>`.
pub use crate::predictor_bindings::exports::infercell::function::predict::Guest as Predictor;

fn typed<T, const N: usize>(t: &Tensor, datatype: &str, f: impl Fn([u8; N]) -> T) -> Result<Vec<T>, Error> {
    if t.datatype != datatype {
        return Err(Error::BadRequest(format!("input `{}` must be {datatype}, got {}", t.name, t.datatype)));
    }
    Ok(t.data.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect())
}

impl Tensor {
    /// An FP32 tensor.
    pub fn from_f32(name: &str, shape: &[i64], values: &[f32]) -> Self {
        Self::raw(name, "FP32", shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// An INT64 tensor.
    pub fn from_i64(name: &str, shape: &[i64], values: &[i64]) -> Self {
        Self::raw(name, "INT64", shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// A tensor from raw little-endian bytes.
    pub fn raw(name: &str, datatype: &str, shape: &[i64], data: Vec<u8>) -> Self {
        Self { name: name.to_string(), datatype: datatype.to_string(), shape: shape.to_vec(), data }
    }

    /// The elements of an FP32 tensor; another datatype is a [`Error::BadRequest`].
    pub fn to_f32(&self) -> Result<Vec<f32>, Error> {
        typed(self, "FP32", f32::from_le_bytes)
    }

    /// The elements of an INT64 tensor; another datatype is a [`Error::BadRequest`].
    pub fn to_i64(&self) -> Result<Vec<i64>, Error> {
        typed(self, "INT64", i64::from_le_bytes)
    }

    /// The elements of an FP32 or INT64 tensor as f64 (numbers either way).
    pub fn to_f64_lossy(&self) -> Result<Vec<f64>, Error> {
        match self.datatype.as_str() {
            "FP32" => Ok(self.to_f32()?.into_iter().map(f64::from).collect()),
            "INT64" => Ok(self.to_i64()?.into_iter().map(|v| v as f64).collect()),
            other => Err(Error::BadRequest(format!("input `{}` must be FP32 or INT64, got {other}", self.name))),
        }
    }
}

/// The input named `name`, or a [`Error::BadRequest`] naming it.
pub fn input<'a>(inputs: &'a [Tensor], name: &str) -> Result<&'a Tensor, Error> {
    inputs.iter().find(|t| t.name == name).ok_or_else(|| Error::BadRequest(format!("missing input `{name}`")))
}
