//! The results every evaluation writes as JSON (`--out FILE`), and that `distil report` reads
//! back: one struct per kind of measurement, so that producer and reader cannot drift apart.

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::checkpoint::write_atomic;

/// Held-out masked-language-model quality (`distil eval mlm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlmResult {
    pub model: String,
    pub corpus: String,
    /// Held-out sequences and masked target tokens scored.
    pub sequences: usize,
    pub targets: usize,
    /// Seed of the fixed masking, so that two models are scored on the same targets.
    pub seed: u64,
    /// Mean cross-entropy over the targets (nats), and its exponential.
    pub loss: f64,
    pub perplexity: f64,
    pub top1: f64,
    pub top5: f64,
    /// How closely the model follows a teacher on the same inputs, when one was given.
    pub agreement: Option<Agreement>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub teacher: String,
    /// Share of target positions where the two models' top-1 predictions are the same token.
    pub top1_match: f64,
    /// Mean KL(teacher ‖ model) at T = 1 over all real tokens.
    pub kl: f64,
    /// Mean cosine of the last hidden states over all real tokens.
    pub hidden_cosine: f64,
}

/// A mean with its spread over seeds, and the runs it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub mean: f64,
    /// Sample standard deviation (0 for a single run).
    pub std: f64,
    pub runs: Vec<f64>,
}

impl Summary {
    pub fn of(runs: Vec<f64>) -> Self {
        let n = runs.len().max(1) as f64;
        let mean = runs.iter().sum::<f64>() / n;
        let var = if runs.len() > 1 { runs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        Summary { mean, std: var.sqrt(), runs }
    }

    /// Median of the runs (what `distil bench` reports for its repeats); NaN with no runs.
    pub fn median(&self) -> f64 {
        median(&self.runs)
    }
}

/// Median of a list (mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Downstream classification (`distil eval classify`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifyResult {
    pub model: String,
    /// `rt-sentiment`, or the user's train file.
    pub task: String,
    /// `probe` (linear classifier on frozen pooled embeddings) or `finetune` (whole model).
    pub mode: String,
    pub classes: Vec<String>,
    pub train_size: usize,
    pub test_size: usize,
    pub seeds: Vec<u64>,
    pub accuracy: Summary,
    pub macro_f1: Summary,
    /// Wall-clock seconds for all seeds.
    pub seconds: f64,
}

/// Speed and size of one or more models on the same sentences (`distil bench`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// Where the sentences came from, and how many.
    pub texts: String,
    pub sentences: usize,
    pub repeats: usize,
    pub threads: usize,
    /// In the order given on the command line (the main job puts the teacher first).
    pub models: Vec<ModelBench>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelBench {
    pub model: String,
    pub parameters: Parameters,
    /// One full pass over the sentences, one at a time (tokenisation included): median of the
    /// repeats, and the median latency of a single sentence.
    pub batch1_pass_s: Summary,
    pub batch1_sentence_ms: f64,
    /// Batches of 32 sentences: median over repeats of a full pass.
    pub batch32_pass_s: Summary,
    pub batch32_sentences_per_s: f64,
    pub batch32_tokens_per_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameters {
    pub embeddings: usize,
    pub encoder: usize,
    pub head: usize,
    pub total: usize,
}

/// Writes a result as pretty JSON, atomically (a reader never sees half a file).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not the result file distil writes", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_mean_and_sample_std() {
        let s = Summary::of(vec![1.0, 2.0, 3.0]);
        assert_eq!(s.mean, 2.0);
        assert!((s.std - 1.0).abs() < 1e-12);
        assert_eq!(Summary::of(vec![0.5]).std, 0.0);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(Summary::of(vec![5.0, 1.0, 2.0]).median(), 2.0);
    }
}
