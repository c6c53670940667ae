//! Training: the recipe loop (`recipe`), its config (`config`), the model's forward and backward
//! (`forward_backward`), learning-rate schedules, checkpoints, metrics and TensorBoard logs, the optimizer, and gemm
//! alone on the step's frozen products (`products`, the step's speed ceiling).

pub mod checkpoint;
pub mod config;
pub mod forward_backward;
pub mod optim;
pub mod products;
pub mod recipe;
pub mod schedule;
pub mod status;
pub mod steps;
pub mod tensorboard;

pub use config::{RunConfig, TrainConfig};
pub use recipe::{train, train_on, Event, Observer, Plan, Quiet, Summary, TrainOptions};
