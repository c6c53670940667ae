//! Every GPU kernel against its CPU twin in `loft::engine`, on Mesa's lavapipe (software Vulkan): random inputs at
//! SmolLM2-135M's shapes (C = 576, F = 1536, 9 heads over 3 key/value heads, D = 64) and at odd shapes that are
//! no multiple of any tile; and the model's inference forward (`loft::model::Runner`) on the wgpu backend
//! against the CPU's on tiny Llamas. Each check prints its worst relative error (`cargo test -- --nocapture` shows them).
//!
//! No Vulkan adapter fails these tests with the hint to install one; they never skip.

mod attention;
mod backend;
mod common;
mod context;
mod families;
mod head;
mod layers;
/// loft's own test fixtures and tiny-model writers (crates/loft/tests/common).
#[path = "../../../loft/tests/common/mod.rs"]
mod lcommon;
mod lora;
mod matmul;
mod optim;
mod runner;
mod split;
mod train;
