//! The GGUF file format: metadata, tensor tables, a memory-mapped reader, a writer, and the GGML block codecs.
//!
//! Layout (version 2/3, little-endian): magic `GGUF`, version u32, tensor count u64, metadata count u64,
//! metadata key/values, tensor infos (name, n_dims, ne[n_dims] innermost first, ggml type, offset), padding
//! to `general.alignment` (default 32), then the data section; each tensor offset is relative to it.
//! Every header field is bounds-checked against the file's length before it sizes anything.

#[cfg(target_endian = "big")]
compile_error!("the gguf crate reinterprets little-endian GGML blocks in place and supports little-endian hosts only");

mod codec;
mod error;
pub mod names;
mod reader;
mod types;
mod value;
mod writer;

#[doc(hidden)]
pub use codec::candle_block_size;
pub use codec::{dequantize, quantize};
pub use error::Error;
pub use reader::{GgufFile, TensorInfo};
pub use types::GgmlType;
pub use value::{Value, ValueType};
pub use writer::GgufWriter;

/// `GGUF` read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// The version the writer produces.
pub const GGUF_VERSION: u32 = 3;
/// Alignment of the data section and of every tensor offset when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;
