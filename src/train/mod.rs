//! Training machinery: the run config, optimiser, learning-rate schedule, metrics, run
//! checkpoints, and the run loop that ties them together.

pub mod checkpoint;
pub mod config;
pub mod loss_scale;
pub mod metrics;
pub mod optim;
pub mod run;
pub mod schedule;
