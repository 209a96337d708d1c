//! `wasi:nn@0.2.0-rc-2024-10-28` for guests: the WIT glue over [`crate::nn`].
//!
//! Deny by default: `load-by-name` finds only models the function's manifest grants
//! (`capabilities.models`) among its own tenant's models, and an ungranted name gets the same
//! `not-found` as an unknown one, so names do not leak across tenants. `load` takes ONNX bytes
//! up to the plan's model size, and only with `capabilities.nn_load_bytes` (each new graph
//! costs the platform a probe process and a cache entry); without it the guest gets `security`. Every failure is a WIT `error` value the guest can read, never
//! a trap. Host time spent loading and computing is measured here (fuel cannot see it).

use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use wasmtime::component::Resource;

use wasmtime::component::{HasData, Linker, ResourceTable};

use super::Denials;
use super::bindings::wasi::nn::{errors, graph, inference, tensor};
use crate::nn::{ElemType, ErrorCode, Graphs, HostTensor, LoadedModel, ModelRef, NnError, NnMeter};

/// A graph the guest holds.
pub struct Graph(Arc<dyn LoadedModel>, Option<ModelRef>);
/// An execution context the guest holds.
pub struct ExecContext(Arc<dyn LoadedModel>, Option<ModelRef>);

/// A boxed future, for the object-safe [`ModelSource`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which version of a granted model `load-by-name` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPin {
    /// Exactly this version: the one the function version resolved when it was deployed, or the
    /// one its manifest names (`digits@3`).
    Version(u32),
    /// The version an alias names at call time (`digits@prod`).
    Alias(String),
    /// The model's release, or its newest version (a model that did not exist at deploy, or
    /// a version deployed before pins were recorded).
    Current,
}

impl ModelPin {
    /// How a function version's record shows it: `3`, `@prod`, `current`.
    pub fn text(&self) -> String {
        match self {
            ModelPin::Version(v) => v.to_string(),
            ModelPin::Alias(a) => format!("@{a}"),
            ModelPin::Current => "current".into(),
        }
    }

    pub fn parse_text(text: &str) -> Self {
        match (text.strip_prefix('@'), text.parse()) {
            (Some(alias), _) => ModelPin::Alias(alias.to_string()),
            (None, Ok(v)) => ModelPin::Version(v),
            _ => ModelPin::Current,
        }
    }
}

/// A model version `load-by-name` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub digest: String,
    /// The engine selector (`crate::registry::models::selector`).
    pub selector: String,
    pub version: u32,
}

/// Where `load-by-name` finds a tenant's models: implemented by the registry.
pub trait ModelSource: Send + Sync {
    /// The version `pin` names of `tenant`'s model `name`.
    fn lookup<'a>(&'a self, tenant: &'a str, name: &'a str, pin: &'a ModelPin) -> BoxFuture<'a, Option<Located>>;
    /// The model bytes of `digest`.
    fn read(&self, digest: &str) -> anyhow::Result<Vec<u8>>;
}

/// What one function may do with wasi:nn, resolved from its manifest and its tenant's plan.
#[derive(Clone)]
pub struct NnAccess {
    pub tenant: String,
    /// The granted model names (`capabilities.models`, pins stripped) and the version each
    /// resolves to.
    pub models: std::collections::HashMap<String, ModelPin>,
    pub gpu: bool,
    /// `graph::load` from raw bytes is granted (`capabilities.nn_load_bytes`).
    pub load_bytes: bool,
    pub max_model_bytes: u64,
    pub graphs: Arc<Graphs>,
    pub source: Arc<dyn ModelSource>,
}

/// Per-call wasi:nn state.
pub struct NnCtx {
    access: Option<NnAccess>,
    /// Host calls refused for want of a grant (shared with the call's other capabilities).
    denials: Denials,
    /// Inference spent during this call: host time (loads and computes, GPU time excluded),
    /// GPU time, nodes per device; written by the computes themselves (see [`NnMeter`]).
    pub meter: Arc<NnMeter>,
    /// Bytes of tensors the guest holds on the host; capped at the call's memory limit.
    held_bytes: u64,
    cap_bytes: u64,
    /// Tensors the guest holds now.
    tensors: u32,
}

/// Most wasi:nn tensors a call may hold at once.
const MAX_TENSORS: u32 = 10_000;

impl NnCtx {
    pub fn new(access: Option<NnAccess>, cap_bytes: u64, denials: Denials) -> Self {
        Self { access, denials, meter: Default::default(), held_bytes: 0, cap_bytes, tensors: 0 }
    }
}

/// What the wasi:nn host functions borrow from a store's state: the call's wasi:nn context
/// and the resource table its tensors, graphs and errors live in (wasmtime-wasi-nn's
/// `WasiNnView` pattern).
pub struct NnView<'a> {
    pub ctx: &'a mut NnCtx,
    pub table: &'a mut ResourceTable,
}

/// Marks [`NnView`] as the data wasi:nn's host functions get.
struct HasNn;

impl HasData for HasNn {
    type Data<'a> = NnView<'a>;
}

/// Links the four wasi:nn interfaces, reaching each store's state through `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> NnView<'_>,
) -> wasmtime::Result<()> {
    tensor::add_to_linker::<T, HasNn>(linker, view)?;
    graph::add_to_linker::<T, HasNn>(linker, view)?;
    inference::add_to_linker::<T, HasNn>(linker, view)?;
    errors::add_to_linker::<T, HasNn>(linker, view)?;
    Ok(())
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<NnError>>>;

impl NnView<'_> {
    fn nn_err<T>(&mut self, e: NnError) -> NnResult<T> {
        Ok(Err(self.table.push(e)?))
    }

    fn access(&mut self) -> Result<NnAccess, NnError> {
        match self.ctx.access.clone() {
            Some(access) => Ok(access),
            None => {
                self.deny("wasi-nn", "wasi:nn", "wasi:nn is not available to this function");
                Err(NnError::new(ErrorCode::Security, "wasi:nn is not available to this function"))
            }
        }
    }

    /// Records a host call refused for want of a grant: the server audits it, counts it and
    /// writes it to the function's log after the call.
    fn deny(&mut self, capability: &'static str, target: &str, why: &str) {
        self.ctx.denials.push(capability, target, why);
    }

    fn hold(&mut self, bytes: u64) -> Result<(), NnError> {
        if self.ctx.held_bytes + bytes > self.ctx.cap_bytes {
            return Err(NnError::new(
                ErrorCode::TooLarge,
                format!(
                    "tensors held on the host would exceed the function's memory limit of {} bytes",
                    self.ctx.cap_bytes
                ),
            ));
        }
        self.ctx.held_bytes += bytes;
        Ok(())
    }

    async fn load_graph(
        &mut self,
        digest: String,
        engine: &str,
        bytes: Option<Vec<u8>>,
        named: Option<ModelRef>,
    ) -> NnResult<Resource<Graph>> {
        let access = match self.access() {
            Ok(a) => a,
            Err(e) => return self.nn_err(e),
        };
        if let Err(e) = access.graphs.select(engine, access.gpu) {
            if e.code == ErrorCode::Security {
                self.deny("gpu", &digest, &e.message);
            }
            return self.nn_err(e);
        }
        let source = access.source.clone();
        let (d, bytes) = (digest.clone(), bytes.map(Arc::new));
        let read = move || match &bytes {
            Some(b) => Ok(b.to_vec()),
            None => source.read(&d).map_err(|e| NnError::new(ErrorCode::RuntimeError, format!("{e:#}"))),
        };
        let span = tracing::debug_span!(
            target: "infercell::call",
            "nn.load",
            model = named.as_ref().map_or("-", |n| n.name.as_str()),
            version = named.as_ref().map_or(0, |n| n.version)
        );
        let load = access.graphs.load_selected(&access.tenant, &digest, engine, access.gpu, read);
        match tracing::Instrument::instrument(load, span).await {
            Ok((model, took)) => {
                self.ctx.meter.add_load(took);
                Ok(Ok(self.table.push(Graph(model, named))?))
            }
            Err(e) => self.nn_err(e),
        }
    }
}

/// The wasi:nn type of an element type; wasi:nn has seven.
fn wit_type(ty: ElemType) -> Option<tensor::TensorType> {
    Some(match ty {
        ElemType::F16 => tensor::TensorType::Fp16,
        ElemType::F32 => tensor::TensorType::Fp32,
        ElemType::F64 => tensor::TensorType::Fp64,
        ElemType::Bf16 => tensor::TensorType::Bf16,
        ElemType::U8 => tensor::TensorType::U8,
        ElemType::I32 => tensor::TensorType::I32,
        ElemType::I64 => tensor::TensorType::I64,
        _ => return None,
    })
}

impl tensor::Host for NnView<'_> {}

impl tensor::HostTensor for NnView<'_> {
    async fn new(
        &mut self,
        dims: Vec<u32>,
        ty: tensor::TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<HostTensor>> {
        let ty = match ty {
            tensor::TensorType::Fp16 => ElemType::F16,
            tensor::TensorType::Fp32 => ElemType::F32,
            tensor::TensorType::Fp64 => ElemType::F64,
            tensor::TensorType::Bf16 => ElemType::Bf16,
            tensor::TensorType::U8 => ElemType::U8,
            tensor::TensorType::I32 => ElemType::I32,
            tensor::TensorType::I64 => ElemType::I64,
        };
        // The constructor cannot return an error value in this WIT version. A tensor whose data
        // and dimensions disagree is kept as given and refused by `compute` with a clear error;
        // only going over the memory limit with host-held tensors ends the call, like growing
        // linear memory past it would.
        if let Err(e) = self.hold(data.len() as u64) {
            return Err(wasmtime::Error::msg(e.message));
        }
        // Empty tensors cost no bytes: their number is capped too, so no guest can grow the
        // host's resource table without bound.
        if self.ctx.tensors >= MAX_TENSORS {
            return Err(wasmtime::Error::msg(format!("more than {MAX_TENSORS} wasi:nn tensors held at once")));
        }
        self.ctx.tensors += 1;
        Ok(self.table.push(HostTensor { dims, ty, data })?)
    }

    async fn dimensions(&mut self, t: Resource<HostTensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&t)?.dims.clone())
    }

    async fn ty(&mut self, t: Resource<HostTensor>) -> wasmtime::Result<tensor::TensorType> {
        // `compute` hands the guest only tensors wasi:nn can describe.
        let ty = self.table.get(&t)?.ty;
        wit_type(ty).ok_or_else(|| wasmtime::Error::msg(format!("{} tensors do not exist in wasi:nn", ty.oip_name())))
    }

    async fn data(&mut self, t: Resource<HostTensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&t)?.data.clone())
    }

    async fn drop(&mut self, t: Resource<HostTensor>) -> wasmtime::Result<()> {
        let tensor = self.table.delete(t)?;
        self.ctx.tensors = self.ctx.tensors.saturating_sub(1);
        self.ctx.held_bytes = self.ctx.held_bytes.saturating_sub(tensor.data.len() as u64);
        Ok(())
    }
}

impl graph::Host for NnView<'_> {
    async fn load(
        &mut self,
        builders: Vec<Vec<u8>>,
        encoding: graph::GraphEncoding,
        target: graph::ExecutionTarget,
    ) -> NnResult<Resource<Graph>> {
        let access = match self.access() {
            Ok(a) => a,
            Err(e) => return self.nn_err(e),
        };
        if !access.load_bytes {
            let why = "loading a graph from raw bytes needs capabilities.nn_load_bytes";
            self.deny("nn_load_bytes", "graph::load", why);
            return self
                .nn_err(NnError::new(ErrorCode::Security, format!("{why} (or push the model and load it by name)")));
        }
        if !matches!(encoding, graph::GraphEncoding::Onnx | graph::GraphEncoding::Autodetect) {
            return self.nn_err(NnError::new(ErrorCode::InvalidEncoding, "this platform runs ONNX graphs only"));
        }
        let engine = match check_target(target, access.gpu) {
            Ok(engine) => engine,
            Err(e) => {
                if e.code == ErrorCode::Security {
                    self.deny("gpu", "execution-target gpu", &e.message);
                }
                return self.nn_err(e);
            }
        };
        let [bytes] = <[Vec<u8>; 1]>::try_from(builders).unwrap_or_default();
        if bytes.is_empty() {
            return self.nn_err(NnError::new(ErrorCode::InvalidArgument, "pass the ONNX model as exactly one builder"));
        }
        if bytes.len() as u64 > access.max_model_bytes {
            return self.nn_err(NnError::new(
                ErrorCode::TooLarge,
                format!("model of {} bytes is over the plan's limit of {} bytes", bytes.len(), access.max_model_bytes),
            ));
        }
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        self.load_graph(digest, engine, Some(bytes), None).await
    }

    async fn load_by_name(&mut self, name: String) -> NnResult<Resource<Graph>> {
        let access = match self.access() {
            Ok(a) => a,
            Err(e) => return self.nn_err(e),
        };
        // Ungranted and unknown names get the same answer.
        let not_found =
            || NnError::new(ErrorCode::NotFound, format!("no model named `{name}` is available to this function"));
        let Some(pin) = access.models.get(&name) else {
            self.deny("models", &name, "not in the manifest's capabilities.models");
            return self.nn_err(not_found());
        };
        let Some(found) = access.source.lookup(&access.tenant, &name, pin).await else {
            return self.nn_err(not_found());
        };
        let named = ModelRef { name, version: found.version };
        self.load_graph(found.digest, &found.selector, None, Some(named)).await
    }
}

impl graph::HostGraph for NnView<'_> {
    async fn init_execution_context(&mut self, g: Resource<Graph>) -> NnResult<Resource<ExecContext>> {
        let graph = self.table.get(&g)?;
        let (model, named) = (graph.0.clone(), graph.1.clone());
        Ok(Ok(self.table.push(ExecContext(model, named))?))
    }

    async fn drop(&mut self, g: Resource<Graph>) -> wasmtime::Result<()> {
        self.table.delete(g)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

impl inference::HostGraphExecutionContext for NnView<'_> {
    async fn compute(
        &mut self,
        ctx: Resource<ExecContext>,
        inputs: Vec<(String, Resource<HostTensor>)>,
    ) -> NnResult<Vec<(String, Resource<HostTensor>)>> {
        let access = match self.access() {
            Ok(a) => a,
            Err(e) => return self.nn_err(e),
        };
        let exec = self.table.get(&ctx)?;
        let (model, named) = (exec.0.clone(), exec.1.clone());
        let mut given = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            let t = self.table.get(&t)?;
            match HostTensor::new(t.dims.clone(), t.ty, t.data.clone()) {
                Ok(t) => given.push((name, t)),
                Err(e) => return self.nn_err(NnError::new(e.code, format!("input `{name}`: {}", e.message))),
            }
        }
        // The compute's tensors count against the call's memory, beside those the guest holds.
        let room = self.ctx.cap_bytes.saturating_sub(self.ctx.held_bytes);
        let outputs =
            match access.graphs.run_model(&access.tenant, named.as_ref(), model, given, &self.ctx.meter, room).await {
                Ok(outputs) => outputs,
                Err(e) => return self.nn_err(e),
            };
        if let Some((name, t)) = outputs.iter().find(|(_, t)| wit_type(t.ty).is_none()) {
            let message = format!("output `{name}` is {}, which wasi:nn cannot carry", t.ty.oip_name());
            return self.nn_err(NnError::new(ErrorCode::UnsupportedOperation, message));
        }
        let total: u64 = outputs.iter().map(|(_, t)| t.data.len() as u64).sum();
        if let Err(e) = self.hold(total) {
            return self.nn_err(e);
        }
        let mut out = Vec::with_capacity(outputs.len());
        for (name, t) in outputs {
            self.ctx.tensors += 1;
            out.push((name, self.table.push(t)?));
        }
        Ok(Ok(out))
    }

    async fn drop(&mut self, ctx: Resource<ExecContext>) -> wasmtime::Result<()> {
        self.table.delete(ctx)?;
        Ok(())
    }
}

impl errors::Host for NnView<'_> {}

impl errors::HostError for NnView<'_> {
    async fn code(&mut self, e: Resource<NnError>) -> wasmtime::Result<errors::ErrorCode> {
        Ok(match self.table.get(&e)?.code {
            ErrorCode::InvalidArgument => errors::ErrorCode::InvalidArgument,
            ErrorCode::InvalidEncoding => errors::ErrorCode::InvalidEncoding,
            ErrorCode::Timeout => errors::ErrorCode::Timeout,
            ErrorCode::RuntimeError => errors::ErrorCode::RuntimeError,
            ErrorCode::UnsupportedOperation => errors::ErrorCode::UnsupportedOperation,
            ErrorCode::TooLarge => errors::ErrorCode::TooLarge,
            ErrorCode::NotFound => errors::ErrorCode::NotFound,
            ErrorCode::Security => errors::ErrorCode::Security,
            ErrorCode::Unknown => errors::ErrorCode::Unknown,
        })
    }

    async fn data(&mut self, e: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&e)?.message.clone())
    }

    async fn drop(&mut self, e: Resource<NnError>) -> wasmtime::Result<()> {
        self.table.delete(e)?;
        Ok(())
    }
}

/// The engine selector for a graph loaded from bytes with `target`.
fn check_target(target: graph::ExecutionTarget, gpu_granted: bool) -> Result<&'static str, NnError> {
    match target {
        graph::ExecutionTarget::Cpu => Ok("cpu"),
        graph::ExecutionTarget::Gpu if !gpu_granted => {
            Err(NnError::new(ErrorCode::Security, "this function is not granted the GPU (capabilities.gpu)"))
        }
        graph::ExecutionTarget::Gpu => Ok("wgpu"),
        graph::ExecutionTarget::Tpu => Err(NnError::new(ErrorCode::UnsupportedOperation, "no TPU on this server")),
    }
}
