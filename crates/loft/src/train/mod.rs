//! Training: the recipe loop (`recipe`), its config (`config`), learning-rate schedules, checkpoints, metrics
//! and TensorBoard logs, and the optimizer.

pub mod optim;
pub mod tensorboard;
