//! The encoder itself: embeddings, post-LayerNorm transformer layers and the MLM head, for
//! every BERT-family architecture, under one set of canonical tensor names.
//!
//! Weights live in a `Weights` map (canonical name → tensor); the modules borrow from it. The
//! map is what checkpoints read and write (through each family's key names in
//! `checkpoint.rs`) and what training turns into variables, so one list of names,
//! `parameter_shapes`, describes the model everywhere.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Result, Tensor};

use super::config::{Activation, Family, ModelConfig};
use super::frozen::{FrozenAttention, PackedRows};
use super::ops;
use crate::rng::Rng;

/// Canonical tensor name → tensor.
pub type Weights = BTreeMap<String, Tensor>;

/// Every tensor of the model with its shape, in a fixed order. `with_head` adds the MLM head;
/// a tied decoder has no tensor of its own.
pub fn parameter_shapes(cfg: &ModelConfig, with_head: bool) -> Vec<(String, Vec<usize>)> {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let mut out: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word".into(), vec![v, h]),
        ("embeddings.position".into(), vec![cfg.max_position_embeddings, h]),
    ];
    if cfg.type_vocab_size > 0 {
        out.push(("embeddings.token_type".into(), vec![cfg.type_vocab_size, h]));
    }
    let norm = |out: &mut Vec<(String, Vec<usize>)>, name: &str| {
        out.push((format!("{name}.weight"), vec![h]));
        out.push((format!("{name}.bias"), vec![h]));
    };
    norm(&mut out, "embeddings.norm");
    for l in 0..cfg.num_layers {
        for proj in ["query", "key", "value", "output"] {
            out.push((format!("layers.{l}.attention.{proj}.weight"), vec![h, h]));
            out.push((format!("layers.{l}.attention.{proj}.bias"), vec![h]));
        }
        norm(&mut out, &format!("layers.{l}.attention_norm"));
        out.push((format!("layers.{l}.ffn.up.weight"), vec![i, h]));
        out.push((format!("layers.{l}.ffn.up.bias"), vec![i]));
        out.push((format!("layers.{l}.ffn.down.weight"), vec![h, i]));
        out.push((format!("layers.{l}.ffn.down.bias"), vec![h]));
        norm(&mut out, &format!("layers.{l}.ffn_norm"));
    }
    if with_head {
        out.push(("head.transform.weight".into(), vec![h, h]));
        out.push(("head.transform.bias".into(), vec![h]));
        norm(&mut out, "head.norm");
        if !cfg.tie_word_embeddings {
            out.push(("head.decoder.weight".into(), vec![v, h]));
        }
        out.push(("head.bias".into(), vec![v]));
    }
    out
}

/// True for the tensors that AdamW must not decay: biases and LayerNorm weights.
pub fn is_no_decay(name: &str) -> bool {
    name.ends_with(".bias") || name == "head.bias" || name.contains("norm.")
}

/// Random weights as transformers initialises them: normal(0, std) matrices, zero biases,
/// unit LayerNorm weights, and a zero row for the padding token.
pub fn init_weights(cfg: &ModelConfig, with_head: bool, std: f64, rng: &mut Rng, device: &Device) -> Result<Weights> {
    let mut w = Weights::new();
    for (name, shape) in parameter_shapes(cfg, with_head) {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") || name == "head.bias" {
            vec![0.0; n]
        } else {
            let mut v: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
            if name == "embeddings.word" {
                let h = shape[1];
                let p = cfg.pad_token_id as usize;
                v[p * h..(p + 1) * h].fill(0.0);
            }
            v
        };
        w.insert(name, Tensor::from_vec(values, shape, device)?);
    }
    Ok(w)
}

/// The inputs of one forward pass: ids, the 0/1 attention mask, segment ids and positions.
#[derive(Debug, Clone)]
pub struct EncoderInput {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub token_type_ids: Option<Tensor>,
    pub position_ids: Tensor,
}

impl EncoderInput {
    /// Builds the tensors from padded rows, checking them against the model's sizes.
    pub fn from_rows(
        cfg: &ModelConfig,
        input_ids: &[Vec<u32>],
        attention_mask: &[Vec<u32>],
        token_type_ids: Option<&[Vec<u32>]>,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let b = input_ids.len();
        if b == 0 {
            bail!("the batch is empty: `input_ids` has no rows");
        }
        let s = input_ids[0].len();
        if s == 0 {
            bail!("`input_ids` rows are empty");
        }
        let check = |what: &str, rows: &[Vec<u32>]| -> anyhow::Result<()> {
            if rows.len() != b {
                bail!("`{what}` has {} rows; expected {b} like `input_ids`", rows.len());
            }
            if let Some((r, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != s) {
                bail!("`{what}` row {r} has {} entries; expected {s} (rows must be padded to one length)", row.len());
            }
            Ok(())
        };
        check("input_ids", input_ids)?;
        check("attention_mask", attention_mask)?;
        if let Some(rows) = token_type_ids {
            check("token_type_ids", rows)?;
        }
        if s > cfg.max_sequence_length() {
            bail!("sequences of {s} tokens are longer than the model's maximum of {}", cfg.max_sequence_length());
        }
        for (r, row) in input_ids.iter().enumerate() {
            if let Some((c, id)) = row.iter().enumerate().find(|(_, &id)| id as usize >= cfg.vocab_size) {
                bail!("`input_ids` [{r}][{c}] is {id}, outside the vocabulary of {} tokens", cfg.vocab_size);
            }
        }
        for (r, row) in attention_mask.iter().enumerate() {
            if let Some((c, m)) = row.iter().enumerate().find(|(_, &m)| m > 1) {
                bail!("`attention_mask` [{r}][{c}] is {m}; expected 0 or 1");
            }
        }
        let types = match (token_type_ids, cfg.type_vocab_size) {
            (None, _) => None,
            (Some(_), 0) => bail!("`token_type_ids` given, but a {} model has no token types", cfg.family.model_type()),
            (Some(rows), n) => {
                for (r, row) in rows.iter().enumerate() {
                    if let Some((c, t)) = row.iter().enumerate().find(|(_, &t)| t as usize >= n) {
                        bail!("`token_type_ids` [{r}][{c}] is {t}; the model has {n} token types");
                    }
                }
                Some(rows)
            }
        };
        let positions: Vec<Vec<u32>> = match cfg.family {
            // RoBERTa numbers the non-padding tokens from padding_idx + 1, padding gets padding_idx.
            Family::Roberta => input_ids
                .iter()
                .map(|row| {
                    let mut count = 0;
                    row.iter()
                        .map(|&id| {
                            if id == cfg.pad_token_id {
                                cfg.pad_token_id
                            } else {
                                count += 1;
                                cfg.pad_token_id + count
                            }
                        })
                        .collect()
                })
                .collect(),
            _ => vec![(0..s as u32).collect(); b],
        };
        let tensor = |rows: &[Vec<u32>]| Tensor::new(rows.concat(), device)?.reshape((b, s));
        Ok(EncoderInput {
            input_ids: tensor(input_ids)?,
            attention_mask: tensor(attention_mask)?,
            token_type_ids: types.map(tensor).transpose()?,
            position_ids: tensor(&positions)?,
        })
    }
}

/// How an encoder holds its weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// As checkpoints store them ([out, in]): the tensors themselves, which training
    /// differentiates.
    Trainable,
    /// Copied once into the forms a forward pass reads fastest: matrices transposed to
    /// contiguous [in, out] (the matrix product would otherwise repack the whole matrix on every
    /// call, most of a batch-1 pass), query, key and value in one matrix, and the attention
    /// scale folded into the query. For encoders nothing differentiates: teachers, evaluation,
    /// inference.
    Frozen,
}

/// A weight matrix in one of the two layouts.
enum Matrix {
    OutIn(Tensor),
    InOut(Tensor),
}

impl Matrix {
    fn new(out_in: Tensor, layout: Layout) -> Result<Self> {
        Ok(match layout {
            Layout::Trainable => Matrix::OutIn(out_in),
            Layout::Frozen => Matrix::InOut(out_in.t()?.contiguous()?),
        })
    }

    fn apply(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Matrix::OutIn(w) => ops::linear(x, w, bias),
            Matrix::InOut(w) => ops::linear_in_out(x, w, bias),
        }
    }
}

struct Linear {
    weight: Matrix,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.weight.apply(x, Some(&self.bias))
    }

    /// `dropout(x Wᵀ + b) + residual`, with dropout when `rng` is given.
    fn forward_residual(&self, x: &Tensor, residual: &Tensor, dropout: f64, rng: Option<&mut Rng>) -> Result<Tensor> {
        match (&self.weight, rng) {
            (Matrix::InOut(w), None) => ops::linear_in_out_residual(x, w, &self.bias, residual),
            (_, rng) => ops::dropout(&self.forward(x)?, dropout, rng)? + residual,
        }
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// Looks tensors up by canonical name, with an error that names the missing one.
struct Getter<'a> {
    weights: &'a Weights,
    layout: Layout,
}

impl Getter<'_> {
    fn get(&self, name: &str) -> anyhow::Result<Tensor> {
        self.weights.get(name).cloned().with_context(|| format!("model weights have no tensor `{name}`"))
    }
    fn linear(&self, prefix: &str) -> anyhow::Result<Linear> {
        let weight = Matrix::new(self.get(&format!("{prefix}.weight"))?, self.layout)?;
        Ok(Linear { weight, bias: self.get(&format!("{prefix}.bias"))? })
    }

    /// Query, key and value of layer `prefix`; `scale` is the attention's 1/√d.
    fn attention_in(&self, prefix: &str, scale: f64) -> anyhow::Result<AttentionIn> {
        let name = |proj: &str, part: &str| format!("{prefix}.attention.{proj}.{part}");
        Ok(match self.layout {
            Layout::Trainable => AttentionIn::Separate {
                query: self.linear(&format!("{prefix}.attention.query"))?,
                key: self.linear(&format!("{prefix}.attention.key"))?,
                value: self.linear(&format!("{prefix}.attention.value"))?,
            },
            Layout::Frozen => {
                let part = |part: &str| -> anyhow::Result<Tensor> {
                    let q = (self.get(&name("query", part))? * scale)?;
                    Ok(Tensor::cat(&[q, self.get(&name("key", part))?, self.get(&name("value", part))?], 0)?)
                };
                AttentionIn::Fused(Linear { weight: Matrix::new(part("weight")?, self.layout)?, bias: part("bias")? })
            }
        })
    }
    fn norm(&self, prefix: &str, eps: f64) -> anyhow::Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.get(&format!("{prefix}.weight"))?,
            bias: self.get(&format!("{prefix}.bias"))?,
            eps,
        })
    }
}

/// The projections into query, key and value.
enum AttentionIn {
    Separate {
        query: Linear,
        key: Linear,
        value: Linear,
    },
    /// One matrix [hidden, 3 × hidden] for the three, the query's part pre-scaled by 1/√d.
    Fused(Linear),
}

impl AttentionIn {
    /// Query (scaled by 1/√d), key and value as (batch, heads, sequence, head size), contiguous.
    fn project(&self, x: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, s, h) = x.dims3()?;
        let d = h / heads;
        match self {
            AttentionIn::Separate { query, key, value } => {
                let split = |t: Tensor| t.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous();
                let q = split((query.forward(x)? * (1.0 / (d as f64).sqrt()))?)?;
                Ok((q, split(key.forward(x)?)?, split(value.forward(x)?)?))
            }
            AttentionIn::Fused(qkv) => {
                // (b, s, 3, heads, d) → (3, b, heads, s, d) in one copy.
                let all = qkv.forward(x)?.reshape((b, s, 3, heads, d))?.permute((2, 0, 3, 1, 4))?.contiguous()?;
                Ok((all.get(0)?, all.get(1)?, all.get(2)?))
            }
        }
    }

    /// The attention's output before its output projection, shaped like `x`, with dropout on
    /// the attention probabilities when `rng` is given.
    fn context(
        &self,
        x: &Tensor,
        tokens: &Tokens,
        heads: usize,
        dropout: f64,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        match (self, tokens) {
            (AttentionIn::Fused(qkv), Tokens::Packed(rows)) => {
                qkv.forward(x)?.contiguous()?.apply_op1_no_bwd(&FrozenAttention { heads, sequences: &rows.sequences })
            }
            (_, Tokens::Packed(_)) => candle_core::bail!("packed rows need the frozen layout"),
            (_, Tokens::Padded { key_bias }) => {
                let (b, s, h) = x.dims3()?;
                let (q, k, v) = self.project(x, heads)?;
                let probs = ops::masked_softmax(&q.matmul(&k.t()?)?, key_bias)?;
                let probs = ops::dropout(&probs, dropout, rng)?;
                probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))
            }
        }
    }
}

/// How a forward pass holds the batch's tokens.
enum Tokens<'a> {
    /// (batch, sequence, hidden), padding included; the attention masks padded keys with this
    /// additive bias (batch, 1, 1, sequence).
    Padded { key_bias: Tensor },
    /// (real tokens, hidden): frozen float32 encoders on the CPU.
    Packed(&'a PackedRows),
}

struct Layer {
    attention_in: AttentionIn,
    output: Linear,
    attention_norm: LayerNorm,
    up: Linear,
    down: Linear,
    ffn_norm: LayerNorm,
}

/// The MLM head: transform (dense, activation, LayerNorm), then the decoder over the
/// vocabulary, which is the word embedding matrix when tied.
pub struct MlmHead {
    transform: Linear,
    activation: Activation,
    norm: LayerNorm,
    decoder: Matrix,
    bias: Tensor,
}

impl MlmHead {
    /// The transformed hidden states, before the product with the vocabulary.
    pub fn transform(&self, hidden: &Tensor) -> Result<Tensor> {
        let x = ops::activation(&self.transform.forward(hidden)?, self.activation)?;
        self.norm.forward(&x)
    }

    /// Logits over the vocabulary for every position.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        self.decoder.apply(&self.transform(hidden)?, Some(&self.bias))
    }

    /// The logits before the output bias, and that bias, in float32 whatever the model's type
    /// (the losses reduce in float32): the fused vocabulary loss adds the bias itself, saving
    /// two passes over (tokens × vocabulary) and their backward.
    pub fn unbiased_logits(&self, hidden: &Tensor) -> Result<(Tensor, Tensor)> {
        let logits = self.decoder.apply(&self.transform(hidden)?, None)?;
        Ok((logits.to_dtype(DType::F32)?, self.bias.to_dtype(DType::F32)?))
    }
}

pub struct Encoder {
    pub cfg: ModelConfig,
    layout: Layout,
    word: Tensor,
    position: Tensor,
    token_type: Option<Tensor>,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    head: Option<MlmHead>,
}

impl Encoder {
    /// Builds the modules over `weights` themselves, so that gradients reach them (training);
    /// the head exists when its tensors do.
    pub fn new(cfg: &ModelConfig, weights: &Weights) -> anyhow::Result<Self> {
        Self::build(cfg, weights, Layout::Trainable)
    }

    /// An encoder for forward passes only (teachers, evaluation, inference), over copies of
    /// `weights` in the layout the forward pass reads fastest; same outputs as [`Encoder::new`]
    /// to float32 rounding.
    pub fn frozen(cfg: &ModelConfig, weights: &Weights) -> anyhow::Result<Self> {
        Self::build(cfg, weights, Layout::Frozen)
    }

    fn build(cfg: &ModelConfig, weights: &Weights, layout: Layout) -> anyhow::Result<Self> {
        let g = Getter { weights, layout };
        let eps = cfg.layer_norm_eps;
        let scale = 1.0 / (cfg.head_dim() as f64).sqrt();
        let layers = (0..cfg.num_layers)
            .map(|l| {
                let p = format!("layers.{l}");
                Ok(Layer {
                    attention_in: g.attention_in(&p, scale)?,
                    output: g.linear(&format!("{p}.attention.output"))?,
                    attention_norm: g.norm(&format!("{p}.attention_norm"), eps)?,
                    up: g.linear(&format!("{p}.ffn.up"))?,
                    down: g.linear(&format!("{p}.ffn.down"))?,
                    ffn_norm: g.norm(&format!("{p}.ffn_norm"), eps)?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let word = g.get("embeddings.word")?;
        let head = if weights.contains_key("head.bias") {
            let head_activation = match cfg.family {
                // RobertaLMHead applies exact GELU whatever the config says.
                Family::Roberta => Activation::Gelu,
                _ => cfg.activation,
            };
            Some(MlmHead {
                transform: g.linear("head.transform")?,
                activation: head_activation,
                norm: g.norm("head.norm", eps)?,
                decoder: Matrix::new(
                    if cfg.tie_word_embeddings { word.clone() } else { g.get("head.decoder.weight")? },
                    layout,
                )?,
                bias: g.get("head.bias")?,
            })
        } else {
            None
        };
        Ok(Encoder {
            cfg: cfg.clone(),
            layout,
            word,
            position: g.get("embeddings.position")?,
            token_type: if cfg.type_vocab_size > 0 { Some(g.get("embeddings.token_type")?) } else { None },
            embeddings_norm: g.norm("embeddings.norm", eps)?,
            layers,
            head,
        })
    }

    pub fn head(&self) -> Option<&MlmHead> {
        self.head.as_ref()
    }

    pub fn dtype(&self) -> DType {
        self.word.dtype()
    }

    /// All hidden states: the embedding output first, then each layer's output. With a
    /// generator, dropout is active (training); without one the pass is deterministic.
    ///
    /// Frozen float32 encoders on the CPU compute the real tokens alone: their hidden states
    /// are zero at padding positions (see `frozen.rs`); everywhere else they are the same.
    pub fn forward(&self, input: &EncoderInput, mut dropout: Option<&mut Rng>) -> Result<Vec<Tensor>> {
        let cfg = &self.cfg;
        let (b, s) = input.input_ids.dims2()?;
        let packs = self.layout == Layout::Frozen
            && dropout.is_none()
            && self.word.device().is_cpu()
            && self.word.dtype() == DType::F32;
        let types = match &input.token_type_ids {
            Some(t) => t.clone(),
            None => input.input_ids.zeros_like()?,
        };
        if packs {
            let rows = PackedRows::new(&input.attention_mask)?;
            let x =
                self.embeddings(&rows.pack(&input.input_ids)?, &rows.pack(&input.position_ids)?, &rows.pack(&types)?)?;
            let hidden = self.layers_forward(x, &Tokens::Packed(&rows), None)?;
            return hidden.iter().map(|h| rows.unpack(h)).collect();
        }
        let flat = |t: &Tensor| t.reshape(b * s);
        let x = self.embeddings(&flat(&input.input_ids)?, &flat(&input.position_ids)?, &flat(&types)?)?;
        let x = ops::dropout(&x.reshape((b, s, cfg.hidden_size))?, cfg.hidden_dropout, dropout.as_deref_mut())?;
        let key_bias = ops::attention_bias(&input.attention_mask, x.dtype())?;
        self.layers_forward(x, &Tokens::Padded { key_bias }, dropout)
    }

    /// The normalised embeddings (tokens, hidden) of flat id, position and segment tensors.
    fn embeddings(&self, ids: &Tensor, positions: &Tensor, types: &Tensor) -> Result<Tensor> {
        let mut x = self.word.index_select(ids, 0)?;
        x = x.add(&self.position.index_select(positions, 0)?)?;
        if let Some(table) = &self.token_type {
            x = x.add(&table.index_select(types, 0)?)?;
        }
        self.embeddings_norm.forward(&x)
    }

    /// The embedding output `x` and every layer's output.
    fn layers_forward(&self, x: Tensor, tokens: &Tokens, mut dropout: Option<&mut Rng>) -> Result<Vec<Tensor>> {
        let mut hidden = Vec::with_capacity(self.layers.len() + 1);
        hidden.push(x);
        for layer in &self.layers {
            let x = hidden.last().unwrap();
            let y = self.layer_forward(layer, x, tokens, dropout.as_deref_mut())?;
            hidden.push(y);
        }
        Ok(hidden)
    }

    fn layer_forward(&self, layer: &Layer, x: &Tensor, tokens: &Tokens, mut rng: Option<&mut Rng>) -> Result<Tensor> {
        let cfg = &self.cfg;
        let context =
            layer.attention_in.context(x, tokens, cfg.num_heads, cfg.attention_dropout, rng.as_deref_mut())?;
        let attended = layer.output.forward_residual(&context, x, cfg.hidden_dropout, rng.as_deref_mut())?;
        let x = layer.attention_norm.forward(&attended)?;
        let inner = ops::activation(&layer.up.forward(&x)?, cfg.activation)?;
        let out = layer.down.forward_residual(&inner, &x, cfg.hidden_dropout, rng)?;
        layer.ffn_norm.forward(&out)
    }

    /// The MLM head, or an error naming the model when it has none.
    pub fn mlm_head(&self) -> anyhow::Result<&MlmHead> {
        self.head
            .as_ref()
            .context("this model has no MLM head (it is an encoder-only checkpoint); masked-word predictions need one")
    }

    /// Logits over the vocabulary, or an error when the model has no MLM head.
    pub fn logits(&self, last_hidden: &Tensor) -> anyhow::Result<Tensor> {
        Ok(self.mlm_head()?.forward(last_hidden)?)
    }
}

/// DistilBERT's fixed position table: sin on even columns, cos on odd ones.
pub fn sinusoidal_table(positions: usize, dim: usize, device: &Device) -> Result<Tensor> {
    let mut v = vec![0f32; positions * dim];
    for p in 0..positions {
        for j in 0..dim {
            let angle = p as f64 / 10000f64.powf(2.0 * (j / 2) as f64 / dim as f64);
            v[p * dim + j] = if j % 2 == 0 { angle.sin() } else { angle.cos() } as f32;
        }
    }
    Tensor::from_vec(v, (positions, dim), device)
}
