//! Shared helpers of the integration tests: where fixtures and assets are, and how outputs
//! are compared with the values transformers recorded.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// The tiny checkpoints that `scripts/make_fixtures.py` saved with transformers.
pub const MODELS: &[&str] = &[
    "bert_tied",
    "bert_untied",
    "bert_relu_bin",
    "bert_sharded",
    "bert_encoder",
    "roberta",
    "distilbert",
    "distilbert_relu",
];

/// A real model fetched by `scripts/fetch_assets.sh`. A missing asset fails the test with the
/// command that fetches it; it never skips.
pub fn asset(name: &str) -> PathBuf {
    let dir = root().join("assets").join(name);
    assert!(
        dir.join("config.json").is_file(),
        "asset {} is missing: run `scripts/fetch_assets.sh` first",
        dir.display()
    );
    dir
}

pub fn load_expected(path: &PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read expected outputs {}: {e}", path.display()))
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Largest |a − b| over the real tokens of (batch, sequence, …) outputs: where the 0/1
/// `attention_mask` (batch, sequence) is 1. Frozen encoders compute nothing at padding.
pub fn max_abs_diff_real(a: &Tensor, b: &Tensor, attention_mask: &Tensor) -> f32 {
    let device = a.device();
    let mut real = attention_mask.to_device(device).unwrap().to_dtype(DType::F32).unwrap();
    while real.rank() < a.rank() {
        real = real.unsqueeze(real.rank()).unwrap();
    }
    let only = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(device).unwrap().broadcast_mul(&real).unwrap();
    max_abs_diff(&only(a), &only(b))
}

pub fn distil_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_distil"))
}
