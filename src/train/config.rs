//! The run config: a TOML file with every setting of a distillation (or pretraining) run,
//! plus `--set key=value` overrides. The resolved config, defaults filled in, is saved in the
//! run folder, so that a run can be reproduced and resumed from it alone.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::DType;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::corpus::masking::MaskingConfig;
use crate::distill::loss::LossConfig;
use crate::train::optim::AdamWConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Teacher checkpoint with an MLM head. Absent: pretraining with the MLM loss alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<PathBuf>,
    /// Student checkpoint (from `distil student init`), or, for pretraining from scratch, a
    /// directory with only `config.json` (and the tokenizer): its weights are then drawn at random.
    pub student: PathBuf,
    /// Corpus built by `distil corpus build` with the student's tokenizer.
    pub corpus: PathBuf,
    /// The run folder.
    pub out: PathBuf,
    #[serde(default)]
    pub loss: LossConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub masking: MaskingConfig,
    #[serde(default)]
    pub run: RunLength,
    #[serde(default)]
    pub compute: ComputeConfig,
}

/// A floating-point type of the forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
    F16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
}

/// Numeric precision. Whatever the forward and backward passes run in, the master weights,
/// the optimiser's moments, the gradients it applies and the loss reductions stay float32.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComputeConfig {
    /// The student's forward and backward passes: `f32`, `bf16`, or `f16` (with dynamic loss
    /// scaling, as its range is narrow).
    pub dtype: Precision,
    /// The teacher's forward pass; it only supplies targets, so it may run in half precision
    /// while the student does not.
    pub teacher_dtype: Precision,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig { dtype: Precision::F32, teacher_dtype: Precision::F32 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    #[serde(flatten)]
    pub adamw: AdamWConfig,
    /// Share of the optimiser steps spent warming up.
    pub warmup: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub clip_grad_norm: f64,
    /// Keep the embeddings and this many bottom layers as they are (0: train everything), e.g.
    /// to continue a teacher's MLM training in its top layers only.
    pub frozen_layers: usize,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig { adamw: AdamWConfig::default(), warmup: 0.05, clip_grad_norm: 5.0, frozen_layers: 0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Sequences per micro-batch (used when `tokens` is 0).
    pub sequences: usize,
    /// Tokens (padded) per micro-batch; 0 batches by sequences.
    pub tokens: usize,
    /// Micro-batches per optimiser step.
    pub accumulation: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { sequences: 16, tokens: 0, accumulation: 1 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunLength {
    /// Optimiser steps; 0 derives them from `epochs`.
    pub steps: u64,
    /// Passes over the corpus, used when `steps` is 0.
    pub epochs: u64,
    pub seed: u64,
    /// Write a metrics line every this many steps.
    pub log_every: u64,
    /// Held-out evaluation every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Held-out batches per evaluation.
    pub eval_batches: usize,
    /// Run checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Run checkpoints kept (the oldest are deleted).
    pub keep_checkpoints: usize,
    /// Stop after this many non-finite losses in a row.
    pub max_bad_steps: u64,
}

impl Default for RunLength {
    fn default() -> Self {
        RunLength {
            steps: 1000,
            epochs: 0,
            seed: 42,
            log_every: 10,
            eval_every: 200,
            eval_batches: 20,
            checkpoint_every: 500,
            keep_checkpoints: 2,
            max_bad_steps: 5,
        }
    }
}

/// Keys that a config may hold although the defaults leave them out.
const OPTIONAL_KEYS: &[&str] = &["teacher"];

impl RunConfig {
    /// Reads a TOML file and applies `key=value` overrides (dotted keys, TOML values; a value
    /// that does not parse as TOML is taken as a string).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read run config {}", path.display()))?;
        let mut table: Table =
            toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
        for item in overrides {
            apply_override(&mut table, item)?;
        }
        Self::from_table(table).with_context(|| format!("in run config {}", path.display()))
    }

    pub fn from_table(table: Table) -> Result<Self> {
        check_keys(&table)?;
        let config: RunConfig =
            Value::Table(table).try_into().map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.message()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        self.loss.validate()?;
        if self.batch.sequences == 0 && self.batch.tokens == 0 {
            bail!("batch: set `sequences` or `tokens` above 0");
        }
        if self.batch.accumulation == 0 {
            bail!("batch.accumulation must be at least 1");
        }
        if self.run.steps == 0 && self.run.epochs == 0 {
            bail!("run: set `steps` or `epochs` above 0");
        }
        if !(0.0..=1.0).contains(&self.optim.warmup) {
            bail!("optim.warmup is a share of the steps, between 0 and 1; got {}", self.optim.warmup);
        }
        if self.optim.adamw.lr.is_nan() || self.optim.adamw.lr <= 0.0 {
            bail!("optim.lr must be positive, got {}", self.optim.adamw.lr);
        }
        Ok(())
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

fn apply_override(table: &mut Table, item: &str) -> Result<()> {
    let (key, raw) = item.split_once('=').with_context(|| format!("--set {item:?}: expected key=value"))?;
    let (key, raw) = (key.trim(), raw.trim());
    let value = match toml::from_str::<Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap(),
        Err(_) => Value::String(raw.to_string()),
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap();
    let mut node = table;
    for part in parts {
        let entry = node.entry(part.to_string()).or_insert_with(|| Value::Table(Table::new()));
        node = entry.as_table_mut().with_context(|| format!("--set {key}: `{part}` is not a table"))?;
    }
    node.insert(last.to_string(), value);
    Ok(())
}

fn dotted_keys(table: &Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            Value::Table(t) => dotted_keys(t, &key, out),
            _ => out.push(key),
        }
    }
}

/// Rejects unknown keys before deserialising, naming the nearest valid one.
fn check_keys(table: &Table) -> Result<()> {
    let example = RunConfig {
        teacher: None,
        student: PathBuf::new(),
        corpus: PathBuf::new(),
        out: PathBuf::new(),
        loss: Default::default(),
        optim: Default::default(),
        batch: Default::default(),
        masking: Default::default(),
        run: Default::default(),
        compute: Default::default(),
    };
    let known_table: Table = toml::from_str(&example.to_toml()?)?;
    let mut known = Vec::new();
    dotted_keys(&known_table, "", &mut known);
    known.extend(OPTIONAL_KEYS.iter().map(|k| k.to_string()));
    let mut given = Vec::new();
    dotted_keys(table, "", &mut given);
    for key in given {
        if !known.contains(&key) {
            let nearest = known.iter().min_by_key(|k| edit_distance(k, &key)).unwrap();
            bail!("unknown config key `{key}`; did you mean `{nearest}`?");
        }
    }
    for required in ["student", "corpus", "out"] {
        if !table.contains_key(required) {
            bail!("the config lacks `{required}`");
        }
    }
    Ok(())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_follow_the_method_table() {
        let c = RunConfig::from_table(table("student = 's'\ncorpus = 'c'\nout = 'o'")).unwrap();
        assert_eq!(c.loss, LossConfig::default());
        assert_eq!((c.loss.temperature, c.loss.alpha_ce, c.loss.alpha_mlm, c.loss.alpha_cos), (2.0, 5.0, 2.0, 1.0));
        assert_eq!((c.optim.adamw.beta1, c.optim.adamw.beta2, c.optim.adamw.eps), (0.9, 0.98, 1e-6));
        assert_eq!((c.optim.adamw.lr, c.optim.warmup, c.optim.clip_grad_norm), (5e-4, 0.05, 5.0));
        // The resolved config reads back to the same config.
        let again = RunConfig::from_table(toml::from_str(&c.to_toml().unwrap()).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn the_example_config_lists_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/run.toml");
        let example = RunConfig::load(&path, &[]).unwrap();
        let defaults = RunConfig::from_table(table("student = 's'\ncorpus = 'c'\nout = 'o'")).unwrap();
        assert_eq!(
            (&example.loss, &example.optim, &example.batch, &example.masking, &example.run, &example.compute),
            (&defaults.loss, &defaults.optim, &defaults.batch, &defaults.masking, &defaults.run, &defaults.compute)
        );
        assert!(example.teacher.is_some());
    }

    #[test]
    fn unknown_keys_name_the_nearest_valid_one() {
        let e =
            RunConfig::from_table(table("student='s'\ncorpus='c'\nout='o'\n[optim]\nlearning_rate = 1")).unwrap_err();
        assert!(format!("{e:#}").contains("optim.learning_rate"), "{e:#}");
        let e = RunConfig::from_table(table("student='s'\ncorpus='c'\nout='o'\n[loss]\ntemprature = 3.0")).unwrap_err();
        assert!(format!("{e:#}").contains("did you mean `loss.temperature`"), "{e:#}");
    }

    #[test]
    fn overrides_set_nested_keys() {
        let mut t = table("student='s'\ncorpus='c'\nout='o'");
        apply_override(&mut t, "loss.temperature=3.5").unwrap();
        apply_override(&mut t, "teacher=assets/teacher").unwrap();
        let c = RunConfig::from_table(t).unwrap();
        assert_eq!(c.loss.temperature, 3.5);
        assert_eq!(c.teacher, Some(PathBuf::from("assets/teacher")));
    }
}
