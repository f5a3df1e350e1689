//! Using an encoder: masked-word predictions, sentence embeddings, and the raw outputs that
//! parity checks compare.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use serde::Deserialize;

use crate::model::{ops, Checkpoint, Encoder, EncoderInput, TextTokenizer};

/// A checkpoint read strictly, with its encoder built.
pub fn load_encoder(dir: &Path, device: &Device) -> Result<(Checkpoint, Encoder)> {
    let ckpt = Checkpoint::load(dir, device)?;
    let encoder = Encoder::frozen(&ckpt.config, &ckpt.weights)?;
    Ok((ckpt, encoder))
}

/// One batch as `distil forward` reads it: padded lists of lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchJson {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
    #[serde(default)]
    pub token_type_ids: Option<Vec<Vec<u32>>>,
    /// MLM targets (−100 where none), for `distil loss`.
    #[serde(default)]
    pub labels: Option<Vec<Vec<i64>>>,
}

impl BatchJson {
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read batch file {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected a JSON object with `input_ids` and `attention_mask` (lists of lists of token ids, padded) and optionally `token_type_ids`",
                path.display()
            )
        })
    }

    pub fn to_input(&self, encoder: &Encoder, device: &Device) -> Result<EncoderInput> {
        EncoderInput::from_rows(
            &encoder.cfg,
            &self.input_ids,
            &self.attention_mask,
            self.token_type_ids.as_deref(),
            device,
        )
    }
}

/// Every output of a forward pass by name: `hidden_states.{i}` (0 is the embedding
/// output), `last_hidden_state`, and `logits` when the model has an MLM head.
pub fn named_outputs(encoder: &Encoder, input: &EncoderInput) -> Result<BTreeMap<String, Tensor>> {
    let hidden = encoder.forward(input, None)?;
    let mut out = BTreeMap::new();
    let last = hidden.last().unwrap().clone();
    if encoder.head().is_some() {
        out.insert("logits".to_string(), encoder.logits(&last)?);
    }
    out.insert("last_hidden_state".to_string(), last);
    for (i, h) in hidden.into_iter().enumerate() {
        out.insert(format!("hidden_states.{i}"), h);
    }
    Ok(out)
}

/// The top predictions for one masked position.
#[derive(Debug, Clone)]
pub struct MaskPrediction {
    pub position: usize,
    pub candidates: Vec<(String, f32)>,
}

/// The `top_k` most likely tokens, with probabilities, for each mask token of each text.
pub fn fill_mask(
    encoder: &Encoder,
    tokenizer: &TextTokenizer,
    texts: &[String],
    top_k: usize,
) -> Result<Vec<Vec<MaskPrediction>>> {
    let mask_id = tokenizer.special.mask;
    let batch = tokenizer.encode_batch(texts, encoder.cfg.max_sequence_length())?;
    for (text, ids) in texts.iter().zip(&batch.input_ids) {
        if !ids.contains(&mask_id) {
            bail!(
                "the text {text:?} has no mask token; write `{}` where a word should be predicted",
                tokenizer.mask_token()
            );
        }
    }
    let device = Device::Cpu;
    let types = (encoder.cfg.type_vocab_size > 0).then_some(batch.token_type_ids.as_slice());
    let input = EncoderInput::from_rows(&encoder.cfg, &batch.input_ids, &batch.attention_mask, types, &device)?;
    let hidden = encoder.forward(&input, None)?;
    let logits = encoder.logits(hidden.last().unwrap())?;
    let probs = ops::softmax(&logits)?;
    let mut results = Vec::with_capacity(texts.len());
    for (row, ids) in batch.input_ids.iter().enumerate() {
        let mut predictions = Vec::new();
        for (position, _) in ids.iter().enumerate().filter(|(_, &id)| id == mask_id) {
            let p: Vec<f32> = probs.get(row)?.get(position)?.to_vec1()?;
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            let candidates =
                order.into_iter().take(top_k).map(|id| (tokenizer.id_to_token(id as u32), p[id])).collect();
            predictions.push(MaskPrediction { position, candidates });
        }
        results.push(predictions);
    }
    Ok(results)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pooling {
    /// Mean of the last hidden states over the real tokens (sentence-transformers' choice).
    Mean,
    /// The last hidden state of the first token.
    Cls,
}

/// One pooled vector per text, computed in batches of `batch_size`.
pub fn embed(
    encoder: &Encoder,
    tokenizer: &TextTokenizer,
    texts: &[String],
    pooling: Pooling,
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    let device = Device::Cpu;
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch_size.max(1)) {
        let batch = tokenizer.encode_batch(chunk, encoder.cfg.max_sequence_length())?;
        let types = (encoder.cfg.type_vocab_size > 0).then_some(batch.token_type_ids.as_slice());
        let input = EncoderInput::from_rows(&encoder.cfg, &batch.input_ids, &batch.attention_mask, types, &device)?;
        let hidden = encoder.forward(&input, None)?;
        let last = hidden.last().unwrap();
        let pooled = match pooling {
            Pooling::Cls => last.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => mean_pool(last, &input.attention_mask)?,
        };
        out.extend(pooled.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Mean of `hidden` (batch, seq, dim) over the positions where `mask` is 1.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    Ok(summed.broadcast_div(&counts)?)
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(f32::MIN_POSITIVE)
}
