//! Writing to the function's log through the host's `infercell:function/log` import.
//!
//! The host keeps the log per function and caps it, so a chatty function costs itself log
//! lines, not the host memory. Anything written to stdout or stderr ends up there too, but
//! without a level; prefer these functions.
//!
//! Outside a component (a native `cargo test` of a handler) there is no host, so the
//! functions write `LEVEL message` lines to stderr instead.

/// How important a log line is, from [`Level::Trace`] to [`Level::Error`].
pub use crate::bindings::infercell::function::log::Level;

/// Writes `message` to the function's log at `level`.
pub fn write(level: Level, message: impl AsRef<str>) {
    write_str(level, message.as_ref());
}

/// Writes `message` at [`Level::Trace`].
pub fn trace(message: impl AsRef<str>) {
    write_str(Level::Trace, message.as_ref());
}

/// Writes `message` at [`Level::Debug`].
pub fn debug(message: impl AsRef<str>) {
    write_str(Level::Debug, message.as_ref());
}

/// Writes `message` at [`Level::Info`].
pub fn info(message: impl AsRef<str>) {
    write_str(Level::Info, message.as_ref());
}

/// Writes `message` at [`Level::Warn`].
pub fn warn(message: impl AsRef<str>) {
    write_str(Level::Warn, message.as_ref());
}

/// Writes `message` at [`Level::Error`].
pub fn error(message: impl AsRef<str>) {
    write_str(Level::Error, message.as_ref());
}

#[cfg(target_arch = "wasm32")]
fn write_str(level: Level, message: &str) {
    crate::bindings::infercell::function::log::write(level, message);
}

#[cfg(not(target_arch = "wasm32"))]
fn write_str(level: Level, message: &str) {
    eprintln!("{level:?} {message}");
}
