//! loft's GPU layer on wgpu (Vulkan, Metal, DX12): which adapters there are and which one `--device` picks
//! ([`device`]), an opened device with its pipeline cache and buffers ([`context`]), and WGSL twins of the CPU
//! engine's kernels ([`engine`]: same modules, function names, argument order and shapes as `loft::engine`,
//! with device buffers for slices and the [`Context`] first), and [`Wgpu`], `loft::engine::Backend` over them
//! ([`backend`]), on which `loft::model::Runner` runs the model.
//!
//! Everything is f32 in storage and accumulation; the CPU engine is the reference, and the tests in `tests/`
//! hold every kernel to it on Mesa's lavapipe, a software Vulkan device that needs no GPU.

pub mod backend;
pub mod context;
pub mod device;
pub mod engine;

pub use backend::Wgpu;
pub use context::{Binding, Context, GpuBuffer, Kernel};
pub use device::{list_adapters, AdapterSummary, DeviceChoice};
