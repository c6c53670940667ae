//! The GGUF file format.
