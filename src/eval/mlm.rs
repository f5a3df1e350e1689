//! Held-out masked-word quality of a model, and how closely it follows a teacher: the numbers
//! of `distil eval mlm`, of the trainer's periodic evaluation and of `teacher fit-head`.
//!
//! Logits are scored row by row on the CPU in f64 (log-sum-exp, rank of the true token, KL),
//! a chunk of rows at a time, so that no (tokens × vocabulary) softmax is ever materialised.

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use super::results::{Agreement, MlmResult};
use crate::corpus::batches::{pad, BatchSize, Batcher};
use crate::corpus::masking::{MaskedBatch, Masker, MaskingConfig};
use crate::corpus::shards::{Corpus, Split};
use crate::distill::loss::Rows;
use crate::model::ops::gather_rows;
use crate::model::{Encoder, EncoderInput, TextTokenizer};

/// Rows of logits scored at once: bounds the (rows × vocabulary) buffers to ~64 MB per model.
const CHUNK_ROWS: usize = 512;

/// Running sums over scored rows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MlmTally {
    /// Masked target positions, and real (non-padding) positions.
    pub targets: usize,
    pub real: usize,
    loss: f64,
    top1: usize,
    top5: usize,
    /// Teacher agreement: top-1 matches at targets, KL and cosine summed over real positions.
    top1_match: usize,
    kl: f64,
    cosine: f64,
}

impl MlmTally {
    pub fn loss(&self) -> f64 {
        self.loss / self.targets.max(1) as f64
    }
    pub fn top1(&self) -> f64 {
        self.top1 as f64 / self.targets.max(1) as f64
    }
    pub fn top5(&self) -> f64 {
        self.top5 as f64 / self.targets.max(1) as f64
    }
    pub fn top1_match(&self) -> f64 {
        self.top1_match as f64 / self.targets.max(1) as f64
    }
    pub fn kl(&self) -> f64 {
        self.kl / self.real.max(1) as f64
    }
    pub fn cosine(&self) -> f64 {
        self.cosine / self.real.max(1) as f64
    }

    fn add(&mut self, o: &MlmTally) {
        self.targets += o.targets;
        self.real += o.real;
        self.loss += o.loss;
        self.top1 += o.top1;
        self.top5 += o.top5;
        self.top1_match += o.top1_match;
        self.kl += o.kl;
        self.cosine += o.cosine;
    }
}

/// Scores one masked batch: the model's loss and accuracy at the targets and, with a teacher,
/// the agreement over every real token.
pub fn score_batch(
    model: &Encoder,
    teacher: Option<&Encoder>,
    batch: &MaskedBatch,
    device: &Device,
) -> Result<MlmTally> {
    let rows = Rows::new(&batch.attention_mask, &batch.labels, false)?;
    let last_hidden = |m: &Encoder| -> Result<Tensor> {
        let input = EncoderInput::from_rows(&m.cfg, &batch.input_ids, &batch.attention_mask, None, device)?;
        Ok(m.forward(&input, None)?.pop().expect("an encoder returns its hidden states"))
    };
    let s_last = last_hidden(model)?;
    let t_last = teacher.map(last_hidden).transpose()?;
    let mut tally = MlmTally::default();
    for (chunk, targets) in rows.selected.chunks(CHUNK_ROWS).zip(rows.targets.chunks(CHUNK_ROWS)) {
        let s_hidden = gather_rows(&s_last, chunk)?;
        let t_side = match (teacher, &t_last) {
            (Some(t), Some(t_last)) => Some((t, gather_rows(t_last, chunk)?)),
            _ => None,
        };
        tally.add(&score_chunk(model, &s_hidden, t_side.as_ref().map(|(t, h)| (*t, h)), targets)?);
    }
    Ok(tally)
}

/// Scores hidden-state rows (already gathered, one per target) with the model's head.
pub fn score_rows(model: &Encoder, hidden: &Tensor, targets: &[i64]) -> Result<MlmTally> {
    let mut tally = MlmTally::default();
    for (start, targets) in (0..targets.len()).step_by(CHUNK_ROWS).zip(targets.chunks(CHUNK_ROWS)) {
        tally.add(&score_chunk(model, &hidden.narrow(0, start, targets.len())?, None, targets)?);
    }
    Ok(tally)
}

/// Scores at most `CHUNK_ROWS` rows, with the teacher's hidden states for the same rows.
fn score_chunk(
    model: &Encoder,
    s_hidden: &Tensor,
    teacher: Option<(&Encoder, &Tensor)>,
    targets: &[i64],
) -> Result<MlmTally> {
    // Each model computes in its own type; the scores are taken in float32 and up.
    let logits = |m: &Encoder, hidden: &Tensor| -> Result<Vec<Vec<f32>>> {
        Ok(m.logits(hidden)?.to_dtype(DType::F32)?.to_vec2()?)
    };
    let s_logits = logits(model, s_hidden)?;
    let (t_logits, cosines) = match teacher {
        Some((t, t_hidden)) => (Some(logits(t, t_hidden)?), Some(row_cosines(s_hidden, t_hidden)?)),
        None => (None, None),
    };
    Ok((0..targets.len())
        .into_par_iter()
        .map(|i| {
            let mut r = score_row(&s_logits[i], t_logits.as_ref().map(|t| t[i].as_slice()), targets[i]);
            if let Some(c) = &cosines {
                r.cosine = c[i] as f64;
            }
            r
        })
        .reduce(MlmTally::default, |mut a, b| {
            a.add(&b);
            a
        }))
}

/// One row: cross-entropy and rank of the true token (when the row is a target), and KL to
/// the teacher's distribution at T = 1 (when there is a teacher).
fn score_row(s: &[f32], t: Option<&[f32]>, target: i64) -> MlmTally {
    let mut r = MlmTally { real: 1, ..MlmTally::default() };
    let s_lse = log_sum_exp(s);
    if target >= 0 {
        let x = s[target as usize];
        let above = s.iter().filter(|&&v| v > x).count();
        r.targets = 1;
        r.loss = s_lse - x as f64;
        r.top1 = usize::from(above == 0);
        r.top5 = usize::from(above < 5);
    }
    if let Some(t) = t {
        let t_lse = log_sum_exp(t);
        r.kl = s
            .iter()
            .zip(t)
            .map(|(&sv, &tv)| {
                let log_pt = tv as f64 - t_lse;
                log_pt.exp() * (log_pt - (sv as f64 - s_lse))
            })
            .sum();
        if target >= 0 {
            r.top1_match = usize::from(argmax(s) == argmax(t));
        }
    }
    r
}

fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

fn argmax(x: &[f32]) -> usize {
    x.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
}

fn row_cosines(a: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
    let (a, b) = (&a.to_dtype(DType::F32)?, &b.to_dtype(DType::F32)?);
    let dot = (a * b)?.sum(1)?;
    let norms = (a.sqr()?.sum(1)?.sqrt()? * b.sqr()?.sum(1)?.sqrt()?)?;
    Ok((dot / (norms + 1e-12)?)?.to_vec1()?)
}

/// Scores a list of batches into one tally.
pub fn score_batches(
    model: &Encoder,
    teacher: Option<&Encoder>,
    batches: &[MaskedBatch],
    device: &Device,
    progress: Option<&ProgressBar>,
) -> Result<MlmTally> {
    let mut tally = MlmTally::default();
    for batch in batches {
        tally.add(&score_batch(model, teacher, batch, device)?);
        if let Some(bar) = progress {
            bar.inc(1);
        }
    }
    Ok(tally)
}

/// What `distil eval mlm` scores: the held-out split, masked once with a fixed seed.
#[derive(Debug, Clone)]
pub struct HeldoutOptions {
    pub sequences: Option<usize>,
    pub batch_size: usize,
    pub seed: u64,
    pub masking: MaskingConfig,
}

impl Default for HeldoutOptions {
    fn default() -> Self {
        // Uniform target choice (no frequency smoothing) is the usual MLM benchmark.
        HeldoutOptions {
            sequences: None,
            batch_size: 32,
            seed: 1234,
            masking: MaskingConfig { smoothing: 0.0, ..MaskingConfig::default() },
        }
    }
}

/// The held-out split of a corpus as fixed masked batches. The same corpus, options and
/// tokenizer give the same batches, so that two models are scored on the same targets.
pub fn heldout_batches(
    corpus_dir: &Path,
    tokenizer: &TextTokenizer,
    vocab_size: usize,
    options: &HeldoutOptions,
) -> Result<Vec<MaskedBatch>> {
    let corpus = Corpus::open(corpus_dir, Split::Heldout)?;
    corpus.check_tokenizer(tokenizer)?;
    if corpus.is_empty() {
        bail!("the corpus {} has no held-out sequences; build it with a held-out share above 0", corpus_dir.display());
    }
    let train = Corpus::open(corpus_dir, Split::Train)?;
    let masker = Masker::new(
        &train.token_counts(),
        &tokenizer.special_ids(),
        vocab_size,
        tokenizer.special.mask,
        options.masking.clone(),
    )?;
    let n = options.sequences.unwrap_or(corpus.len()).min(corpus.len());
    let size = options.batch_size.max(1);
    let mut batcher = Batcher::new(&corpus, BatchSize::Sequences(size), options.seed)?;
    let mut rng = crate::rng::Rng::new(options.seed ^ 0x4D4C4D);
    let pad_id = corpus.manifest().special.pad;
    let mut batches = Vec::new();
    let mut taken = 0;
    while taken < n && batches.len() < batcher.batches_per_epoch() {
        let mut seqs: Vec<Vec<u32>> = batcher.next_batch().iter().map(|&i| corpus.sequence(i)).collect();
        seqs.truncate(n - taken);
        taken += seqs.len();
        batches.push(masker.mask(&pad(&seqs, pad_id), &mut rng));
    }
    Ok(batches)
}

/// `distil eval mlm`: the model (and its agreement with a teacher) on the held-out split.
pub fn evaluate(
    model_dir: &Path,
    corpus_dir: &Path,
    teacher_dir: Option<&Path>,
    options: &HeldoutOptions,
) -> Result<MlmResult> {
    let device = Device::Cpu;
    let (ckpt, model) = crate::infer::load_encoder(model_dir, &device)?;
    if !ckpt.has_head {
        bail!("{} has no MLM head to score; give it one with `distil teacher fit-head`", model_dir.display());
    }
    let teacher = match teacher_dir {
        Some(dir) => {
            let (t_ckpt, t) = crate::infer::load_encoder(dir, &device)?;
            if !t_ckpt.has_head {
                bail!("the teacher {} has no MLM head", dir.display());
            }
            crate::distill::student::check_pair(&t.cfg, &model.cfg)?;
            Some(t)
        }
        None => None,
    };
    let tokenizer = TextTokenizer::load(model_dir)?;
    let batches = heldout_batches(corpus_dir, &tokenizer, model.cfg.vocab_size, options)?;
    let bar = ProgressBar::new(batches.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} scoring batch {pos}/{len} [{elapsed_precise} < {eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let tally = score_batches(&model, teacher.as_ref(), &batches, &device, Some(&bar))?;
    bar.finish_and_clear();
    if tally.targets == 0 {
        bail!("the held-out split of {} gave no masked targets to score", corpus_dir.display());
    }
    Ok(MlmResult {
        model: model_dir.display().to_string(),
        corpus: corpus_dir.display().to_string(),
        sequences: batches.iter().map(|b| b.input_ids.len()).sum(),
        targets: tally.targets,
        seed: options.seed,
        loss: tally.loss(),
        perplexity: tally.loss().exp(),
        top1: tally.top1(),
        top5: tally.top5(),
        agreement: teacher_dir.map(|dir| Agreement {
            teacher: dir.display().to_string(),
            top1_match: tally.top1_match(),
            kl: tally.kl(),
            hidden_cosine: tally.cosine(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_scores_match_direct_formulas() {
        let s = [1.0f32, 3.0, 0.5, 2.0, -1.0, 0.0, 2.5];
        let t = [0.0f32, 2.0, 1.0, 3.0, 0.0, -2.0, 1.0];
        let r = score_row(&s, Some(&t), 3);
        let z_s: f64 = s.iter().map(|&v| (v as f64).exp()).sum();
        let z_t: f64 = t.iter().map(|&v| (v as f64).exp()).sum();
        assert!((r.loss - (z_s.ln() - 2.0)).abs() < 1e-12);
        // Two logits (3.0, 2.5) beat the target's 2.0: not top-1, within top-5.
        assert_eq!((r.top1, r.top5, r.targets), (0, 1, 1));
        let kl: f64 = s
            .iter()
            .zip(&t)
            .map(|(&a, &b)| {
                let (ps, pt) = ((a as f64).exp() / z_s, (b as f64).exp() / z_t);
                pt * (pt / ps).ln()
            })
            .sum();
        assert!((r.kl - kl).abs() < 1e-12);
        assert_eq!(r.top1_match, 0, "argmax 1 vs 3");
        let same = score_row(&s, Some(&s), -1);
        assert!(same.kl.abs() < 1e-12 && same.targets == 0);
    }
}
