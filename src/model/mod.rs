//! BERT-family encoders: config, modules, checkpoints and tokenizer.

pub mod checkpoint;
pub mod config;
pub mod encoder;
pub mod frozen;
pub mod fused;
pub mod ops;
pub mod tokenizer;

pub use checkpoint::{Checkpoint, LoadReport, ParameterCounts};
pub use config::{Activation, Family, ModelConfig};
pub use encoder::{Encoder, EncoderInput, Weights};
pub use tokenizer::{SpecialTokens, TextTokenizer};
