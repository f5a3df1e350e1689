//! Measuring what a model kept: masked-word quality, downstream classification, speed, and the
//! report that puts a run's numbers side by side.

pub mod classify;
pub mod data;
pub mod results;
