//! The loss of one given batch for a teacher/student pair, with the student's gradients:
//! what `distil loss` prints, for parity with the reference and for debugging a pair.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, Var};

use super::loss::{distillation_loss, LossConfig, LossValues, Rows};
use super::student::check_pair;
use crate::infer::BatchJson;
use crate::model::checkpoint::saved_keys;
use crate::model::{Checkpoint, Encoder, Weights};

/// Both models in evaluation mode (no dropout). Gradients, when asked for, are keyed by the
/// names the student's checkpoint file uses.
pub fn batch_loss(
    teacher: &Checkpoint,
    student: &Checkpoint,
    batch: &BatchJson,
    cfg: &LossConfig,
    with_grads: bool,
) -> Result<(LossValues, Option<BTreeMap<String, Tensor>>)> {
    cfg.validate()?;
    check_pair(&teacher.config, &student.config)?;
    // The batch goes where the models' weights are.
    let device = student.weights.values().next().map_or(Device::Cpu, |t| t.device().clone());
    let labels = batch.labels.as_ref().context("the batch has no `labels` (−100 where a position has no target)")?;
    let teacher_model = Encoder::frozen(&teacher.config, &teacher.weights)?;
    let vars: BTreeMap<String, Var> =
        student.weights.iter().map(|(k, t)| Ok((k.clone(), Var::from_tensor(t)?))).collect::<Result<_>>()?;
    let weights: Weights = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    let student_model = Encoder::new(&student.config, &weights)?;

    let teacher_input = batch.to_input(&teacher_model, &device)?;
    // A DistilBERT student has no segments; it sees the batch without them.
    let student_batch = match student.config.type_vocab_size {
        0 => BatchJson { token_type_ids: None, ..batch.clone() },
        _ => batch.clone(),
    };
    let student_input = student_batch.to_input(&student_model, &device)?;
    let rows = Rows::new(&batch.attention_mask, labels, cfg.restrict_ce_to_mask)?;
    let t_last = teacher_model.forward(&teacher_input, None)?.pop().unwrap();
    let s_last = student_model.forward(&student_input, None)?.pop().unwrap();
    let parts = distillation_loss(cfg, &student_model, &s_last, &teacher_model, &t_last, &rows)?;
    let values = parts.values()?;
    let grads = if with_grads {
        let store = parts.total.backward()?;
        let mut out = BTreeMap::new();
        for (name, var) in &vars {
            let g = store.get(var).with_context(|| format!("no gradient reached `{name}`"))?;
            for key in saved_keys(&student.config, name, student.has_head) {
                out.insert(key, g.clone());
            }
        }
        Some(out)
    } else {
        None
    };
    Ok((values, grads))
}
