//! Measuring what a model kept: masked-word quality, downstream classification, speed, and the
//! report that puts a run's numbers side by side.

pub mod bench;
pub mod charts;
pub mod classify;
pub mod data;
pub mod mlm;
pub mod report;
pub mod results;
