//! The devices inference can run on: this machine's CPU, and every GPU adapter wgpu finds
//! through Vulkan (NVIDIA, AMD and Intel drivers, or Mesa's software rasterizer lavapipe).
//! Discovered once, off the request path; `GET /v1/devices` shows them.

use std::sync::OnceLock;

use serde::Serialize;

/// One device.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    /// `cpu` or `gpu`.
    pub kind: &'static str,
    pub name: String,
    /// `native` for the CPU; the graphics API for a GPU (`vulkan`).
    pub backend: String,
    /// For a GPU: `discrete`, `integrated`, `virtual` or `cpu` (a software implementation such
    /// as lavapipe).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Bytes: the machine's memory for the CPU; the largest buffer the adapter allows for a GPU
    /// (wgpu does not report video memory).
    pub memory: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores: Option<usize>,
}

/// The devices, discovered on first use.
#[derive(Default)]
pub struct Devices(OnceLock<Vec<Device>>);

impl Devices {
    /// Every device; the first call discovers them (a Vulkan instance: about 0.2 s).
    pub fn list(&self) -> &[Device] {
        self.0.get_or_init(discover)
    }
}

fn cpu() -> Device {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|v| v.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024);
    Device {
        kind: "cpu",
        name,
        backend: "native".into(),
        device_type: None,
        driver: None,
        memory,
        cores: std::thread::available_parallelism().ok().map(|n| n.get()),
    }
}

fn discover() -> Vec<Device> {
    let mut devices = vec![cpu()];
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    for adapter in pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN)) {
        let info = adapter.get_info();
        let device_type = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        };
        devices.push(Device {
            kind: "gpu",
            name: info.name,
            backend: format!("{:?}", info.backend).to_lowercase(),
            device_type: Some(device_type.into()),
            driver: Some(format!("{} {}", info.driver, info.driver_info).trim().to_string()),
            memory: adapter.limits().max_buffer_size,
            cores: None,
        });
    }
    devices
}
