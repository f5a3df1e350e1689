//! Downstream classification (`distil eval classify`): how well a model's representations
//! serve a labelled task, as a linear probe on frozen embeddings or by fine-tuning the whole
//! encoder with the family's own sequence-classification head.
//!
//! - `probe`: mean-pooled last hidden states of the frozen model (computed once), standardised
//!   with the training split's mean and deviation, and a multinomial logistic regression with an
//!   L2 penalty fitted by full-batch L-BFGS to convergence. The problem is convex, so the seed
//!   (which draws the starting point) barely changes the result.
//! - `finetune`: the encoder and a head laid out as transformers' `*ForSequenceClassification`
//!   (BERT: pooler dense + tanh on `[CLS]`, dropout, `classifier`; RoBERTa: dropout,
//!   `classifier.dense` + tanh on `<s>`, dropout, `classifier.out_proj`; DistilBERT:
//!   `pre_classifier` + ReLU on `[CLS]`, dropout, `classifier`), trained with dropout, AdamW
//!   (no decay on biases and LayerNorm weights), linear warmup and decay, and gradient clipping.
//!   The seed draws the head's initialisation, the batch order and the dropout masks.
//!
//! Each seed's accuracy and macro-F1 on the test split are summarised as mean and sample
//! standard deviation in a [`ClassifyResult`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, IndexOp, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::data::Dataset;
use super::results::{ClassifyResult, Summary};
use crate::infer::mean_pool;
use crate::model::checkpoint::{base_prefix, copy_tokenizer_files, saved_keys, write_atomic};
use crate::model::encoder::parameter_shapes;
use crate::model::{ops, Checkpoint, Encoder, EncoderInput, Family, ModelConfig, TextTokenizer, Weights};
use crate::rng::Rng;
use crate::train::optim::{clip_scale, grad_norm, AdamW, AdamWConfig, Gradients};
use crate::train::schedule::LinearSchedule;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Logistic regression on the frozen model's mean-pooled embeddings.
    Probe,
    /// The whole model with a sequence-classification head.
    Finetune,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Probe => "probe",
            Mode::Finetune => "finetune",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    pub mode: Mode,
    pub seeds: Vec<u64>,
    /// Tokens per text, start and end tokens included; longer texts are truncated.
    pub max_len: usize,
    /// Fine-tuning: passes over the training split.
    pub epochs: usize,
    /// Fine-tuning: peak learning rate of AdamW.
    pub lr: f64,
    /// Fine-tuning: texts per optimiser step (also the batch of the embedding passes).
    pub batch_size: usize,
    pub weight_decay: f64,
    /// Share of the steps spent warming the learning rate up.
    pub warmup: f64,
    pub clip_grad_norm: f64,
    /// Probe: L2 penalty `l2/2 · ‖W‖²` added to the mean cross-entropy.
    pub l2: f64,
    /// Fine-tuning: save the first seed's classifier here as a Hugging Face checkpoint.
    pub save: Option<PathBuf>,
    /// Show a progress bar while fine-tuning.
    pub progress: bool,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        ClassifyOptions {
            mode: Mode::Probe,
            seeds: vec![0, 1, 2],
            max_len: 64,
            epochs: 2,
            lr: 1e-4,
            batch_size: 32,
            weight_decay: 0.01,
            warmup: 0.1,
            clip_grad_norm: 1.0,
            l2: 1e-3,
            save: None,
            progress: true,
        }
    }
}

/// Evaluates the model in `model_dir` on `data` for every seed of `options`.
pub fn classify(model_dir: &Path, data: &Dataset, options: &ClassifyOptions) -> Result<ClassifyResult> {
    if options.seeds.is_empty() {
        bail!("no seeds: give at least one");
    }
    if data.train.is_empty() || data.test.is_empty() {
        bail!("{}: the train and the test split must both hold examples", data.name);
    }
    if options.save.is_some() && options.mode != Mode::Finetune {
        bail!("--save writes a fine-tuned classifier: it needs --mode finetune");
    }
    let started = Instant::now();
    let device = Device::Cpu;
    let ckpt = Checkpoint::load(model_dir, &device)?;
    let tokenizer = TextTokenizer::load(model_dir)?;
    let max_len = options.max_len.min(ckpt.config.max_sequence_length());
    if max_len < 2 {
        bail!("--max-len {} leaves no room for a token between the start and end tokens", options.max_len);
    }
    let train = encode_texts(&tokenizer, data.train.iter().map(|e| e.text.as_str()), max_len)?;
    let test = encode_texts(&tokenizer, data.test.iter().map(|e| e.text.as_str()), max_len)?;
    let train_labels: Vec<usize> = data.train.iter().map(|e| e.label).collect();
    let test_labels: Vec<usize> = data.test.iter().map(|e| e.label).collect();
    let k = data.classes.len();
    let pad = tokenizer.special.pad;

    let mut accuracy = Vec::new();
    let mut macro_f1s = Vec::new();
    match options.mode {
        Mode::Probe => {
            let encoder = Encoder::frozen(&ckpt.config, &ckpt.weights)?;
            let mut x_train = pooled_embeddings(&encoder, &train, pad, options.batch_size)?;
            let mut x_test = pooled_embeddings(&encoder, &test, pad, options.batch_size)?;
            let scaler = Standardiser::fit(&x_train);
            scaler.apply(&mut x_train);
            scaler.apply(&mut x_test);
            for &seed in &options.seeds {
                let probe = LogisticRegression::fit(&x_train, &train_labels, k, options.l2, seed);
                let predicted = probe.predict(&x_test);
                accuracy.push(accuracy_of(&predicted, &test_labels));
                macro_f1s.push(macro_f1(&predicted, &test_labels, k));
            }
        }
        Mode::Finetune => {
            for (i, &seed) in options.seeds.iter().enumerate() {
                let bar_label = format!("seed {seed} ({}/{})", i + 1, options.seeds.len());
                let classifier = finetune(&ckpt, &data.classes, &train, &train_labels, pad, options, seed, &bar_label)?;
                let predicted = classifier.predict_encoded(&test, pad, options.batch_size)?;
                accuracy.push(accuracy_of(&predicted, &test_labels));
                macro_f1s.push(macro_f1(&predicted, &test_labels, k));
                if i == 0 {
                    if let Some(dir) = &options.save {
                        classifier.save(dir, Some(model_dir))?;
                    }
                }
            }
        }
    }
    Ok(ClassifyResult {
        model: model_dir.display().to_string(),
        task: data.name.clone(),
        mode: options.mode.name().into(),
        classes: data.classes.clone(),
        train_size: data.train.len(),
        test_size: data.test.len(),
        seeds: options.seeds.clone(),
        accuracy: Summary::of(accuracy),
        macro_f1: Summary::of(macro_f1s),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Share of predictions equal to the gold labels.
pub fn accuracy_of(predicted: &[usize], gold: &[usize]) -> f64 {
    let correct = predicted.iter().zip(gold).filter(|(p, g)| p == g).count();
    correct as f64 / gold.len().max(1) as f64
}

/// The unweighted mean of the per-class F1 scores over the classes that occur among the gold
/// labels or the predictions (as scikit-learn's `f1_score(average="macro")`); a class never
/// predicted correctly scores 0.
pub fn macro_f1(predicted: &[usize], gold: &[usize], classes: usize) -> f64 {
    let (mut tp, mut fp, mut fneg) = (vec![0usize; classes], vec![0usize; classes], vec![0usize; classes]);
    for (&p, &g) in predicted.iter().zip(gold) {
        if p == g {
            tp[p] += 1;
        } else {
            fp[p] += 1;
            fneg[g] += 1;
        }
    }
    let present: Vec<usize> = (0..classes).filter(|&c| tp[c] + fp[c] + fneg[c] > 0).collect();
    if present.is_empty() {
        return 0.0;
    }
    let f1 = |c: usize| {
        let denominator = 2 * tp[c] + fp[c] + fneg[c];
        if denominator == 0 {
            0.0
        } else {
            2.0 * tp[c] as f64 / denominator as f64
        }
    };
    present.iter().map(|&c| f1(c)).sum::<f64>() / present.len() as f64
}

/// Token ids of each text with the start and end tokens, truncated to `max_len`, unpadded.
pub fn encode_texts<'a>(
    tokenizer: &TextTokenizer,
    texts: impl Iterator<Item = &'a str>,
    max_len: usize,
) -> Result<Vec<Vec<u32>>> {
    let texts: Vec<&str> = texts.collect();
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(1024) {
        let batch = tokenizer.encode_batch(chunk, max_len)?;
        for (ids, mask) in batch.input_ids.into_iter().zip(batch.attention_mask) {
            let len = mask.iter().filter(|&&m| m == 1).count();
            out.push(ids[..len].to_vec());
        }
    }
    Ok(out)
}

/// The model input of some encoded texts, padded to the longest of them.
fn batch_input(cfg: &ModelConfig, rows: &[&[u32]], pad: u32, device: &Device) -> Result<EncoderInput> {
    let len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let ids: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| {
            let mut v = r.to_vec();
            v.resize(len, pad);
            v
        })
        .collect();
    let mask: Vec<Vec<u32>> = rows.iter().map(|r| (0..len).map(|i| u32::from(i < r.len())).collect()).collect();
    EncoderInput::from_rows(cfg, &ids, &mask, None, device)
}

/// Indices of `rows` in batches of `batch_size`, texts of similar length together (less
/// padding); the caller puts results back in the original order.
fn length_sorted_batches(rows: &[Vec<u32>], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].len());
    order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect()
}

/// Mean-pooled last hidden states of the frozen encoder (eval mode), one row per text.
pub fn pooled_embeddings(encoder: &Encoder, rows: &[Vec<u32>], pad: u32, batch_size: usize) -> Result<Vec<Vec<f64>>> {
    let device = Device::Cpu;
    let mut out = vec![Vec::new(); rows.len()];
    for batch in length_sorted_batches(rows, batch_size) {
        let refs: Vec<&[u32]> = batch.iter().map(|&i| rows[i].as_slice()).collect();
        let input = batch_input(&encoder.cfg, &refs, pad, &device)?;
        let hidden = encoder.forward(&input, None)?;
        let pooled: Vec<Vec<f32>> = mean_pool(hidden.last().unwrap(), &input.attention_mask)?.to_vec2()?;
        for (&i, v) in batch.iter().zip(pooled) {
            out[i] = v.into_iter().map(f64::from).collect();
        }
    }
    Ok(out)
}

/// Per-feature standardisation with the training split's mean and standard deviation.
pub struct Standardiser {
    mean: Vec<f64>,
    scale: Vec<f64>,
}

impl Standardiser {
    pub fn fit(x: &[Vec<f64>]) -> Self {
        let (n, d) = (x.len().max(1) as f64, x.first().map_or(0, Vec::len));
        let mut mean = vec![0.0; d];
        for row in x {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += v / n);
        }
        let mut var = vec![0.0; d];
        for row in x {
            var.iter_mut().zip(row.iter().zip(&mean)).for_each(|(s, (v, m))| *s += (v - m) * (v - m) / n);
        }
        let scale = var.into_iter().map(|v| if v > 1e-12 { 1.0 / v.sqrt() } else { 1.0 }).collect();
        Standardiser { mean, scale }
    }

    pub fn apply(&self, x: &mut [Vec<f64>]) {
        for row in x {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - m) * s;
            }
        }
    }
}

/// Multinomial logistic regression: `softmax(W x + b)`, fitted by minimising the mean
/// cross-entropy plus `l2/2 · ‖W‖²` (the bias is not penalised).
pub struct LogisticRegression {
    classes: usize,
    dim: usize,
    /// `W` row-major (classes × dim), then `b`.
    params: Vec<f64>,
    pub iterations: usize,
}

impl LogisticRegression {
    /// Fits with full-batch L-BFGS (10 pairs of history, backtracking Armijo line search) until
    /// the gradient's largest entry is below 1e-6 or the loss stops changing; `seed` draws the
    /// starting weights (normal, σ = 0.01).
    pub fn fit(x: &[Vec<f64>], y: &[usize], classes: usize, l2: f64, seed: u64) -> Self {
        let dim = x.first().map_or(0, Vec::len);
        let mut rng = Rng::new(seed);
        let mut params: Vec<f64> = (0..classes * dim).map(|_| 0.01 * rng.normal()).collect();
        params.extend(std::iter::repeat_n(0.0, classes));
        let mut model = LogisticRegression { classes, dim, params, iterations: 0 };
        let objective = |p: &[f64]| loss_and_gradient(p, x, y, classes, dim, l2);
        model.iterations = lbfgs(&mut model.params, objective, 1000);
        model
    }

    pub fn scores(&self, row: &[f64]) -> Vec<f64> {
        let (w, b) = self.params.split_at(self.classes * self.dim);
        (0..self.classes).map(|c| b[c] + dot(&w[c * self.dim..(c + 1) * self.dim], row)).collect()
    }

    pub fn predict(&self, x: &[Vec<f64>]) -> Vec<usize> {
        x.iter().map(|row| argmax(&self.scores(row))).collect()
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

fn loss_and_gradient(p: &[f64], x: &[Vec<f64>], y: &[usize], k: usize, d: usize, l2: f64) -> (f64, Vec<f64>) {
    let (w, b) = p.split_at(k * d);
    let mut grad = vec![0.0; p.len()];
    let n = x.len() as f64;
    let mut loss = 0.0;
    let mut z = vec![0.0; k];
    for (row, &label) in x.iter().zip(y) {
        for c in 0..k {
            z[c] = b[c] + dot(&w[c * d..(c + 1) * d], row);
        }
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
        let lse = max + sum.ln();
        loss += lse - z[label];
        for c in 0..k {
            let delta = ((z[c] - lse).exp() - f64::from(u8::from(c == label))) / n;
            grad[c * d..(c + 1) * d].iter_mut().zip(row).for_each(|(g, v)| *g += delta * v);
            grad[k * d + c] += delta;
        }
    }
    loss /= n;
    loss += 0.5 * l2 * dot(w, w);
    grad[..k * d].iter_mut().zip(w).for_each(|(g, v)| *g += l2 * v);
    (loss, grad)
}

/// Minimises `f` from `x` in place with L-BFGS; returns the iterations taken.
fn lbfgs(x: &mut [f64], f: impl Fn(&[f64]) -> (f64, Vec<f64>), max_iterations: usize) -> usize {
    const HISTORY: usize = 10;
    let (mut fx, mut g) = f(x);
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    for iteration in 0..max_iterations {
        if g.iter().fold(0.0f64, |m, v| m.max(v.abs())) < 1e-6 {
            return iteration;
        }
        // Two-loop recursion: d = −H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        if let Some((s, y, _)) = history.back() {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|v| *v *= gamma);
        }
        for ((s, y, rho), a) in history.iter().zip(alphas.into_iter().rev()) {
            let beta = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - beta) * si);
        }
        let mut direction: Vec<f64> = q.into_iter().map(|v| -v).collect();
        let mut slope = dot(&g, &direction);
        if slope >= 0.0 {
            history.clear();
            direction = g.iter().map(|v| -v).collect();
            slope = dot(&g, &direction);
        }
        let mut step = if history.is_empty() { 1.0 / dot(&g, &g).sqrt().max(1.0) } else { 1.0 };
        let mut accepted = None;
        for _ in 0..50 {
            let candidate: Vec<f64> = x.iter().zip(&direction).map(|(xi, di)| xi + step * di).collect();
            let (fc, gc) = f(&candidate);
            if fc.is_finite() && fc <= fx + 1e-4 * step * slope {
                accepted = Some((candidate, fc, gc));
                break;
            }
            step *= 0.5;
        }
        let Some((candidate, fc, gc)) = accepted else { return iteration };
        let s: Vec<f64> = candidate.iter().zip(x.iter()).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = gc.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / sy));
        }
        let change = (fx - fc).abs();
        x.copy_from_slice(&candidate);
        (fx, g) = (fc, gc);
        if change <= 1e-12 * fx.abs().max(1.0) {
            return iteration + 1;
        }
    }
    max_iterations
}

/// The canonical names of the classification head's tensors (beside the encoder's).
const HEAD_TENSORS: [&str; 4] =
    ["classifier.dense.weight", "classifier.dense.bias", "classifier.out.weight", "classifier.out.bias"];

/// The key transformers' `*ForSequenceClassification` stores a head tensor under.
pub fn head_key(family: Family, canonical: &str) -> String {
    let (part, param) = canonical.strip_prefix("classifier.").and_then(|r| r.split_once('.')).expect("a head tensor");
    match (family, part) {
        (Family::Bert, "dense") => format!("bert.pooler.dense.{param}"),
        (Family::DistilBert, "dense") => format!("pre_classifier.{param}"),
        (Family::Bert | Family::DistilBert, _) => format!("classifier.{param}"),
        (Family::Roberta, "dense") => format!("classifier.dense.{param}"),
        (Family::Roberta, _) => format!("classifier.out_proj.{param}"),
    }
}

/// The dropout transformers applies in the head: `classifier_dropout` (else the hidden
/// dropout) for BERT and RoBERTa, `seq_classif_dropout` (default 0.2) for DistilBERT.
fn head_dropout(cfg: &ModelConfig) -> f64 {
    let field = |name: &str| cfg.raw.get(name).and_then(Value::as_f64);
    match cfg.family {
        Family::DistilBert => field("seq_classif_dropout").unwrap_or(0.2),
        _ => field("classifier_dropout").unwrap_or(cfg.hidden_dropout),
    }
}

/// An encoder with a sequence-classification head.
pub struct Classifier {
    pub config: ModelConfig,
    pub classes: Vec<String>,
    /// The encoder's canonical tensors and the head's (`HEAD_TENSORS`).
    pub weights: Weights,
    encoder: Encoder,
    dropout: f64,
}

impl Classifier {
    pub fn new(config: &ModelConfig, classes: &[String], weights: Weights) -> Result<Self> {
        for name in HEAD_TENSORS {
            if !weights.contains_key(name) {
                bail!("the classifier has no head tensor `{}`", head_key(config.family, name));
            }
        }
        let encoder = Encoder::new(config, &weights)?;
        Ok(Classifier {
            config: config.clone(),
            classes: classes.to_vec(),
            weights,
            encoder,
            dropout: head_dropout(config),
        })
    }

    /// A classifier over a pretrained encoder (its MLM head left out), with a new head drawn
    /// from `seed` as transformers initialises one (normal with the config's
    /// `initializer_range`, zero biases); a BERT checkpoint's pooler is kept, as transformers
    /// keeps it.
    pub fn from_pretrained(ckpt: &Checkpoint, classes: &[String], seed: u64) -> Result<Self> {
        let cfg = &ckpt.config;
        let mut weights: Weights =
            ckpt.weights.iter().filter(|(k, _)| !k.starts_with("head.")).map(|(k, v)| (k.clone(), v.clone())).collect();
        let std = cfg.raw.get("initializer_range").and_then(Value::as_f64).unwrap_or(0.02);
        let mut rng = Rng::new(seed ^ 0xC1A5);
        let (h, k) = (cfg.hidden_size, classes.len());
        let device = ckpt.weights.values().next().map_or(Device::Cpu, |t| t.device().clone());
        let mut normal = |rows: usize| -> Result<Tensor> {
            let v: Vec<f32> = (0..rows * h).map(|_| (rng.normal() * std) as f32).collect();
            Ok(Tensor::from_vec(v, (rows, h), &device)?)
        };
        let pooler = |p: &str| ckpt.unused.get(&format!("pooler.dense.{p}")).cloned();
        let (dense_w, dense_b) = match (cfg.family, pooler("weight"), pooler("bias")) {
            (Family::Bert, Some(w), Some(b)) if w.dims() == [h, h] && b.dims() == [h] => (w, b),
            _ => (normal(h)?, Tensor::zeros(h, candle_core::DType::F32, &device)?),
        };
        weights.insert("classifier.dense.weight".into(), dense_w);
        weights.insert("classifier.dense.bias".into(), dense_b);
        weights.insert("classifier.out.weight".into(), normal(k)?);
        weights.insert("classifier.out.bias".into(), Tensor::zeros(k, candle_core::DType::F32, &device)?);
        Classifier::new(cfg, classes, weights)
    }

    /// Reads a sequence classifier saved by `save` (or by transformers): the encoder strictly,
    /// the head from its family's keys, the classes from `id2label`.
    pub fn load(dir: &Path) -> Result<Self> {
        let ckpt = Checkpoint::load(dir, &Device::Cpu)?;
        let cfg = &ckpt.config;
        let prefix = base_prefix(cfg.family);
        let mut weights: Weights =
            ckpt.weights.iter().filter(|(k, _)| !k.starts_with("head.")).map(|(k, v)| (k.clone(), v.clone())).collect();
        for name in HEAD_TENSORS {
            let key = head_key(cfg.family, name);
            let bare = key.strip_prefix(prefix).unwrap_or(&key);
            let tensor = ckpt.unused.get(bare).with_context(|| {
                format!(
                    "{} has no tensor `{key}`: not a {} checkpoint",
                    dir.display(),
                    cfg.family.sequence_classification_class()
                )
            })?;
            weights.insert(name.to_string(), tensor.clone());
        }
        let classes = classes_of(cfg, dir)?;
        let k = weights["classifier.out.bias"].dim(0)?;
        if classes.len() != k {
            bail!("{}: config.json names {} labels, the classifier has {k} outputs", dir.display(), classes.len());
        }
        Classifier::new(cfg, &classes, weights)
    }

    /// Logits (batch, classes); with a generator, dropout is on (training).
    pub fn logits(&self, input: &EncoderInput, mut dropout: Option<&mut Rng>) -> Result<Tensor> {
        let last = self.encoder.forward(input, dropout.as_deref_mut())?.pop().unwrap();
        let first = last.i((.., 0))?;
        let w = |name: &str| &self.weights[name];
        let dense = |x: &Tensor| ops::linear(x, w("classifier.dense.weight"), Some(w("classifier.dense.bias")));
        let out = |x: &Tensor| ops::linear(x, w("classifier.out.weight"), Some(w("classifier.out.bias")));
        let p = self.dropout;
        let logits = match self.config.family {
            Family::Bert => {
                let pooled = dense(&first)?.tanh()?;
                out(&ops::dropout(&pooled, p, dropout)?)?
            }
            Family::Roberta => {
                let x = ops::dropout(&first, p, dropout.as_deref_mut())?;
                let x = dense(&x)?.tanh()?;
                out(&ops::dropout(&x, p, dropout)?)?
            }
            Family::DistilBert => {
                let x = dense(&first)?.relu()?;
                out(&ops::dropout(&x, p, dropout)?)?
            }
        };
        Ok(logits)
    }

    /// The predicted class of each encoded text (eval mode).
    pub fn predict_encoded(&self, rows: &[Vec<u32>], pad: u32, batch_size: usize) -> Result<Vec<usize>> {
        let device = Device::Cpu;
        let mut out = vec![0; rows.len()];
        for batch in length_sorted_batches(rows, batch_size) {
            let refs: Vec<&[u32]> = batch.iter().map(|&i| rows[i].as_slice()).collect();
            let input = batch_input(&self.config, &refs, pad, &device)?;
            let predicted: Vec<u32> = self.logits(&input, None)?.argmax(1)?.to_vec1()?;
            for (&i, p) in batch.iter().zip(predicted) {
                out[i] = p as usize;
            }
        }
        Ok(out)
    }

    /// The predicted class of each text.
    pub fn predict(&self, tokenizer: &TextTokenizer, texts: &[String], max_len: usize) -> Result<Vec<usize>> {
        let rows = encode_texts(tokenizer, texts.iter().map(String::as_str), max_len)?;
        self.predict_encoded(&rows, tokenizer.special.pad, 32)
    }

    /// Saves a Hugging Face `*ForSequenceClassification` checkpoint: the encoder under the
    /// family's prefixed keys, the head under transformers' names, `config.json` with the
    /// architecture and the labels, and the tokenizer files found in `tokenizer_from`.
    pub fn save(&self, dir: &Path, tokenizer_from: Option<&Path>) -> Result<()> {
        let cfg = &self.config;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
        for (name, shape) in parameter_shapes(cfg, false) {
            let t = self.weights.get(&name).with_context(|| format!("cannot save: no tensor `{name}`"))?;
            if t.dims() != shape.as_slice() {
                bail!("cannot save: tensor `{name}` has shape {:?}, the config says {:?}", t.dims(), shape);
            }
            for key in saved_keys(cfg, &name, true) {
                tensors.insert(key, t.detach().contiguous()?);
            }
        }
        for name in HEAD_TENSORS {
            tensors.insert(head_key(cfg.family, name), self.weights[name].detach().contiguous()?);
        }
        let metadata: std::collections::HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.clone(), v)), Some(metadata))
            .context("cannot serialise the classifier's weights")?;
        write_atomic(&dir.join("model.safetensors"), &bytes)?;

        let mut json = cfg.to_json(false);
        let map = json.as_object_mut().expect("config.json is an object");
        map.insert("architectures".into(), Value::Array(vec![cfg.family.sequence_classification_class().into()]));
        map.insert("num_labels".into(), self.classes.len().into());
        let id2label: serde_json::Map<String, Value> =
            self.classes.iter().enumerate().map(|(i, c)| (i.to_string(), c.clone().into())).collect();
        let label2id: serde_json::Map<String, Value> =
            self.classes.iter().enumerate().map(|(i, c)| (c.clone(), i.into())).collect();
        map.insert("id2label".into(), Value::Object(id2label));
        map.insert("label2id".into(), Value::Object(label2id));
        map.insert("problem_type".into(), "single_label_classification".into());
        write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
        if let Some(src) = tokenizer_from {
            copy_tokenizer_files(src, dir)?;
        }
        Ok(())
    }
}

/// The class names of a saved classifier, in output order: `id2label`, else `LABEL_i` for
/// `num_labels` outputs.
fn classes_of(cfg: &ModelConfig, dir: &Path) -> Result<Vec<String>> {
    if let Some(map) = cfg.raw.get("id2label").and_then(Value::as_object) {
        let mut pairs = Vec::new();
        for (id, label) in map {
            let id: usize = id
                .parse()
                .with_context(|| format!("{}/config.json: `id2label` key {id:?} is not an index", dir.display()))?;
            let label = label.as_str().map_or_else(|| label.to_string(), str::to_string);
            pairs.push((id, label));
        }
        pairs.sort();
        if pairs.iter().enumerate().any(|(i, (id, _))| i != *id) {
            bail!("{}/config.json: `id2label` must number the labels 0, 1, …", dir.display());
        }
        return Ok(pairs.into_iter().map(|(_, l)| l).collect());
    }
    let n = cfg.raw.get("num_labels").and_then(Value::as_u64).unwrap_or(2) as usize;
    Ok((0..n).map(|i| format!("LABEL_{i}")).collect())
}

/// Mean cross-entropy of logits (batch, classes) against class indices.
fn cross_entropy(logits: &Tensor, labels: &[usize]) -> Result<Tensor> {
    let (b, k) = logits.dims2()?;
    let mut onehot = vec![0f32; b * k];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * k + l] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (b, k), logits.device())?;
    Ok((ops::log_softmax(logits)? * onehot)?.sum_all()?.neg()?.affine(1.0 / b as f64, 0.0)?)
}

fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Fine-tunes the encoder of `ckpt` with a new head on the encoded training texts.
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    ckpt: &Checkpoint,
    classes: &[String],
    train: &[Vec<u32>],
    labels: &[usize],
    pad: u32,
    options: &ClassifyOptions,
    seed: u64,
    bar_label: &str,
) -> Result<Classifier> {
    let device = Device::Cpu;
    let initial = Classifier::from_pretrained(ckpt, classes, seed)?;
    let vars: BTreeMap<String, Var> =
        initial.weights.iter().map(|(k, t)| Ok((k.clone(), Var::from_tensor(t)?))).collect::<Result<_>>()?;
    let model = Classifier::new(
        &initial.config,
        classes,
        vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect(),
    )?;
    drop(initial);
    let batch_size = options.batch_size.max(1);
    let steps_per_epoch = train.len().div_ceil(batch_size) as u64;
    let total = steps_per_epoch * options.epochs.max(1) as u64;
    let schedule = LinearSchedule::new(options.lr, options.warmup, total);
    let adamw = AdamWConfig { lr: options.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: options.weight_decay };
    let mut optimizer = AdamW::new(vars.clone(), adamw)?;
    let mut order_rng = Rng::new(seed ^ 0x0DE5);
    let mut dropout_rng = Rng::new(seed ^ 0xD509);

    let bar = if options.progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix} step {pos}/{len} {wide_msg} [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(bar_label.to_string());
    let mut step = 0u64;
    let mut running = None::<f64>;
    for epoch in 0..options.epochs.max(1) {
        for batch in shuffled(train.len(), &mut order_rng).chunks(batch_size) {
            step += 1;
            let rows: Vec<&[u32]> = batch.iter().map(|&i| train[i].as_slice()).collect();
            let targets: Vec<usize> = batch.iter().map(|&i| labels[i]).collect();
            let input = batch_input(&model.config, &rows, pad, &device)?;
            let loss = cross_entropy(&model.logits(&input, Some(&mut dropout_rng))?, &targets)?;
            let value = f64::from(loss.to_scalar::<f32>()?);
            if !value.is_finite() {
                bail!("fine-tuning diverged at step {step} (loss {value}); lower --lr");
            }
            let store = loss.backward()?;
            let grads: Gradients =
                vars.iter().filter_map(|(k, v)| store.get(v).map(|g| (k.clone(), g.clone()))).collect();
            let norm = grad_norm(&grads)?;
            let lr = schedule.lr(step);
            optimizer.step(&grads, lr, clip_scale(norm, options.clip_grad_norm))?;
            let smooth = running.map_or(value, |r| 0.95 * r + 0.05 * value);
            running = Some(smooth);
            bar.set_position(step);
            bar.set_message(format!("epoch {} loss {smooth:.4} lr {lr:.2e}", epoch + 1));
        }
    }
    bar.finish_and_clear();
    let weights: Weights = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
    Classifier::new(&model.config, classes, weights)
}
