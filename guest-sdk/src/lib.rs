//! The SDK an Infercell function author depends on.
//!
//! A function is a WebAssembly component (built for `wasm32-wasip2`) that exports the
//! `infercell:function/incoming-handler` interface of `wit/function.wit`. This crate generates
//! the bindings for the `handler` world once, so an author writes one `impl` and one macro call:
//!
//! ```
//! use infercell_guest::{Error, Handler, Request, Response};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     fn handle(req: Request) -> Result<Response, Error> {
//!         Ok(Response::new(200).body(req.body))
//!     }
//! }
//!
//! infercell_guest::export!(Echo);
//! ```
//!
//! On top of the raw types it adds what most handlers need: [`Request::json`],
//! [`Request::header`] and [`Request::query_param`] to read a request; [`Response::new`],
//! [`Response::json`] and [`Response::text`] with the builder methods [`Response::header`],
//! [`Response::body`] and [`Response::status`] to answer; [`log`] and [`config`] over the host's
//! `log` and `config` imports. Returning an [`Error`] is how a function reports a failure: the
//! host maps [`Error::BadRequest`] to 400, [`Error::NotFound`] to 404 and [`Error::Internal`]
//! to 500. A panic is a trap, which the host treats as a crash of the function, not an answer.
//!
//! The generated code stays reachable in [`bindings`] for what the helpers do not cover, most
//! notably `wasi:nn` (`bindings::wasi::nn`) for inference.

mod http;

pub mod config;
#[cfg(feature = "image")]
pub mod image;
pub mod log;
pub mod nn;
pub mod predict;

/// The raw bindings wit-bindgen generates for the `infercell:function/handler` world.
///
/// Everything the world imports is here: `infercell::function::{log, config, types}` and the
/// four `wasi::nn` interfaces (`tensor`, `graph`, `inference`, `errors`) for running models
/// through the host. Prefer the helpers at the crate root for everything else.
// The canonical ABI glue is unsafe by nature; this module is the only place that may hold
// unsafe code (see the `[lints]` table in Cargo.toml).
#[allow(unsafe_code)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "infercell:function/handler",
        // The world imports wasi:nn, which has no other bindings to point at.
        generate_all,
        pub_export_macro: true,
        default_bindings_module: "infercell_guest::bindings",
    });
}

/// The raw bindings of the `infercell:function/predictor` world: only its `predict` export;
/// every import is shared with [`bindings`].
#[allow(unsafe_code)]
pub mod predictor_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "infercell:function/predictor",
        with: {
            "infercell:function/types@0.1.0": crate::bindings::infercell::function::types,
            "infercell:function/log@0.1.0": crate::bindings::infercell::function::log,
            "infercell:function/config@0.1.0": crate::bindings::infercell::function::config,
            "wasi:nn/tensor@0.2.0-rc-2024-10-28": crate::bindings::wasi::nn::tensor,
            "wasi:nn/graph@0.2.0-rc-2024-10-28": crate::bindings::wasi::nn::graph,
            "wasi:nn/inference@0.2.0-rc-2024-10-28": crate::bindings::wasi::nn::inference,
            "wasi:nn/errors@0.2.0-rc-2024-10-28": crate::bindings::wasi::nn::errors,
        },
        pub_export_macro: true,
        export_macro_name: "export_predictor_world",
        default_bindings_module: "infercell_guest::predictor_bindings",
    });
}

/// The trait a function implements: `fn handle(req: Request) -> Result<Response, Error>`.
///
/// This is the generated `Guest` trait of the exported `incoming-handler` interface.
pub use bindings::exports::infercell::function::incoming_handler::Guest as Handler;
/// The request, response and error records of `infercell:function/types`.
pub use bindings::infercell::function::types::{Error, Request, Response};

/// Exports a type that implements [`Handler`] as the component's `incoming-handler`.
///
/// Call it once, at the top level of the function's crate (a `cdylib`):
///
/// ```
/// # use infercell_guest::{Error, Handler, Request, Response};
/// # struct MyFunction;
/// # impl Handler for MyFunction {
/// #     fn handle(_: Request) -> Result<Response, Error> { Ok(Response::new(204)) }
/// # }
/// infercell_guest::export!(MyFunction);
/// ```
/// Exports a type that implements [`predict::Predictor`] as the component's `predict`: a
/// tensor function, served under `/v2/models/{name}` like a model.
///
/// ```
/// use infercell_guest::Error;
/// use infercell_guest::predict::{Predictor, Tensor};
///
/// struct Double;
///
/// impl Predictor for Double {
///     fn predict(inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
///         let x = inputs.first().ok_or_else(|| Error::BadRequest("expected one input".into()))?;
///         let doubled: Vec<f32> = x.to_f32()?.iter().map(|v| v * 2.0).collect();
///         Ok(vec![Tensor::from_f32("y", &x.shape, &doubled)])
///     }
/// }
///
/// infercell_guest::export_predictor!(Double);
/// ```
#[macro_export]
macro_rules! export_predictor {
    ($predictor:ident) => {
        $crate::predictor_bindings::export_predictor_world!($predictor with_types_in $crate::predictor_bindings);
    };
}

#[macro_export]
macro_rules! export {
    ($handler:ident) => {
        // `$crate` rather than the default bindings path, so a renamed dependency still works.
        $crate::bindings::export!($handler with_types_in $crate::bindings);
    };
}
