//! distil: small, fast transformer encoders by knowledge distillation.
//!
//! - [`model`]: BERT-family encoders that load and save Hugging Face checkpoints.
//! - [`corpus`]: tokenised corpora on disk, length-grouped batches, dynamic masking.
//! - [`infer`]: what a trained encoder is used for (fill-mask, embeddings, raw outputs).
//! - [`distill`]: the student built from the teacher, and the distillation losses.
//! - [`train`]: optimiser, schedule and the training run.
//! - [`distributed`]: the ranks of a multi-process run (MPI) and their collective operations.
//! - [`eval`]: held-out MLM quality, classification, speed, and run reports.
//! - [`rng`]: the seedable generator behind dropout and masking.
//! - [`device`]: where training computes (CPU, CUDA).
//! - [`threads`]: how many threads the compute kernels use.

pub mod corpus;
pub mod device;
pub mod distill;
pub mod distributed;
pub mod eval;
pub mod infer;
pub mod memory;
pub mod model;
pub mod rng;
pub mod threads;
pub mod train;
