//! Shared by the training tests: a corpus of the committed real-text sample, tiny models over
//! all-MiniLM-L6-v2's vocabulary, run configs and the steps a run logged.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use distil::corpus::build::{build, BuildOptions};
use distil::model::encoder::init_weights;
use distil::model::{checkpoint, ModelConfig};
use distil::rng::Rng;
use distil::train::config::RunConfig;
use distil::train::metrics::{MetricsLog, Record, StepRecord};

use crate::common::{asset, fixture};

/// A corpus of the committed real-text sample, tokenised with all-MiniLM-L6-v2's tokenizer.
pub fn build_corpus(root: &Path) -> PathBuf {
    let out = root.join("corpus");
    let mut options = BuildOptions::new(asset("all-MiniLM-L6-v2"), vec![fixture("text/sample.txt")], out.clone());
    options.max_len = Some(64);
    options.heldout = 0.1;
    build(&options).unwrap();
    out
}

/// A tiny BERT over MiniLM's vocabulary: only its config and tokenizer, to pretrain from scratch.
pub fn tiny_config(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.05
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    checkpoint::copy_tokenizer_files(&asset("all-MiniLM-L6-v2"), dir).unwrap();
    dir.to_path_buf()
}

/// The tiny model with random weights and an MLM head, saved in `dir`: a teacher for tests
/// where what it knows does not matter. `dropout` sets both dropout rates.
pub fn random_teacher(dir: &Path, dropout: f64) -> PathBuf {
    let config_dir = tiny_config(dir);
    let mut config = ModelConfig::from_dir(&config_dir).unwrap();
    config.hidden_dropout = dropout;
    config.attention_dropout = dropout;
    let weights = init_weights(&config, true, 0.05, &mut Rng::new(1), &Device::Cpu).unwrap();
    checkpoint::save(&config_dir, &config, &weights, None).unwrap();
    config_dir
}

pub fn run_config(teacher: Option<&Path>, student: &Path, corpus: &Path, out: &Path, steps: u64, lr: f64) -> RunConfig {
    let mut table: toml::Table = toml::from_str(&format!(
        "student = {student:?}\ncorpus = {corpus:?}\nout = {out:?}\n[run]\nsteps = {steps}\nlog_every = 1\neval_every = 0\neval_batches = 4\ncheckpoint_every = 0\n[batch]\nsequences = 8\n[optim]\nlr = {lr}\nwarmup = 0.1\n"
    ))
    .unwrap();
    if let Some(t) = teacher {
        table.insert("teacher".into(), toml::Value::String(t.display().to_string()));
    }
    RunConfig::from_table(table).unwrap()
}

pub fn steps(run: &Path) -> Vec<StepRecord> {
    MetricsLog::read(run)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            Record::Step(s) => Some(s),
            _ => None,
        })
        .collect()
}
