//! What the platform accepts: the checks an upload passes before it is compiled and linked
//! (a component, a supported world, only interfaces the platform provides, with the grants
//! they need), and `infercell inspect`, which runs the same checks without a server.

use wasmtime::component::{Component, types::ComponentItem};
use wasmtime::{Config, Engine};

use super::{HANDLER_EXPORT, PREDICT_EXPORT};

/// Interfaces the platform links for every function, without any grant. Versions are matched
/// semver-compatibly by the linker (a guest built against WASI 0.2.3 links against 0.2.6).
pub(super) const PROVIDED_INTERFACES: &[&str] = &[
    "infercell:function/types",
    "infercell:function/log",
    "infercell:function/config",
    "wasi:nn/tensor",
    "wasi:nn/graph",
    "wasi:nn/inference",
    "wasi:nn/errors",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    // Linked for every function, refused per request unless the host is in `allowed_hosts`
    // (and a component importing the outgoing handler without that grant is refused at upload).
    "wasi:http/types",
    "wasi:http/outgoing-handler",
    // Never `wasi:sockets`: raw network access is not granted to functions (a component that
    // imports it is refused at upload, naming it).
];

/// What an uploaded component is, as far as the platform cares.
#[derive(Debug, Clone)]
pub struct ComponentInfo {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Why an upload is not runnable; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("not a WebAssembly binary (it does not start with \\0asm)")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component: build it with `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error(
        "the component exports neither `{HANDLER_EXPORT}` nor `{PREDICT_EXPORT}`: implement the `handler` or the `predictor` world of wit/function.wit (exports found: {0})"
    )]
    NoHandler(String),
    #[error("the component imports interfaces this platform does not provide: {0}")]
    UnknownImports(String),
    #[error("{0}")]
    NeedsGrant(String),
    #[error("the component cannot be linked: {0}")]
    Link(String),
}

/// The grants a component's imports call for, as `inspect` shows them: `(grant, why)`.
pub fn grants_needed(imports: &[String]) -> Vec<(&'static str, String)> {
    let mut needed = Vec::new();
    if imports.iter().any(|i| i.starts_with("wasi:nn/graph")) {
        needed.push(("models", "wasi:nn: `load-by-name` finds only the models in capabilities.models".to_string()));
    }
    if let Some(i) = imports.iter().find(|i| i.starts_with("wasi:http/outgoing-handler")) {
        needed.push(("allowed_hosts", format!("{i}: outbound HTTP to the hosts listed")));
    }
    if let Some(i) = imports.iter().find(|i| i.starts_with("wasi:sockets/")) {
        needed.push(("(none)", format!("{i}: raw sockets are never granted")));
    }
    needed
}

/// For an import that only a grant could provide, what to say: the interface and the grant.
pub(super) fn needs_grant(import: &str) -> Option<String> {
    if import.starts_with("wasi:sockets/") {
        Some(format!(
            "the component imports `{import}`: raw network sockets are never granted to functions; \
             outbound HTTP through wasi:http/outgoing-handler needs the `allowed_hosts` grant"
        ))
    } else {
        None
    }
}

pub(super) fn check_header(bytes: &[u8]) -> Result<(), ValidateError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(ValidateError::NotWasm);
    }
    // Core modules are version 1, layer 0; components carry layer 1 in bytes 6..8.
    if bytes[6..8] == [0, 0] {
        return Err(ValidateError::CoreModule);
    }
    Ok(())
}

pub(super) fn describe(engine: &Engine, component: &Component) -> ComponentInfo {
    let ty = component.component_type();
    let imports = ty
        .imports(engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(name, _)| name.to_string())
        .collect();
    let exports = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
    ComponentInfo { imports, exports }
}

/// Whether the linker provides `name` (`ns:pkg/iface@version`), ignoring the version, which the
/// linker matches semver-compatibly.
pub(super) fn is_provided(name: &str) -> bool {
    let unversioned = name.split('@').next().unwrap_or(name);
    PROVIDED_INTERFACES.contains(&unversioned)
}

/// What `infercell inspect` prints about a component file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InspectReport {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    pub unsupported_imports: Vec<String>,
    /// Why the platform would reject it, if it would.
    pub problem: Option<String>,
}

/// Describes a component without a server: compiles it with a plain engine.
pub fn inspect(bytes: &[u8]) -> anyhow::Result<InspectReport> {
    check_header(bytes)?;
    let mut cfg = Config::new();
    cfg.wasm_component_model(true);
    let engine = Engine::new(&cfg).map_err(anyhow::Error::from)?;
    let component = Component::new(&engine, bytes).map_err(|e| ValidateError::Invalid(format!("{e:#}")))?;
    let info = describe(&engine, &component);
    let unsupported_imports: Vec<String> = info.imports.iter().filter(|i| !is_provided(i)).cloned().collect();
    let problem = if !info.exports.iter().any(|e| e == HANDLER_EXPORT || e == PREDICT_EXPORT) {
        Some(format!("it exports neither `{HANDLER_EXPORT}` nor `{PREDICT_EXPORT}`"))
    } else if !unsupported_imports.is_empty() {
        Some(format!("it imports interfaces this platform does not provide: {}", unsupported_imports.join(", ")))
    } else {
        None
    };
    Ok(InspectReport { imports: info.imports, exports: info.exports, unsupported_imports, problem })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks_name_the_problem() {
        assert!(matches!(check_header(b"hello world"), Err(ValidateError::NotWasm)));
        assert!(matches!(check_header(b"\0asm\x01\0\0\0"), Err(ValidateError::CoreModule)));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn provided_interfaces_ignore_versions() {
        assert!(is_provided("wasi:cli/environment@0.2.3"));
        assert!(is_provided("infercell:function/log@0.1.0"));
        assert!(is_provided("wasi:http/outgoing-handler@0.2.0"), "linked; refused per request without a grant");
        assert!(!is_provided("wasi:sockets/tcp@0.2.0"));
        assert!(is_provided("wasi:nn/graph@0.2.0-rc-2024-10-28"));
    }
}
