//! The baseline: what a user would write with bare wasmtime. The engine settings are
//! infercell's runtime's own (`runtime::engine_config`: pooling allocator, epoch interruption,
//! fuel), a fresh store per call, no platform around it.

use std::sync::Arc;

use anyhow::Result;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "infercell:function/handler",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

use bindings::infercell::function::types::Request;

pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// A bare-wasmtime echo host.
pub struct Bare {
    engine: Engine,
    pre: bindings::HandlerPre<State>,
}

impl Bare {
    pub fn new(component_bytes: &[u8]) -> Result<Arc<Self>> {
        // The runtime's own engine configuration, so the twin cannot drift from it.
        let cfg = infercell::runtime::engine_config(&infercell::runtime::RuntimeConfig::default());
        let engine = Engine::new(&cfg)?;
        let ticker = engine.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(10));
                ticker.increment_epoch();
            }
        });
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        let component = Component::new(&engine, component_bytes)?;
        let pre = bindings::HandlerPre::new(linker.instantiate_pre(&component)?)?;
        Ok(Arc::new(Self { engine, pre }))
    }

    /// Fresh store, instantiate, call `handle` with a bare POST, drop.
    pub async fn call(&self, body: Vec<u8>) -> Result<Vec<u8>> {
        self.call_with("POST".into(), "/".into(), String::new(), Vec::new(), body).await
    }

    /// Fresh store, instantiate, call `handle`, drop.
    pub async fn call_with(
        &self,
        method: String,
        path: String,
        query: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let mut store =
            Store::new(&self.engine, State { wasi: WasiCtxBuilder::new().build(), table: ResourceTable::new() });
        store.set_fuel(u64::MAX)?;
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        let instance = self.pre.instantiate_async(&mut store).await?;
        let req = Request { method, path, query, headers, body };
        match instance.infercell_function_incoming_handler().call_handle(&mut store, &req).await? {
            Ok(resp) => Ok(resp.body),
            Err(e) => anyhow::bail!("guest error: {e:?}"),
        }
    }
}
