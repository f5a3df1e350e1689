//! Training machinery: optimiser, learning-rate schedule, and the run loop around them.

pub mod optim;
pub mod schedule;
