//! Infercell: a serverless WebAssembly inference platform.
//!
//! Tenants upload functions packaged as WebAssembly components (WIT world
//! `infercell:function/handler`); the host runs each call in a fresh, sandboxed store and
//! meters it. See the repository README for the map of modules.

pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod disk;
pub mod error;
pub mod invocation;
pub mod metering;
pub mod metrics;
pub mod nn;
pub mod oip;
pub mod registry;
pub mod releases;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod tenants;
