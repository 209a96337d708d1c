//! Per-function settings (`infercell:function/config`): the manifest's `config` table, read-only.

use std::sync::Arc;

use super::bindings::infercell::function::config;

/// The call's config capability.
pub struct ConfigCtx(pub Arc<Vec<(String, String)>>);

/// Links `infercell:function/config`, reaching each store's [`ConfigCtx`] through `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> &mut ConfigCtx,
) -> wasmtime::Result<()> {
    config::add_to_linker::<T, wasmtime::component::HasSelf<ConfigCtx>>(linker, view)
}

impl config::Host for ConfigCtx {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.0.as_ref().clone())
    }
}
