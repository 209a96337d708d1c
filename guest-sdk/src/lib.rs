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
#[macro_export]
macro_rules! export {
    ($handler:ident) => {
        // `$crate` rather than the default bindings path, so a renamed dependency still works.
        $crate::bindings::export!($handler with_types_in $crate::bindings);
    };
}
