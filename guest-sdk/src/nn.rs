//! Typed helpers over `wasi:nn`: tensor work leaves the sandbox and runs natively in the host.
//!
//! ```no_run
//! use infercell_guest::nn::{Graph, Tensor};
//!
//! # fn f() -> Result<(), infercell_guest::Error> {
//! let graph = Graph::load_by_name("digits")?; // granted in function.toml: models = ["digits"]
//! let input = Tensor::from_f32(&[1, 64], &[0.0; 64])?;
//! let outputs = graph.run(&[("input", &input)])?;
//! let probabilities: Vec<f32> = outputs.get("probabilities")?.to_f32()?;
//! # Ok(()) }
//! ```
//!
//! Every failure is an [`NnError`] carrying the host's error code and message; it converts
//! into the handler's [`crate::Error`] (`invalid-argument` and `too-large` become 400,
//! `not-found` 404, the rest 500), so `?` works in a handler.

use crate::Error;
use crate::bindings::wasi::nn::{errors, graph, inference, tensor};

pub use crate::bindings::wasi::nn::errors::ErrorCode;
pub use crate::bindings::wasi::nn::graph::ExecutionTarget;
pub use crate::bindings::wasi::nn::tensor::TensorType;

/// A wasi:nn failure: the code and the host's message.
#[derive(Debug, Clone)]
pub struct NnError {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for NnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl From<errors::Error> for NnError {
    fn from(e: errors::Error) -> Self {
        Self { code: e.code(), message: e.data() }
    }
}

impl From<NnError> for Error {
    fn from(e: NnError) -> Self {
        match e.code {
            ErrorCode::InvalidArgument | ErrorCode::TooLarge | ErrorCode::InvalidEncoding => {
                Error::BadRequest(e.message)
            }
            ErrorCode::NotFound => Error::NotFound(e.message),
            _ => Error::Internal(e.to_string()),
        }
    }
}

/// A tensor held by the host.
pub struct Tensor(tensor::Tensor);

impl Tensor {
    fn checked(dims: &[u32], ty: TensorType, elem: usize, data: Vec<u8>) -> Result<Self, NnError> {
        let expected = dims.iter().try_fold(elem as u64, |acc, d| acc.checked_mul(u64::from(*d)));
        if expected != Some(data.len() as u64) {
            return Err(NnError {
                code: ErrorCode::InvalidArgument,
                message: format!("dimensions {dims:?} need {expected:?} bytes, got {}", data.len()),
            });
        }
        Ok(Self(tensor::Tensor::new(dims, ty, &data)))
    }

    /// A row-major f32 tensor of shape `dims`.
    pub fn from_f32(dims: &[u32], values: &[f32]) -> Result<Self, NnError> {
        Self::checked(dims, TensorType::Fp32, 4, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// A row-major i64 tensor of shape `dims`.
    pub fn from_i64(dims: &[u32], values: &[i64]) -> Result<Self, NnError> {
        Self::checked(dims, TensorType::I64, 8, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// A row-major u8 tensor of shape `dims`.
    pub fn from_u8(dims: &[u32], values: &[u8]) -> Result<Self, NnError> {
        Self::checked(dims, TensorType::U8, 1, values.to_vec())
    }

    /// A tensor from raw little-endian bytes.
    pub fn from_bytes(dims: &[u32], ty: TensorType, data: Vec<u8>) -> Self {
        Self(tensor::Tensor::new(dims, ty, &data))
    }

    pub fn dims(&self) -> Vec<u32> {
        self.0.dimensions()
    }

    pub fn ty(&self) -> TensorType {
        self.0.ty()
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.data()
    }

    /// The values of an f32 tensor.
    pub fn to_f32(&self) -> Result<Vec<f32>, NnError> {
        self.expect(TensorType::Fp32)?;
        Ok(self.bytes().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// The values of an i64 tensor.
    pub fn to_i64(&self) -> Result<Vec<i64>, NnError> {
        self.expect(TensorType::I64)?;
        Ok(self
            .bytes()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }

    fn expect(&self, ty: TensorType) -> Result<(), NnError> {
        let actual = self.ty();
        if actual == ty {
            Ok(())
        } else {
            Err(NnError { code: ErrorCode::InvalidArgument, message: format!("tensor is {actual:?}, not {ty:?}") })
        }
    }
}

/// A loaded graph (model).
pub struct Graph(graph::Graph);

impl Graph {
    /// Loads the tenant's model `name`; the function's manifest must grant it
    /// (`[capabilities] models = ["name"]`), else this is `not-found`.
    pub fn load_by_name(name: &str) -> Result<Self, NnError> {
        Ok(Self(graph::load_by_name(name)?))
    }

    /// Loads ONNX bytes the function carries itself (size capped by the plan).
    pub fn load_onnx(onnx: &[u8], target: ExecutionTarget) -> Result<Self, NnError> {
        Ok(Self(graph::load(&[onnx.to_vec()], graph::GraphEncoding::Onnx, target)?))
    }

    /// Runs the graph on named inputs and returns its named outputs.
    pub fn run(&self, inputs: &[(&str, &Tensor)]) -> Result<Outputs, NnError> {
        let ctx: inference::GraphExecutionContext = self.0.init_execution_context()?;
        // The WIT takes ownership of the tensors; hand over copies so callers keep theirs.
        let named: Vec<(String, tensor::Tensor)> = inputs
            .iter()
            .map(|(name, t)| (name.to_string(), tensor::Tensor::new(&t.dims(), t.ty(), &t.bytes())))
            .collect();
        let outputs = ctx.compute(named)?;
        Ok(Outputs(outputs.into_iter().map(|(n, t)| (n, Tensor(t))).collect()))
    }
}

/// The named outputs of a run.
pub struct Outputs(Vec<(String, Tensor)>);

impl Outputs {
    /// The output `name`; an error naming the outputs there are when it is missing.
    pub fn get(&self, name: &str) -> Result<&Tensor, NnError> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, t)| t).ok_or_else(|| NnError {
            code: ErrorCode::NotFound,
            message: format!(
                "the model has no output `{name}` (outputs: {})",
                self.0.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// Every output, in the model's order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.0.iter().map(|(n, t)| (n.as_str(), t))
    }
}
