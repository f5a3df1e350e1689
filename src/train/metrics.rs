//! `metrics.jsonl`: one JSON object per logged step or evaluation, readable by people and by
//! pandas alike. A resumed run first cuts the file back to its checkpoint's step, so that the
//! file ends up as an unbroken run's would.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::distill::loss::LossValues;

/// One training step's line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub epoch: u64,
    pub loss: LossValues,
    pub lr: f64,
    pub grad_norm: f64,
    /// Real (non-padding) tokens per second through the step, both models included.
    pub tokens_per_s: f64,
    /// Non-finite losses skipped so far.
    pub skipped: u64,
}

/// One held-out evaluation's line.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    pub mlm_loss: f64,
    pub mlm_accuracy: f64,
    /// Mean KL(teacher ‖ student) at T = 1 over real tokens (absent when pretraining).
    pub kl: Option<f64>,
    /// Mean cosine of the last hidden states over real tokens (absent when pretraining).
    pub cosine: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    Step(StepRecord),
    Eval { eval: EvalRecord },
}

impl Record {
    fn step(&self) -> u64 {
        match self {
            Record::Step(s) => s.step,
            Record::Eval { eval } => eval.step,
        }
    }
}

pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `metrics.jsonl` in `dir` for appending, first dropping lines after `keep_until`.
    pub fn open(dir: &Path, keep_until: u64) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        let kept: Vec<String> = match File::open(&path) {
            Ok(f) => BufReader::new(f)
                .lines()
                .map(|l| l.with_context(|| format!("cannot read {}", path.display())))
                .filter(|l| match l {
                    Ok(line) => serde_json::from_str::<Record>(line).is_ok_and(|r| r.step() <= keep_until),
                    Err(_) => true,
                })
                .collect::<Result<_>>()?,
            Err(_) => Vec::new(),
        };
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        crate::model::checkpoint::write_atomic(&path, text.as_bytes())?;
        let file =
            OpenOptions::new().append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(MetricsLog { path, file })
    }

    pub fn write(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Every record of a run folder's metrics, in order.
    pub fn read(dir: &Path) -> Result<Vec<Record>> {
        let path = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{} line {}: not a metrics record", path.display(), i + 1))
            })
            .collect()
    }
}
