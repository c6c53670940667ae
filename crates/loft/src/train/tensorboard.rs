//! TensorBoard event files (being written).
