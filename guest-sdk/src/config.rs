//! Reading the function's settings through the host's `infercell:function/config` import.
//!
//! The values come from the `[capabilities] config` table of the function's manifest
//! (`function.toml`); a function sees its own table and nothing else. Keys the manifest does
//! not set are absent, so a function chooses its own defaults:
//!
//! ```no_run
//! let greeting = infercell_guest::config::get("greeting").unwrap_or_else(|| "Hello".into());
//! ```
//!
//! Outside a component (a native `cargo test` of a handler) there is no host and no
//! manifest: [`get`] returns `None` and [`get_all`] an empty list.

/// The value of the config key `key`, or `None` when the manifest does not set it.
pub fn get(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    {
        crate::bindings::infercell::function::config::get(key)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = key;
        None
    }
}

/// Every `(key, value)` pair of the function's config table.
pub fn get_all() -> Vec<(String, String)> {
    #[cfg(target_arch = "wasm32")]
    {
        crate::bindings::infercell::function::config::get_all()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        Vec::new()
    }
}
