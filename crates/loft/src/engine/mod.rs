//! The numerical engine: kernels whose forward and backward sit side by side, and the frozen-weight type.

pub mod attention;
pub mod frozen;
pub mod matmul;
pub mod quant_dot;
pub mod rmsnorm;
pub mod rope;

pub use frozen::FrozenMatrix;
