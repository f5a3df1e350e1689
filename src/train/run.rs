//! The training run: distillation from a teacher, or MLM pretraining when the config names
//! none. `train` reads top to bottom: set up, then one optimiser step after another, with
//! logging, evaluation and checkpoints at their intervals.
//!
//! With several ranks (`mpirun`), every rank draws and masks the same global batch, runs the
//! models on its own part of it, and averages its losses over the whole batch's counts; one
//! all-reduce then sums the gradients, so every rank takes the same optimiser step as a single
//! process given the whole batch would. Rank 0 alone writes the run folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Var};
use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::{self as run_checkpoint, RunState};
use super::config::RunConfig;
use super::loss_scale::LossScale;
use super::metrics::{EvalRecord, MetricsLog, Record, StepRecord};
use super::optim::{add_gradients, clip_scale, grad_norm, AdamW, Gradients};
use super::schedule::LinearSchedule;
use crate::corpus::batches::{pad, rank_part, BatchSize, Batcher};
use crate::corpus::masking::{MaskedBatch, Masker};
use crate::corpus::shards::{Corpus, Split};
use crate::distill::loss::{distillation_loss, mlm_loss, LossConfig, LossParts, LossValues, RowCounts, Rows};
use crate::distill::student::check_pair;
use crate::distributed::World;
use crate::eval::mlm::score_batches;
use crate::model::encoder::init_weights;
use crate::model::{checkpoint, Checkpoint, Encoder, EncoderInput, ModelConfig, TextTokenizer, Weights};
use crate::rng::Rng;

/// How this invocation runs, beyond the config.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Where the run computes. Not part of the config: a run may resume on another device.
    pub device: Device,
    /// Continue the run in `config.out` from its newest checkpoint.
    pub resume: bool,
    /// Stop (with a checkpoint) after this step, as an interruption would.
    pub stop_after: Option<u64>,
    /// Set by a Ctrl-C handler: checkpoint and stop at the end of the current step.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// The ranks this process trains with (one, unless started by `mpirun`).
    pub world: World,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { device: Device::Cpu, resume: false, stop_after: None, interrupt: None, world: World::single() }
    }
}

/// Where a run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub step: u64,
    pub total_steps: u64,
    /// The exported student (a plain Hugging Face checkpoint), once the run is complete.
    pub exported: Option<PathBuf>,
    pub last_eval: Option<EvalRecord>,
}

/// The student's trainable weights as variables, its frozen ones as plain tensors, and the
/// model built over both.
struct Student {
    config: ModelConfig,
    vars: BTreeMap<String, Var>,
    frozen: Weights,
    model: Encoder,
}

impl Student {
    /// `frozen_layers` > 0 keeps the embeddings and the bottom layers out of training.
    fn new(config: ModelConfig, weights: &Weights, frozen_layers: usize) -> Result<Self> {
        if frozen_layers > config.num_layers {
            bail!("optim.frozen_layers is {frozen_layers}; the student has only {} layers", config.num_layers);
        }
        let is_frozen = |name: &str| {
            frozen_layers > 0
                && (name.starts_with("embeddings.")
                    || (0..frozen_layers).any(|l| name.starts_with(&format!("layers.{l}."))))
        };
        let (frozen, trainable): (Weights, Weights) = weights.clone().into_iter().partition(|(k, _)| is_frozen(k));
        let vars: BTreeMap<String, Var> =
            trainable.iter().map(|(k, t)| Ok((k.clone(), Var::from_tensor(t)?))).collect::<Result<_>>()?;
        let mut all = frozen.clone();
        all.extend(vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())));
        let model = Encoder::new(&config, &all)?;
        Ok(Student { config, vars, frozen, model })
    }

    /// The model that computes the student's forward and backward passes: the float32 one
    /// itself, or one over the weights cast to `dtype`, through which the gradients still
    /// reach the float32 variables.
    fn in_precision(&self, dtype: DType) -> Result<Option<Encoder>> {
        if dtype == DType::F32 {
            return Ok(None);
        }
        let mut cast = Weights::new();
        for (name, t) in self.frozen.iter().chain(self.vars.iter().map(|(k, v)| (k, v.as_tensor()))) {
            cast.insert(name.clone(), t.to_dtype(dtype)?);
        }
        Ok(Some(Encoder::new(&self.config, &cast)?))
    }

    fn weights(&self) -> Weights {
        let mut all = self.frozen.clone();
        all.extend(self.vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())));
        all
    }

    fn set_weights(&self, weights: &Weights) -> Result<()> {
        for (name, var) in &self.vars {
            let t = weights.get(name).with_context(|| format!("the checkpoint has no tensor `{name}`"))?;
            var.set(t).with_context(|| format!("tensor `{name}` of the checkpoint does not fit the student"))?;
        }
        Ok(())
    }
}

/// Reads the student: a checkpoint, or a config alone (pretraining from scratch).
fn load_student(dir: &Path, seed: u64, device: &Device) -> Result<(ModelConfig, Weights)> {
    let config = ModelConfig::from_dir(dir)?;
    let has_weights = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]
        .iter()
        .any(|f| dir.join(f).is_file());
    if has_weights {
        let ckpt = Checkpoint::load(dir, device)?;
        if !ckpt.has_head {
            bail!(
                "the student {} has no MLM head; initialise it from a teacher with `distil student init`",
                dir.display()
            );
        }
        return Ok((ckpt.config, ckpt.weights));
    }
    let std = config.raw.get("initializer_range").and_then(|v| v.as_f64()).unwrap_or(0.02);
    let weights = init_weights(&config, true, std, &mut Rng::new(seed), device)?;
    Ok((config, weights))
}

/// The batch's model inputs and the rows the losses read.
fn model_input(config: &ModelConfig, batch: &MaskedBatch, device: &Device) -> Result<EncoderInput> {
    EncoderInput::from_rows(config, &batch.input_ids, &batch.attention_mask, None, device)
}

/// The rows the losses read: for distillation those the config selects, for MLM alone the
/// targets.
fn loss_rows(loss: &LossConfig, distilling: bool, batch: &MaskedBatch) -> Result<Rows> {
    let restrict = !distilling || loss.restrict_ce_to_mask;
    Rows::new(&batch.attention_mask, &batch.labels, restrict)
}

/// The loss of one masked batch, averaged over `whole` (the counts of the batch this one is a
/// part of): distillation with a teacher, MLM alone without.
#[allow(clippy::too_many_arguments)]
fn batch_loss(
    loss: &LossConfig,
    student: &Student,
    dtype: DType,
    teacher: Option<&Encoder>,
    batch: &MaskedBatch,
    whole: RowCounts,
    dropout: &mut Rng,
    device: &Device,
) -> Result<LossParts> {
    let cast = student.in_precision(dtype)?;
    let model = cast.as_ref().unwrap_or(&student.model);
    let s_input = model_input(&student.config, batch, device)?;
    let s_last = model.forward(&s_input, Some(dropout))?.pop().unwrap();
    let rows = loss_rows(loss, teacher.is_some(), batch)?.averaged_over(whole);
    match teacher {
        Some(teacher) => {
            let t_input = model_input(&teacher.cfg, batch, device)?;
            let t_last = teacher.forward(&t_input, None)?.pop().unwrap().detach();
            distillation_loss(loss, model, &s_last, teacher, &t_last, &rows)
        }
        None => mlm_loss(model, &s_last, &rows),
    }
}

/// The dropout generator of one micro-batch on one rank: a function of where it is in the run,
/// so that a resumed run (with any number of ranks) draws what an unbroken one would.
fn dropout_rng(seed: u64, step: u64, micro: usize, rank: usize) -> Rng {
    let hash = |x: u64, y: u64| Rng::new(x ^ y).next_u64();
    Rng::new(hash(hash(hash(seed, 0xD509), step), micro as u64) ^ rank as u64)
}

/// Held-out metrics on a fixed set of batches with fixed masks, so that evaluations at
/// different steps compare the same thing.
fn evaluate(
    step: u64,
    student: &Student,
    teacher: Option<&Encoder>,
    batches: &[MaskedBatch],
    device: &Device,
) -> Result<EvalRecord> {
    let tally = score_batches(&student.model, teacher, batches, device, None)?;
    let or_nan = |x: f64| if tally.targets > 0 { x } else { f64::NAN };
    Ok(EvalRecord {
        step,
        mlm_loss: or_nan(tally.loss()),
        mlm_accuracy: or_nan(tally.top1()),
        kl: teacher.map(|_| tally.kl()),
        cosine: teacher.map(|_| tally.cosine()),
    })
}

fn progress_bar(total: u64, start: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} {wide_msg} [{elapsed_precise} < {eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(start);
    bar
}

/// Runs (or resumes) a training run to its end, or to `stop_after` / an interruption.
pub fn train(config: &RunConfig, options: &TrainOptions) -> Result<RunOutcome> {
    let device = options.device.clone();
    let dtype = config.compute.dtype.dtype();
    let out = &config.out;
    let seed = config.run.seed;
    let world = &options.world;
    let leader = world.is_leader();

    // Refuse what cannot work before any work starts.
    let run_toml = out.join("run.toml");
    if options.resume {
        let saved =
            RunConfig::load(&run_toml, &[]).with_context(|| format!("{} is not a distil run folder", out.display()))?;
        if &saved != config {
            bail!(
                "{} was made by another config; resume it with its own run.toml, or start a new run folder",
                out.display()
            );
        }
    } else if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("run folder {} already exists; continue it with --resume, or choose another `out`", out.display());
    }
    let teacher = match &config.teacher {
        Some(dir) => {
            let ckpt = Checkpoint::load(dir, &device)?;
            if !ckpt.has_head {
                bail!("the teacher {} has no MLM head; give it one with `distil teacher fit-head`", dir.display());
            }
            let teacher_dtype = config.compute.teacher_dtype.dtype();
            let weights: Weights =
                ckpt.weights.iter().map(|(k, t)| Ok((k.clone(), t.to_dtype(teacher_dtype)?))).collect::<Result<_>>()?;
            Some(Encoder::frozen(&ckpt.config, &weights)?)
        }
        None => None,
    };
    let (student_config, initial) = load_student(&config.student, seed, &device)?;
    if let Some(t) = &teacher {
        check_pair(&t.cfg, &student_config)?;
    }
    let tokenizer = TextTokenizer::load(&config.student)?;
    let corpus = Corpus::open(&config.corpus, Split::Train)?;
    corpus.check_tokenizer(&tokenizer)?;
    let heldout = Corpus::open(&config.corpus, Split::Heldout)?;
    let max_len = corpus.manifest().settings.max_len;
    if max_len > student_config.max_sequence_length() {
        bail!(
            "the corpus holds sequences of up to {max_len} tokens, the student takes at most {}",
            student_config.max_sequence_length()
        );
    }

    let student = Student::new(student_config, &initial, config.optim.frozen_layers)?;
    let batch_size = if config.batch.tokens > 0 {
        BatchSize::Tokens(config.batch.tokens)
    } else {
        BatchSize::Sequences(config.batch.sequences)
    };
    let mut batcher = Batcher::new(&corpus, batch_size, seed)?;
    let lengths = corpus.lengths();
    let masker = Masker::new(
        &corpus.token_counts(),
        &tokenizer.special_ids(),
        student.config.vocab_size,
        tokenizer.special.mask,
        config.masking.clone(),
    )?;
    let total_steps = if config.run.steps > 0 {
        config.run.steps
    } else {
        (config.run.epochs * batcher.batches_per_epoch() as u64).div_ceil(config.batch.accumulation as u64)
    };
    let schedule = LinearSchedule::new(config.optim.adamw.lr, config.optim.warmup, total_steps);
    let mut optimizer = AdamW::new(student.vars.clone(), config.optim.adamw.clone())?;
    let eval_batches = if leader { fixed_eval_batches(&heldout, &masker, config, seed)? } else { Vec::new() };

    let mut state = RunState {
        step: 0,
        optimizer_steps: 0,
        mask_rng: Rng::new(seed ^ 0x3A5C),
        cursor: batcher.cursor(),
        skipped: 0,
        consecutive_skipped: 0,
        loss_scale: LossScale::new(config.compute.dtype),
    };
    // Every rank has checked the run folder before the leader creates it.
    world.barrier()?;
    if options.resume {
        let restored = run_checkpoint::load_latest(out, &device)?;
        student.set_weights(&restored.weights)?;
        optimizer.load_state(&restored.optimizer_file, restored.state.optimizer_steps)?;
        batcher.restore(&restored.state.cursor)?;
        state = restored.state;
        if leader {
            eprintln!("resuming {} from step {} ({})", out.display(), state.step, restored.dir.display());
        }
    } else if leader {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create run folder {}", out.display()))?;
        checkpoint::write_atomic(&run_toml, config.to_toml()?.as_bytes())?;
    }
    if leader && world.size() > 1 {
        eprintln!("training on {} ranks; each takes its part of every batch", world.size());
    }
    if leader && (!device.is_cpu() || dtype != DType::F32) {
        eprintln!(
            "computing on {}: student in {}, teacher in {}",
            crate::device::name(&device),
            config.compute.dtype,
            config.compute.teacher_dtype
        );
    }
    let mut metrics = if leader { Some(MetricsLog::open(out, state.step)?) } else { None };
    let bar = if leader { progress_bar(total_steps, state.step) } else { ProgressBar::hidden() };
    let mut last_eval = None;

    while state.step < total_steps {
        let step = state.step + 1;
        let started = Instant::now();
        let mut grads = Gradients::new();
        let mut sum = LossValues::default();
        let mut tokens = 0usize;
        let mut finite = true;
        for micro in 0..config.batch.accumulation {
            // Every rank draws and masks the whole batch, so the targets and the averages do not
            // depend on how the batch is shared out.
            let indices = batcher.next_batch();
            let padded = pad(&indices.iter().map(|&i| corpus.sequence(i)).collect::<Vec<_>>(), tokenizer.special.pad);
            let whole = masker.mask(&padded, &mut state.mask_rng);
            let counts = loss_rows(&config.loss, teacher.is_some(), &whole)?.denominators;
            let batch = whole.rows(&rank_part(&indices, &lengths, world.rank(), world.size()));
            tokens += batch.real_tokens();
            if batch.is_empty() || !finite {
                continue;
            }
            let mut dropout = dropout_rng(seed, step, micro, world.rank());
            let parts =
                batch_loss(&config.loss, &student, dtype, teacher.as_ref(), &batch, counts, &mut dropout, &device)?;
            let values = parts.values()?;
            if !values.total.is_finite() {
                finite = false;
                continue;
            }
            // Micro-batches are averaged, as one large batch would be; the loss scale (float16)
            // is taken out of the gradients again below.
            let divisor = config.batch.accumulation as f64 / state.loss_scale.scale;
            add_gradients(&mut grads, &student.vars, &(parts.total / divisor)?)?;
            accumulate(&mut sum, &values, config.batch.accumulation);
        }
        let interrupted = options.interrupt.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
        // One exchange of the step's scalars: the losses (each rank holds its share of the
        // batch's), the tokens, and whether any rank failed or was interrupted.
        let mut scalars =
            [sum.ce, sum.mlm, sum.cos, sum.mse, sum.total, tokens as f64, f64::from(!finite), f64::from(interrupted)];
        world.sum_f64(&mut scalars)?;
        let [ce, mlm, cos, mse, total, all_tokens, failed, interrupted] = scalars;
        let sum = LossValues { ce, mlm, cos, mse, total };
        let finite = failed == 0.0 && total.is_finite();
        if finite {
            world.sum_gradients(&mut grads, &student.vars)?;
        }
        let scale = state.loss_scale.scale;
        let grad_norm = if finite { grad_norm(&grads)? / scale } else { f64::NAN };
        let lr = schedule.lr(step);
        state.cursor = batcher.cursor();
        state.step = step;
        if finite && state.loss_scale.overflowed(grad_norm) {
            state.skipped += 1;
            bar.println(format!(
                "step {step}: float16 gradients overflowed at loss scale {scale}; step skipped, scale halved"
            ));
        } else if finite && grad_norm.is_finite() {
            optimizer.step(&grads, lr, clip_scale(grad_norm, config.optim.clip_grad_norm) / scale)?;
            state.optimizer_steps = optimizer.step;
            state.consecutive_skipped = 0;
        } else {
            state.skipped += 1;
            state.consecutive_skipped += 1;
            bar.println(format!(
                "step {step}: non-finite loss or gradient, step skipped ({} in a row)",
                state.consecutive_skipped
            ));
            if state.consecutive_skipped >= config.run.max_bad_steps {
                let last = run_checkpoint::list(out)?.pop();
                bail!(
                    "stopped at step {step}: {} non-finite losses in a row (lower optim.lr?); the last good checkpoint is {}",
                    state.consecutive_skipped,
                    last.map_or("none (no checkpoint was written yet)".into(), |p| p.display().to_string())
                );
            }
        }
        drop(grads);

        let tokens_per_s = all_tokens / started.elapsed().as_secs_f64();
        bar.set_position(step);
        bar.set_message(format!(
            "loss {:.4} (ce {:.3} mlm {:.3} cos {:.3}) lr {lr:.2e} {tokens_per_s:.0} tok/s",
            sum.total, sum.ce, sum.mlm, sum.cos
        ));
        let at = |every: u64| every > 0 && step.is_multiple_of(every);
        if let Some(metrics) = &mut metrics {
            if at(config.run.log_every.max(1)) || step == total_steps {
                let epoch = state.cursor.epoch;
                let record = StepRecord { step, epoch, loss: sum, lr, grad_norm, tokens_per_s, skipped: state.skipped };
                metrics.write(&Record::Step(record))?;
            }
            if (at(config.run.eval_every) || step == total_steps) && !eval_batches.is_empty() {
                let eval = evaluate(step, &student, teacher.as_ref(), &eval_batches, &device)?;
                metrics.write(&Record::Eval { eval })?;
                last_eval = Some(eval);
            }
        }
        let stopping = interrupted > 0.0 || options.stop_after == Some(step);
        if at(config.run.checkpoint_every) || step == total_steps || stopping {
            let saved = if leader {
                let optimizer_state = optimizer.state_tensors()?;
                let keep = config.run.keep_checkpoints;
                Some(run_checkpoint::save(out, &state, &student.weights(), &optimizer_state, keep)?)
            } else {
                None
            };
            if stopping {
                let at = saved.map(|dir| format!(" ({})", dir.display())).unwrap_or_default();
                bar.abandon_with_message(format!("stopped after step {step}; resume with --resume{at}"));
                return Ok(RunOutcome { step, total_steps, exported: None, last_eval });
            }
        }
    }
    bar.finish();

    let exported = out.join("student");
    if leader {
        checkpoint::save(&exported, &student.config, &student.weights(), Some(&config.student))?;
    }
    // The other ranks return once the student is on disk.
    world.barrier()?;
    Ok(RunOutcome { step: state.step, total_steps, exported: Some(exported), last_eval })
}

fn accumulate(sum: &mut LossValues, v: &LossValues, parts: usize) {
    let w = 1.0 / parts as f64;
    sum.ce += v.ce * w;
    sum.mlm += v.mlm * w;
    sum.cos += v.cos * w;
    sum.mse += v.mse * w;
    sum.total += v.total * w;
}

/// The held-out batches of every evaluation, masked once with a fixed seed.
fn fixed_eval_batches(heldout: &Corpus, masker: &Masker, config: &RunConfig, seed: u64) -> Result<Vec<MaskedBatch>> {
    if heldout.is_empty() || config.run.eval_batches == 0 {
        return Ok(Vec::new());
    }
    let size = BatchSize::Sequences(config.batch.sequences.max(1));
    let mut batcher = Batcher::new(heldout, size, seed ^ 0xE7A1)?;
    let mut rng = Rng::new(seed ^ 0xE7A2);
    let n = config.run.eval_batches.min(batcher.batches_per_epoch());
    let pad_id = heldout.manifest().special.pad;
    Ok((0..n)
        .map(|_| {
            let seqs: Vec<Vec<u32>> = batcher.next_batch().iter().map(|&i| heldout.sequence(i)).collect();
            masker.mask(&pad(&seqs, pad_id), &mut rng)
        })
        .collect())
}
