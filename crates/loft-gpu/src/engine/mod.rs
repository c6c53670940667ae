//! WGSL twins of `loft::engine` (and of the optimizer in `loft::train::optim`): each CPU function has a GPU
//! function of the same name and module, taking the [`Context`](crate::Context) first and then the same arguments
//! in the same order, device buffers in place of slices (outputs as `&mut`). Shapes and legends are the CPU's.

/// `ensure!(cond, "format", args…)`: returns `Err(Error::Invalid(…))` when a shape does not hold. Kernels check their
/// operands this way and never panic on them.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !($cond) {
            return Err(loft::Error::Invalid(format!($($msg)+)));
        }
    };
}

pub mod attention;
pub mod bias;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod frozen;
pub mod geglu;
pub mod lora;
pub mod matmul;
pub mod optim;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

pub use embedding::VocabMatrix;
pub use frozen::GpuFrozen;
pub use lora::GpuLoraWeights;
