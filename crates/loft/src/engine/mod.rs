//! The numerical engine: kernels whose forward and backward sit side by side, and the frozen-weight type.

pub mod attention;
pub mod attention_tiles;
pub mod backend;
pub mod bias;
pub mod cross_entropy;
pub mod dynamic_map;
pub mod elementwise;
pub mod embedding;
pub mod frozen;
pub mod geglu;
pub mod hot_pool;
pub mod lora;
pub mod matmul;
pub mod nf4;
pub mod optim;
pub mod q8_dot;
pub mod quant_dot;
pub mod rank_wide;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
pub mod vector_math;

pub use backend::{AdamWTensor, Backend, Cpu, GroupLinear, GroupLinearGrad, Vocab};
pub use embedding::VocabMatrix;
pub use frozen::FrozenMatrix;
pub use hot_pool::HotPool;
pub use lora::{LoraDropout, LoraWeights};
