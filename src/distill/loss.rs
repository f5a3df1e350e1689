//! DistilBERT's triple loss, exactly (DESIGN.md, method table and traps 1–4):
//!
//! - `ce`: T² · KL(softmax(t/T) ‖ softmax(s/T)), mean over the selected token rows (all
//!   non-padding tokens, or only the masked ones with `restrict_ce_to_mask`);
//! - `mlm`: cross-entropy of the student's logits (T = 1) against the true tokens, mean over the
//!   masked positions;
//! - `cos`: mean over non-padding tokens of 1 − cos(h_s, h_t), last hidden states;
//! - `mse`: Σ (s − t)² over the selected rows' logits, divided by the number of rows.
//!
//! Only the selected rows are projected onto the vocabulary: padding never reaches a loss and
//! costs no vocabulary product.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::vocab_loss::vocab_loss;
use crate::model::ops::gather_rows;
use crate::model::Encoder;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub temperature: f64,
    pub alpha_ce: f64,
    pub alpha_mlm: f64,
    pub alpha_cos: f64,
    pub alpha_mse: f64,
    pub restrict_ce_to_mask: bool,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            temperature: 2.0,
            alpha_ce: 5.0,
            alpha_mlm: 2.0,
            alpha_cos: 1.0,
            alpha_mse: 0.0,
            restrict_ce_to_mask: false,
        }
    }
}

impl LossConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            bail!("loss temperature must be a positive number, got {}", self.temperature);
        }
        for (name, a) in [
            ("alpha_ce", self.alpha_ce),
            ("alpha_mlm", self.alpha_mlm),
            ("alpha_cos", self.alpha_cos),
            ("alpha_mse", self.alpha_mse),
        ] {
            if !(a >= 0.0 && a.is_finite()) {
                bail!("loss weight {name} must be a non-negative number, got {a}");
            }
        }
        if self.alpha_ce + self.alpha_mlm + self.alpha_cos + self.alpha_mse == 0.0 {
            bail!("all loss weights are 0: nothing would be learned");
        }
        Ok(())
    }
}

/// The unweighted components and the weighted total, as scalars; `total` carries the graph.
pub struct LossParts {
    pub ce: Tensor,
    pub mlm: Tensor,
    pub cos: Tensor,
    pub mse: Tensor,
    pub total: Tensor,
}

/// The same values as plain numbers, for logs and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossValues {
    pub ce: f64,
    pub mlm: f64,
    pub cos: f64,
    pub mse: f64,
    pub total: f64,
}

impl LossParts {
    pub fn values(&self) -> Result<LossValues> {
        let v = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?) };
        Ok(LossValues {
            ce: v(&self.ce)?,
            mlm: v(&self.mlm)?,
            cos: v(&self.cos)?,
            mse: v(&self.mse)?,
            total: v(&self.total)?,
        })
    }
}

/// How many rows each loss averages over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    /// Non-padding tokens (the cosine loss).
    pub real: usize,
    /// Rows of the vocabulary losses (KL and MSE).
    pub selected: usize,
    /// MLM targets.
    pub targets: usize,
}

/// Which token rows (indices into the flattened batch) each loss reads, and what it is
/// averaged over.
pub struct Rows {
    /// Non-padding tokens.
    pub real: Vec<u32>,
    /// Rows of the vocabulary losses.
    pub selected: Vec<u32>,
    /// The true token of each selected row, or −1 where it has no MLM target.
    pub targets: Vec<i64>,
    /// The denominators of the means: this batch's own counts, or the whole batch's when this
    /// is one rank's part of it ([`Rows::averaged_over`]).
    pub denominators: RowCounts,
}

impl Rows {
    pub fn new(attention_mask: &[Vec<u32>], labels: &[Vec<i64>], restrict_to_targets: bool) -> Result<Self> {
        if attention_mask.len() != labels.len() || attention_mask.iter().zip(labels).any(|(m, l)| m.len() != l.len()) {
            bail!("`labels` must have the shape of `attention_mask`");
        }
        let mut rows =
            Rows { real: Vec::new(), selected: Vec::new(), targets: Vec::new(), denominators: RowCounts::default() };
        let flat = attention_mask.iter().flatten().zip(labels.iter().flatten());
        for (i, (&m, &label)) in flat.enumerate() {
            if label >= 0 && m == 0 {
                bail!("a label is set on a padding position (flattened index {i})");
            }
            if m == 1 {
                rows.real.push(i as u32);
            }
            let keep = if restrict_to_targets { label >= 0 } else { m == 1 };
            if keep {
                rows.selected.push(i as u32);
                rows.targets.push(if label >= 0 { label } else { -1 });
            }
            if label >= 0 {
                rows.denominators.targets += 1;
            }
        }
        rows.denominators.real = rows.real.len();
        rows.denominators.selected = rows.selected.len();
        Ok(rows)
    }

    /// Averages the losses over `whole` instead of this batch's own counts: a rank's part of a
    /// batch, whose losses summed over the ranks are then the whole batch's.
    pub fn averaged_over(self, whole: RowCounts) -> Self {
        Rows { denominators: whole, ..self }
    }
}

fn zero(device: &Device) -> Result<Tensor> {
    Ok(Tensor::new(0f32, device)?)
}

/// Σ over rows of 1 − cos(a, b), divided by `n`, with PyTorch's ε inside the norms; in float32
/// whatever the models' types.
fn cosine_loss(a: &Tensor, b: &Tensor, n: usize) -> Result<Tensor> {
    let (a, b) = (&a.to_dtype(DType::F32)?, &b.to_dtype(DType::F32)?);
    let dot = (a * b)?.sum(1)?;
    let na = (a.sqr()?.sum(1)? + 1e-12)?;
    let nb = (b.sqr()?.sum(1)? + 1e-12)?;
    let cos = (dot / (na * nb)?.sqrt()?)?;
    Ok((cos.affine(-1.0, 1.0)?.sum_all()? / n as f64)?)
}

/// The distillation loss of one batch, from both models' last hidden states. The teacher's
/// side never carries a gradient.
pub fn distillation_loss(
    cfg: &LossConfig,
    student: &Encoder,
    student_last: &Tensor,
    teacher: &Encoder,
    teacher_last: &Tensor,
    rows: &Rows,
) -> Result<LossParts> {
    let device = student_last.device();
    let teacher_last = teacher_last.detach();
    let (mut ce, mut mlm, mut mse) = (zero(device)?, zero(device)?, zero(device)?);
    if !rows.selected.is_empty() {
        let (s_logits, s_bias) = student.mlm_head()?.unbiased_logits(&gather_rows(student_last, &rows.selected)?)?;
        let (t_logits, t_bias) = teacher.mlm_head()?.unbiased_logits(&gather_rows(&teacher_last, &rows.selected)?)?;
        let per_row = vocab_loss(&s_logits, &s_bias, &t_logits.detach(), &t_bias, &rows.targets, cfg.temperature)?;
        let n = rows.denominators.selected as f64;
        let t2 = cfg.temperature * cfg.temperature;
        ce = (per_row.narrow(1, 0, 1)?.sum_all()? * (t2 / n))?;
        if rows.denominators.targets > 0 {
            mlm = (per_row.narrow(1, 1, 1)?.sum_all()? / rows.denominators.targets as f64)?;
        }
        mse = (per_row.narrow(1, 2, 1)?.sum_all()? / n)?;
    }
    let cos = if rows.real.is_empty() {
        zero(device)?
    } else {
        let (s, t) = (gather_rows(student_last, &rows.real)?, gather_rows(&teacher_last, &rows.real)?);
        cosine_loss(&s, &t, rows.denominators.real)?
    };
    let total = ((&ce * cfg.alpha_ce)? + (&mlm * cfg.alpha_mlm)? + (&cos * cfg.alpha_cos)? + (&mse * cfg.alpha_mse)?)?;
    Ok(LossParts { ce, mlm, cos, mse, total })
}

/// Masked-language-model loss alone (teacher pretraining): cross-entropy over the masked
/// positions, whose rows alone are projected onto the vocabulary (`rows` selects the targets).
pub fn mlm_loss(model: &Encoder, last_hidden: &Tensor, rows: &Rows) -> Result<LossParts> {
    let device = last_hidden.device();
    let mlm = if rows.selected.is_empty() {
        zero(device)?
    } else {
        let (logits, bias) = model.mlm_head()?.unbiased_logits(&gather_rows(last_hidden, &rows.selected)?)?;
        // The fused op wants a second set of logits; the model's own, detached, cost one extra
        // exponential per entry and contribute nothing (their KL term has weight 0).
        let per_row = vocab_loss(&logits, &bias, &logits.detach(), &bias, &rows.targets, 1.0)?;
        (per_row.narrow(1, 1, 1)?.sum_all()? / rows.denominators.targets as f64)?
    };
    Ok(LossParts { ce: zero(device)?, mlm: mlm.clone(), cos: zero(device)?, mse: zero(device)?, total: mlm })
}
