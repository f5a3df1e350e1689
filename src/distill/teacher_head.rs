//! `distil teacher fit-head`: a trained MLM head for an encoder that has none (sentence-
//! embedding models such as all-MiniLM-L6-v2), so that it can teach with soft targets.
//!
//! The head is BERT's: transform (dense, activation, LayerNorm), then the decoder tied to the
//! word embeddings, plus an output bias. The encoder stays frozen, so its last hidden states at
//! masked positions are computed once and the head is trained on those rows alone — hundreds
//! of times cheaper per epoch than running the encoder each step. Training stops when held-out
//! top-1 accuracy has not improved for `patience` epochs; the best epoch's head is kept.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::corpus::batches::{pad, BatchSize, Batcher};
use crate::corpus::masking::{MaskedBatch, Masker};
use crate::corpus::shards::{Corpus, Split};
use crate::distill::loss::{mlm_loss, Rows};
use crate::eval::mlm::{heldout_batches, score_rows, HeldoutOptions};
use crate::model::checkpoint::{self, write_atomic};
use crate::model::encoder::parameter_shapes;
use crate::model::ops::gather_rows;
use crate::model::{Checkpoint, Encoder, EncoderInput, TextTokenizer, Weights};
use crate::rng::Rng;
use crate::train::optim::{add_gradients, AdamW, AdamWConfig, Gradients};

#[derive(Debug, Clone)]
pub struct FitHeadOptions {
    /// Masked training positions to collect from the corpus's train split.
    pub rows: usize,
    /// Rows per optimiser step.
    pub batch_rows: usize,
    pub lr: f64,
    pub max_epochs: usize,
    /// Epochs without a better held-out top-1 before stopping.
    pub patience: usize,
    pub seed: u64,
    /// How the training and held-out targets are chosen (uniform by default, as in eval mlm).
    pub heldout: HeldoutOptions,
}

impl Default for FitHeadOptions {
    fn default() -> Self {
        FitHeadOptions {
            rows: 60_000,
            batch_rows: 512,
            lr: 2e-3,
            max_epochs: 30,
            patience: 2,
            seed: 42,
            heldout: HeldoutOptions::default(),
        }
    }
}

/// One epoch of head training, as `fit-head.json` records it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitEpoch {
    pub epoch: usize,
    pub train_loss: f64,
    pub heldout_loss: f64,
    pub heldout_top1: f64,
    pub heldout_top5: f64,
}

/// What `fit-head.json` in the output folder holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    pub teacher: String,
    pub corpus: String,
    pub train_rows: usize,
    pub heldout_rows: usize,
    /// Held-out top-1 before training: the head that predicts the unigram prior alone.
    pub prior_top1: f64,
    pub epochs: Vec<FitEpoch>,
    pub best_epoch: usize,
    pub seconds: f64,
}

impl FitReport {
    pub fn best(&self) -> &FitEpoch {
        &self.epochs[self.best_epoch - 1]
    }
}

/// Last hidden states at masked positions, with the true tokens: the head's whole input.
struct TargetRows {
    hidden: Vec<f32>,
    targets: Vec<i64>,
    width: usize,
}

impl TargetRows {
    fn len(&self) -> usize {
        self.targets.len()
    }

    fn add(&mut self, encoder: &Encoder, batch: &MaskedBatch, device: &Device) -> Result<()> {
        let input = EncoderInput::from_rows(&encoder.cfg, &batch.input_ids, &batch.attention_mask, None, device)?;
        let last = encoder.forward(&input, None)?.pop().expect("an encoder returns its hidden states");
        let rows = Rows::new(&batch.attention_mask, &batch.labels, true)?;
        if rows.selected.is_empty() {
            return Ok(());
        }
        let hidden: Vec<f32> = gather_rows(&last, &rows.selected)?.flatten_all()?.to_vec1()?;
        self.hidden.extend(hidden);
        self.targets.extend(rows.targets);
        Ok(())
    }

    /// Rows `index` as a (rows, width) tensor and their targets.
    fn select(&self, index: &[usize], device: &Device) -> Result<(Tensor, Vec<i64>)> {
        let w = self.width;
        let mut data = Vec::with_capacity(index.len() * w);
        for &i in index {
            data.extend_from_slice(&self.hidden[i * w..(i + 1) * w]);
        }
        Ok((Tensor::from_vec(data, (index.len(), w), device)?, index.iter().map(|&i| self.targets[i]).collect()))
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let template = format!("{{spinner}} {what} {{pos}}/{{len}} {{msg}} [{{elapsed_precise}} < {{eta_precise}}]");
    bar.set_style(ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar
}

/// The head's starting tensors: a random transform and, as output bias, the log of each token's
/// smoothed frequency in the corpus, so that training starts from the unigram prior.
fn initial_head(teacher: &Checkpoint, token_counts: &[u64], rng: &mut Rng, device: &Device) -> Result<Weights> {
    let cfg = &teacher.config;
    let std = cfg.raw.get("initializer_range").and_then(|v| v.as_f64()).unwrap_or(0.02);
    let total: f64 = token_counts.iter().map(|&c| c as f64 + 0.5).sum();
    let mut head = Weights::new();
    for (name, shape) in parameter_shapes(cfg, true).into_iter().filter(|(n, _)| n.starts_with("head.")) {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = match name.as_str() {
            "head.transform.weight" => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
            "head.norm.weight" => vec![1.0; n],
            "head.bias" => (0..n)
                .map(|id| {
                    let count = token_counts.get(id).map_or(0.0, |&c| c as f64);
                    ((count + 0.5) / total).ln() as f32
                })
                .collect(),
            _ => vec![0.0; n],
        };
        head.insert(name, Tensor::from_vec(values, shape, device)?);
    }
    Ok(head)
}

/// Fits the head and saves the teacher with it to `out` as an ordinary `BertForMaskedLM`-style
/// checkpoint (plus `fit-head.json`).
pub fn fit_head(teacher_dir: &Path, corpus_dir: &Path, out: &Path, options: &FitHeadOptions) -> Result<FitReport> {
    let started = Instant::now();
    let device = Device::Cpu;
    let mut teacher = Checkpoint::load(teacher_dir, &device)?;
    if teacher.has_head {
        bail!(
            "{} already has an MLM head; use it as the teacher directly (fit-head is for encoders without one)",
            teacher_dir.display()
        );
    }
    if options.rows == 0 || options.batch_rows == 0 || options.max_epochs == 0 {
        bail!("fit-head: --rows, --batch-rows and --max-epochs must be above 0");
    }
    // The decoder is the word-embedding matrix: the head adds no vocabulary-sized matrix.
    teacher.config.tie_word_embeddings = true;
    let tokenizer = TextTokenizer::load(teacher_dir)?;
    let corpus = Corpus::open(corpus_dir, Split::Train)?;
    corpus.check_tokenizer(&tokenizer)?;
    if corpus.is_empty() {
        bail!("the corpus {} has no training sequences", corpus_dir.display());
    }
    let frozen = Encoder::frozen(&teacher.config, &teacher.weights)?;
    let vocab = teacher.config.vocab_size;

    // 1. The encoder's outputs at masked positions, computed once.
    let masker = Masker::new(
        &corpus.token_counts(),
        &tokenizer.special_ids(),
        vocab,
        tokenizer.special.mask,
        options.heldout.masking.clone(),
    )?;
    let width = teacher.config.hidden_size;
    let mut train = TargetRows { hidden: Vec::new(), targets: Vec::new(), width };
    let mut batcher = Batcher::new(&corpus, BatchSize::Sequences(64), options.seed)?;
    let mut mask_rng = Rng::new(options.seed ^ 0x4EAD);
    let progress = bar(options.rows as u64, "encoding masked rows");
    while train.len() < options.rows && batcher.epoch() == 0 {
        let seqs: Vec<Vec<u32>> = batcher.next_batch().iter().map(|&i| corpus.sequence(i)).collect();
        let batch = masker.mask(&pad(&seqs, tokenizer.special.pad), &mut mask_rng);
        train.add(&frozen, &batch, &device)?;
        progress.set_position(train.len().min(options.rows) as u64);
    }
    progress.finish_and_clear();
    let mut heldout = TargetRows { hidden: Vec::new(), targets: Vec::new(), width };
    for batch in heldout_batches(corpus_dir, &tokenizer, vocab, &options.heldout)? {
        heldout.add(&frozen, &batch, &device)?;
    }
    let (heldout_hidden, heldout_targets) = heldout.select(&(0..heldout.len()).collect::<Vec<_>>(), &device)?;

    // 2. The head as variables, over the frozen encoder's tensors.
    let mut rng = Rng::new(options.seed);
    let head = initial_head(&teacher, &corpus.token_counts(), &mut rng, &device)?;
    let vars: BTreeMap<String, Var> =
        head.iter().map(|(k, t)| Ok((k.clone(), Var::from_tensor(t)?))).collect::<Result<_>>()?;
    let mut weights = teacher.weights.clone();
    weights.extend(vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())));
    let model = Encoder::new(&teacher.config, &weights)?;
    let mut optimizer = AdamW::new(vars.clone(), AdamWConfig { lr: options.lr, ..AdamWConfig::default() })?;
    let prior_top1 = score_rows(&model, &heldout_hidden, &heldout_targets)?.top1();

    // 3. Epochs over the rows until held-out top-1 stops improving.
    let mut epochs: Vec<FitEpoch> = Vec::new();
    let mut best: Option<(usize, f64, Weights)> = None;
    let steps_per_epoch = train.len().div_ceil(options.batch_rows);
    let progress = bar((steps_per_epoch * options.max_epochs) as u64, "head step");
    for epoch in 1..=options.max_epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for chunk in order.chunks(options.batch_rows) {
            let (hidden, targets) = train.select(chunk, &device)?;
            let n = targets.len();
            let rows = Rows::new(&[vec![1; n]], &[targets], true)?;
            let loss = mlm_loss(&model, &hidden.unsqueeze(0)?, &rows)?.total;
            let mut grads = Gradients::new();
            add_gradients(&mut grads, &vars, &loss)?;
            optimizer.step(&grads, options.lr, 1.0)?;
            loss_sum += loss.to_scalar::<f32>()? as f64 * n as f64;
            progress.inc(1);
        }
        let scores = score_rows(&model, &heldout_hidden, &heldout_targets)?;
        let record = FitEpoch {
            epoch,
            train_loss: loss_sum / train.len() as f64,
            heldout_loss: scores.loss(),
            heldout_top1: scores.top1(),
            heldout_top5: scores.top5(),
        };
        progress.set_message(format!("epoch {epoch}: held-out top-1 {:.2}%", 100.0 * record.heldout_top1));
        progress.suspend(|| {
            eprintln!(
                "epoch {epoch:>2}: train loss {:.4}, held-out loss {:.4}, top-1 {:.2}%, top-5 {:.2}%",
                record.train_loss,
                record.heldout_loss,
                100.0 * record.heldout_top1,
                100.0 * record.heldout_top5
            )
        });
        epochs.push(record);
        if best.as_ref().is_none_or(|(_, top1, _)| record.heldout_top1 > *top1) {
            let head: Weights =
                vars.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?))).collect::<Result<_>>()?;
            best = Some((epoch, record.heldout_top1, head));
        } else if epoch - best.as_ref().map_or(0, |b| b.0) >= options.patience {
            break;
        }
    }
    progress.finish_and_clear();

    // 4. The teacher with its best head, as an ordinary checkpoint.
    let (best_epoch, _, best_head) = best.context("no epoch ran")?;
    let mut weights = teacher.weights.clone();
    weights.extend(best_head);
    checkpoint::save(out, &teacher.config, &weights, Some(teacher_dir))?;
    let report = FitReport {
        teacher: teacher_dir.display().to_string(),
        corpus: corpus_dir.display().to_string(),
        train_rows: train.len(),
        heldout_rows: heldout.len(),
        prior_top1,
        epochs,
        best_epoch,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_atomic(&out.join("fit-head.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    Ok(report)
}
