//! Training: the optimizer (and, next, the recipe loop, schedules, metrics and checkpoints).

pub mod optim;
