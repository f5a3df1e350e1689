//! The corpus pipeline: text tokenised once into memory-mapped shards, read back as
//! length-grouped batches and masked afresh at every step, as DistilBERT's data pipeline.
//!
//! - [`build`]: `distil corpus build`, text → corpus directory (streaming, parallel, atomic).
//! - [`input`]: the text files and how they are read in chunks; [`pack`]: the sequence rules.
//! - [`manifest`], [`shards`]: the on-disk format, its writer, and the checked reader [`Corpus`].
//! - [`batches`]: length-grouped batches, the resumable [`Cursor`], rank sharding, padding.
//! - [`masking`]: dynamic masking with frequency-smoothed target weights.
//! - [`inspect`]: `distil corpus stats` and `sample`; [`cli`]: their arguments.

pub mod batches;
pub mod build;
pub mod cli;
pub mod input;
pub mod inspect;
pub mod manifest;
pub mod masking;
pub mod pack;
pub mod shards;

pub use batches::{pad, BatchSize, Batcher, Cursor, PaddedBatch};
pub use build::{build, BuildOptions, BuildReport};
pub use manifest::{Manifest, Split};
pub use masking::{MaskedBatch, Masker, MaskingConfig};
pub use shards::Corpus;
