//! Running a model: token-by-token generation with a KV cache, and evaluation of next-token loss.

pub mod generate;
pub mod sample;

pub use generate::{generate, generate_with, Decoding, End, GenerateOptions, GenerationStats};
pub use sample::{Sampler, SamplingParams};
