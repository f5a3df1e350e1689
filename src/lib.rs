//! distil: small, fast transformer encoders by knowledge distillation.
//!
//! - [`model`]: BERT-family encoders that load and save Hugging Face checkpoints.
//! - [`infer`]: what a trained encoder is used for (fill-mask, embeddings, raw outputs).
//! - [`rng`]: the seedable generator behind dropout and masking.

pub mod infer;
pub mod model;
pub mod rng;
