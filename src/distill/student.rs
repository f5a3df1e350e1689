//! The student: the teacher's architecture with fewer layers, initialised from the teacher's
//! embeddings, a chosen subset of its layers and its whole MLM head (DESIGN.md, trap 9).

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use crate::model::{Checkpoint, Family, ModelConfig, Weights};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StudentArch {
    /// The teacher's own family, with fewer layers.
    Same,
    /// A DistilBERT-family checkpoint (from a BERT teacher).
    Distilbert,
}

/// `count` teacher layers spread evenly, the first and the last always kept:
/// 12 → 6 gives DistilBERT's [0, 2, 4, 7, 9, 11].
pub fn spread_layers(teacher_layers: usize, count: usize) -> Vec<usize> {
    if count <= 1 || teacher_layers <= 1 {
        return vec![0; count.min(1)];
    }
    let last = (teacher_layers - 1) as f64;
    (0..count).map(|i| (i as f64 * last / (count - 1) as f64).round() as usize).collect()
}

/// The student's config and weights, and a line per teacher tensor group that was left out
/// on purpose.
pub struct StudentInit {
    pub config: ModelConfig,
    pub weights: Weights,
    pub left_out: Vec<String>,
}

pub fn init_student(teacher: &Checkpoint, layers: &[usize], arch: StudentArch) -> Result<StudentInit> {
    let t = &teacher.config;
    if !teacher.has_head {
        bail!(
            "the teacher {} has no MLM head; a student copies it and distillation needs its predictions (give it one with `distil teacher fit-head`)",
            teacher.dir.display()
        );
    }
    if layers.is_empty() {
        bail!("a student needs at least one layer");
    }
    if let Some(&l) = layers.iter().find(|&&l| l >= t.num_layers) {
        bail!("layer {l} does not exist: the teacher has layers 0..={}", t.num_layers - 1);
    }
    if layers.windows(2).any(|w| w[0] >= w[1]) {
        bail!("layers must be listed in increasing order without repeats, got {layers:?}");
    }
    let mut config = match arch {
        StudentArch::Same => t.clone(),
        StudentArch::Distilbert => distilbert_config(t)?,
    };
    config.num_layers = layers.len();

    let mut weights = Weights::new();
    let mut left_out = Vec::new();
    for (name, tensor) in &teacher.weights {
        let target = match name.strip_prefix("layers.") {
            Some(rest) => {
                let (index, param) = rest.split_once('.').context("malformed layer tensor name")?;
                let index: usize = index.parse()?;
                match layers.iter().position(|&l| l == index) {
                    Some(new) => format!("layers.{new}.{param}"),
                    None => continue,
                }
            }
            None => name.clone(),
        };
        weights.insert(target, tensor.clone());
    }
    let dropped: Vec<String> = (0..t.num_layers).filter(|l| !layers.contains(l)).map(|l| l.to_string()).collect();
    if !dropped.is_empty() {
        left_out.push(format!("teacher layers {} (not chosen)", dropped.join(", ")));
    }
    if arch == StudentArch::Distilbert {
        // DistilBERT has no segment embeddings. Every single-segment input adds row 0 of the
        // token-type table, so folding that row into each position row keeps those inputs exact.
        let token_type = weights.remove("embeddings.token_type").context("the BERT teacher has no token-type table")?;
        let row0 = token_type.narrow(0, 0, 1)?;
        let position = weights["embeddings.position"].broadcast_add(&row0)?;
        weights.insert("embeddings.position".into(), position);
        if t.type_vocab_size > 1 {
            left_out.push(format!(
                "token-type rows 1..{} (DistilBERT has no segments; row 0 is folded into the position table)",
                t.type_vocab_size - 1
            ));
        }
    }
    Ok(StudentInit { config, weights, left_out })
}

/// A DistilBERT config with the BERT teacher's sizes.
fn distilbert_config(t: &ModelConfig) -> Result<ModelConfig> {
    if t.family != Family::Bert {
        bail!("--arch distilbert needs a BERT teacher; this teacher is {}", t.family.model_type());
    }
    if (t.layer_norm_eps - 1e-12).abs() > 1e-15 {
        bail!("--arch distilbert: DistilBERT's LayerNorm ε is fixed at 1e-12, the teacher uses {:e}", t.layer_norm_eps);
    }
    let activation = t.raw.get("hidden_act").cloned().unwrap_or_else(|| "gelu".into());
    let mut raw = Map::new();
    for (k, v) in [
        ("model_type", Value::from("distilbert")),
        ("vocab_size", t.vocab_size.into()),
        ("dim", t.hidden_size.into()),
        ("n_layers", t.num_layers.into()),
        ("n_heads", t.num_heads.into()),
        ("hidden_dim", t.intermediate_size.into()),
        ("activation", activation),
        ("max_position_embeddings", t.max_position_embeddings.into()),
        ("pad_token_id", t.pad_token_id.into()),
        ("sinusoidal_pos_embds", false.into()),
        ("tie_word_embeddings", t.tie_word_embeddings.into()),
        ("dropout", t.hidden_dropout.into()),
        ("attention_dropout", t.attention_dropout.into()),
        ("initializer_range", t.raw.get("initializer_range").cloned().unwrap_or(0.02.into())),
    ] {
        raw.insert(k.to_string(), v);
    }
    ModelConfig::from_map(raw)
}

/// Checks that a student can learn from a teacher: same vocabulary, same width.
pub fn check_pair(teacher: &ModelConfig, student: &ModelConfig) -> Result<()> {
    if teacher.vocab_size != student.vocab_size {
        bail!(
            "the student's vocabulary has {} tokens, the teacher's {}: they must share one tokenizer",
            student.vocab_size,
            teacher.vocab_size
        );
    }
    if student.hidden_size != teacher.hidden_size {
        bail!(
            "the student is {} wide and the teacher {}: the cosine loss compares hidden states, so the widths must match",
            student.hidden_size,
            teacher.hidden_size
        );
    }
    Ok(())
}
