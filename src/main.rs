//! The `distil` command line: one subcommand per user task. Each parses its arguments, calls
//! the library and prints; the work itself lives in the library.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};

use distil::corpus::cli::CorpusCommand;
use distil::distill::check::batch_loss;
use distil::distill::loss::LossConfig;
use distil::distill::student::{init_student, spread_layers, StudentArch};
use distil::distill::teacher_head::{fit_head, FitHeadOptions};
use distil::distributed::{local_rank, local_ranks, World};
use distil::eval::classify::{classify, ClassifyOptions, Mode};
use distil::eval::data;
use distil::eval::mlm::HeldoutOptions;
use distil::eval::results::{write_json, Summary};
use distil::eval::{bench, report};
use distil::infer::{self, BatchJson, Pooling};
use distil::model::checkpoint::{self, write_atomic};
use distil::model::{Checkpoint, Encoder, ParameterCounts, TextTokenizer};
use distil::train::config::RunConfig;
use distil::train::run::{train, TrainOptions};

#[derive(Parser)]
#[command(name = "distil", version, about = "Small, fast transformer encoders by knowledge distillation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a Hugging Face model directory: family, sizes, parameters, heads, tokenizer.
    Inspect {
        /// Model directory (config.json + model.safetensors or pytorch_model.bin).
        dir: PathBuf,
    },
    /// Predict the masked words of each text with the model's MLM head.
    FillMask {
        /// Model directory with an MLM head and a tokenizer.
        #[arg(long)]
        model: PathBuf,
        /// How many candidates to print per mask.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// Texts with the tokenizer's mask token ([MASK] or <mask>) where a word is missing.
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// One sentence embedding per input line.
    Embed {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, value_enum, default_value_t = Pooling::Mean)]
        pooling: Pooling,
        /// Text file with one sentence per line (default: standard input).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Output file: `.npy` (float32 matrix) or `.jsonl`; default: JSON lines on standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Print the cosine similarity of every pair of sentences instead of the vectors.
        #[arg(long, conflicts_with = "out")]
        similarities: bool,
    },
    /// Build a student from a teacher: fewer layers, initialised from the teacher's.
    #[command(subcommand)]
    Student(StudentCommand),
    /// Prepare a teacher: give an encoder without an MLM head (a sentence-embedding model) a trained one.
    #[command(subcommand)]
    Teacher(TeacherCommand),
    /// Measure a model: held-out masked-word quality and agreement with its teacher.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Tokenised corpora: build one from text, describe it, sample it (with masking).
    #[command(subcommand)]
    Corpus(CorpusCommand),
    /// Print the distillation loss of one batch for a teacher/student pair, as JSON: the
    /// unweighted components `ce`, `mlm`, `cos`, `mse` and the weighted `total` (models in eval mode).
    Loss {
        #[arg(long)]
        teacher: PathBuf,
        #[arg(long)]
        student: PathBuf,
        /// JSON with `input_ids`, `attention_mask`, `labels` (−100 where no target), optionally `token_type_ids`.
        #[arg(long)]
        batch: PathBuf,
        #[arg(long, default_value_t = 2.0)]
        temperature: f64,
        #[arg(long, default_value_t = 5.0)]
        alpha_ce: f64,
        #[arg(long, default_value_t = 2.0)]
        alpha_mlm: f64,
        #[arg(long, default_value_t = 1.0)]
        alpha_cos: f64,
        #[arg(long, default_value_t = 0.0)]
        alpha_mse: f64,
        /// Compute the KL term over the masked tokens only (default: all non-padding tokens).
        #[arg(long)]
        restrict_ce_to_mask: bool,
        /// Also write the gradient of `total` for every student tensor, keyed as in its checkpoint file.
        #[arg(long)]
        grads_out: Option<PathBuf>,
    },
    /// Distil a student from a teacher (or pretrain a model with MLM alone when the config names
    /// no teacher) into a run folder; resumable.
    Train {
        /// Run config (TOML). With --resume, optional: the run folder's own run.toml is used.
        #[arg(long, required_unless_present = "resume")]
        config: Option<PathBuf>,
        /// Override a config value, e.g. --set loss.temperature=3 --set run.steps=500.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Continue a stopped run from the newest checkpoint in RUN_DIR.
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
        /// Stop after this step with a checkpoint, as Ctrl-C would.
        #[arg(long)]
        stop_after: Option<u64>,
        /// Where to compute: `cpu`, `cuda:N`, or `cuda` (under mpirun: one GPU per rank of a
        /// machine, by local rank). CUDA needs a build with `--features cuda`.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Size and CPU speed of models on the same sentences.
    ///
    /// Parameters by part, batch-1 latency (one sentence at a time, tokenisation included, as in
    /// the DistilBERT paper) and batch-32 throughput, with each model's speed-up against the first.
    Bench {
        /// Model directory; repeat to compare (put the teacher first: speed-ups are against it).
        #[arg(long = "model", value_name = "DIR", required = true)]
        models: Vec<PathBuf>,
        /// Text file with one sentence per line (blank lines skipped).
        #[arg(long, value_name = "FILE", required_unless_present = "task", conflicts_with = "task")]
        texts: Option<PathBuf>,
        /// The test sentences of a built-in task instead: `rt-sentiment`.
        #[arg(long, value_enum)]
        task: Option<Task>,
        /// Folder of the rt-sentiment data.
        #[arg(long, default_value = data::RT_DEFAULT_DIR)]
        task_dir: PathBuf,
        /// Use only the first N sentences.
        #[arg(long)]
        limit: Option<usize>,
        /// Timed passes per model, after one warm-up pass; the report gives medians.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Threads for the matrix products (sizes rayon's pool; default: candle's choice, the
        /// physical cores or RAYON_NUM_THREADS). The number used is printed and saved.
        #[arg(long)]
        threads: Option<usize>,
        /// Write the result as JSON (what `distil report` reads as eval/bench.json).
        #[arg(long, value_name = "RESULT.json")]
        out: Option<PathBuf>,
    },
    /// Write a Markdown report of a run folder, with PNG charts.
    ///
    /// Teacher vs student (size, speed, MLM quality, agreement, sentiment accuracy), the run's
    /// settings and loss curves, and optional comparison runs. Reads
    /// RUN_DIR/run.toml, metrics.jsonl and eval/*.json; missing inputs are listed as "not measured".
    Report {
        /// Training run folder (from `distil train`).
        run_dir: PathBuf,
        /// Another run for the comparison table, e.g. --compare "KL only=runs/kl-only" (repeatable).
        #[arg(long, value_name = "LABEL=RUN_DIR", value_parser = parse_compare)]
        compare: Vec<(String, PathBuf)>,
        /// Output folder (default: RUN_DIR/report).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Run one padded batch through the model and save every output as safetensors
    /// (hidden_states.{i}, last_hidden_state, logits): for parity checks against other code.
    Forward {
        #[arg(long)]
        model: PathBuf,
        /// JSON with `input_ids`, `attention_mask` and optionally `token_type_ids`.
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum StudentCommand {
    /// Copy the teacher's embeddings, chosen layers and MLM head into a smaller checkpoint.
    Init {
        #[arg(long)]
        teacher: PathBuf,
        /// Teacher layers to copy, in order, e.g. 0,2,4,7,9,11.
        #[arg(long, value_delimiter = ',', conflicts_with = "num_layers")]
        layers: Option<Vec<usize>>,
        /// Number of layers, spread evenly with the first and the last kept (default: half the teacher's).
        #[arg(long)]
        num_layers: Option<usize>,
        /// `same`: the teacher's family; `distilbert`: a DistilBERT checkpoint from a BERT teacher.
        #[arg(long, value_enum, default_value_t = StudentArch::Same)]
        arch: StudentArch,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TeacherCommand {
    /// Train BERT's MLM head (transform, LayerNorm, output bias; decoder tied to the word
    /// embeddings) on the frozen encoder's outputs at masked positions of a corpus, until
    /// held-out top-1 accuracy stops improving. Writes an ordinary masked-LM checkpoint, plus
    /// `fit-head.json` with the accuracy per epoch.
    FitHead {
        /// Encoder without an MLM head (e.g. assets/all-MiniLM-L6-v2).
        #[arg(long)]
        teacher: PathBuf,
        /// Corpus built with the teacher's tokenizer (`distil corpus build`); its held-out split scores the head.
        #[arg(long)]
        corpus: PathBuf,
        /// Output folder for the teacher with its head.
        #[arg(long)]
        out: PathBuf,
        /// Masked training positions to encode once (from the start of a shuffled pass over the train split).
        #[arg(long, default_value_t = FitHeadOptions::default().rows)]
        rows: usize,
        #[arg(long, default_value_t = FitHeadOptions::default().lr)]
        lr: f64,
        #[arg(long, default_value_t = FitHeadOptions::default().max_epochs)]
        max_epochs: usize,
        /// Stop after this many epochs without a better held-out top-1.
        #[arg(long, default_value_t = FitHeadOptions::default().patience)]
        patience: usize,
        #[arg(long, default_value_t = FitHeadOptions::default().seed)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Held-out MLM loss, perplexity, top-1 and top-5 accuracy on a corpus's held-out split,
    /// masked with a fixed seed (15% of tokens, chosen uniformly, 80/10/10); with --teacher
    /// also the model's agreement with it: top-1 match at the masked positions, mean KL at
    /// T = 1 and mean cosine of the last hidden states over all real tokens.
    Mlm {
        /// Model with an MLM head.
        #[arg(long)]
        model: PathBuf,
        /// Corpus built with the model's tokenizer.
        #[arg(long)]
        corpus: PathBuf,
        /// Teacher to measure agreement with (same tokenizer).
        #[arg(long)]
        teacher: Option<PathBuf>,
        /// Score at most this many held-out sequences (default: all).
        #[arg(long)]
        sequences: Option<usize>,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Masking seed: the same seed scores two models on the same targets.
        #[arg(long, default_value_t = HeldoutOptions::default().seed)]
        seed: u64,
        /// Write the result as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Accuracy and macro-F1 on a labelled text task, by a linear probe on frozen embeddings or by
    /// fine-tuning the whole model with its family's sequence-classification head.
    Classify(ClassifyArgs),
}

#[derive(clap::Args)]
struct ClassifyArgs {
    /// Model directory (Hugging Face checkpoint with a tokenizer).
    #[arg(long)]
    model: PathBuf,
    /// A built-in task: `rt-sentiment` (Rotten Tomatoes snippets; scripts/fetch_assets.sh fetches them).
    #[arg(long, value_enum, required_unless_present = "train", conflicts_with_all = ["train", "test"])]
    task: Option<Task>,
    /// Folder of the rt-sentiment data.
    #[arg(long, default_value = data::RT_DEFAULT_DIR)]
    task_dir: PathBuf,
    /// Training file: .csv (with a header line) or .jsonl.
    #[arg(long, requires = "test")]
    train: Option<PathBuf>,
    /// Test file, in the same format and with the same columns as --train.
    #[arg(long, requires = "train")]
    test: Option<PathBuf>,
    /// Column (CSV) or field (JSON lines) holding the text.
    #[arg(long, default_value = "text")]
    text_column: String,
    /// Column or field holding the label (any strings; the classes are the training labels).
    #[arg(long, default_value = "label")]
    label_column: String,
    #[arg(long, value_enum, default_value_t = Mode::Probe)]
    mode: Mode,
    /// Number of seeds (0, 1, …): each draws the initialisation, batch order and dropout.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Fine-tuning: passes over the training data.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Fine-tuning: peak learning rate (linear warmup over 10% of the steps, then linear decay).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Texts per batch (fine-tuning steps and embedding passes).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Tokens per text, start and end tokens included; longer texts are truncated.
    #[arg(long, default_value_t = 64)]
    max_len: usize,
    /// Fine-tuning: AdamW weight decay (none on biases and LayerNorm weights).
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Probe: L2 penalty of the logistic regression (on standardised features).
    #[arg(long, default_value_t = 1e-3)]
    l2: f64,
    /// Fine-tuning: save the first seed's classifier here as a Hugging Face checkpoint.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Use only the first N texts of each split (quick checks).
    #[arg(long)]
    limit: Option<usize>,
    /// Write the result as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Task {
    RtSentiment,
}

fn main() -> ExitCode {
    distil::memory::keep_freed_memory();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Settings of a rank of a multi-process run, made before any compute thread starts: the
/// machine's cores shared with the other ranks on it, and a panic that ends the whole job (a
/// rank that unwound would wait forever for the others in MPI's finalisation).
fn join_world(world: &World) -> Result<()> {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        distil::threads::configure_threads(Some(distil::threads::share_of_cores(local_ranks())))?;
    }
    let (rank, size) = (world.rank(), world.size());
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("rank {rank} of {size} panicked; ending the job");
        default_hook(info);
        std::process::abort();
    }));
    Ok(())
}

fn run(command: Command) -> Result<()> {
    let device = Device::Cpu;
    match command {
        Command::Inspect { dir } => inspect(&dir, &device),
        Command::FillMask { model, top_k, texts } => {
            let (_, encoder) = infer::load_encoder(&model, &device)?;
            let tokenizer = TextTokenizer::load(&model)?;
            let results = infer::fill_mask(&encoder, &tokenizer, &texts, top_k)?;
            for (text, masks) in texts.iter().zip(results) {
                println!("{text}");
                for m in masks {
                    let list: Vec<String> = m.candidates.iter().map(|(t, p)| format!("{t} {p:.3}")).collect();
                    println!("  mask at token {:>3}: {}", m.position, list.join(" | "));
                }
            }
            Ok(())
        }
        Command::Embed { model, pooling, input, out, batch_size, similarities } => {
            let (_, encoder) = infer::load_encoder(&model, &device)?;
            let tokenizer = TextTokenizer::load(&model)?;
            let lines = read_lines(input.as_deref())?;
            let vectors = infer::embed(&encoder, &tokenizer, &lines, pooling, batch_size)?;
            if similarities {
                print_similarities(&lines, &vectors);
                return Ok(());
            }
            write_embeddings(&vectors, out.as_deref())
        }
        Command::Corpus(command) => distil::corpus::cli::run(command),
        Command::Teacher(TeacherCommand::FitHead { teacher, corpus, out, rows, lr, max_epochs, patience, seed }) => {
            let options = FitHeadOptions { rows, lr, max_epochs, patience, seed, ..FitHeadOptions::default() };
            let report = fit_head(&teacher, &corpus, &out, &options)?;
            let best = report.best();
            println!("teacher     {} with a fitted MLM head", out.display());
            println!("rows        {} training, {} held-out masked positions", report.train_rows, report.heldout_rows);
            println!(
                "held-out    top-1 {:.2}%, top-5 {:.2}%, loss {:.4} (epoch {} of {}; unigram prior alone: top-1 {:.2}%)",
                100.0 * best.heldout_top1,
                100.0 * best.heldout_top5,
                best.heldout_loss,
                report.best_epoch,
                report.epochs.len(),
                100.0 * report.prior_top1
            );
            println!("time        {:.0} s", report.seconds);
            Ok(())
        }
        Command::Eval(EvalCommand::Mlm { model, corpus, teacher, sequences, batch_size, seed, out }) => {
            let options = HeldoutOptions { sequences, batch_size, seed, ..HeldoutOptions::default() };
            let r = distil::eval::mlm::evaluate(&model, &corpus, teacher.as_deref(), &options)?;
            println!("model       {}", r.model);
            println!("held-out    {} sequences, {} masked targets (seed {})", r.sequences, r.targets, r.seed);
            println!(
                "MLM         loss {:.4}, perplexity {:.2}, top-1 {:.2}%, top-5 {:.2}%",
                r.loss,
                r.perplexity,
                100.0 * r.top1,
                100.0 * r.top5
            );
            if let Some(a) = &r.agreement {
                println!(
                    "agreement   with {}: top-1 match {:.2}%, KL {:.4}, hidden cosine {:.4}",
                    a.teacher,
                    100.0 * a.top1_match,
                    a.kl,
                    a.hidden_cosine
                );
            }
            if let Some(path) = out {
                write_json(&path, &r)?;
            }
            Ok(())
        }
        Command::Student(StudentCommand::Init { teacher, layers, num_layers, arch, out }) => {
            let teacher_ckpt = Checkpoint::load(&teacher, &device)?;
            let n = teacher_ckpt.config.num_layers;
            let layers = layers.unwrap_or_else(|| spread_layers(n, num_layers.unwrap_or(n.div_ceil(2))));
            let init = init_student(&teacher_ckpt, &layers, arch)?;
            checkpoint::save(&out, &init.config, &init.weights, Some(&teacher))?;
            let (t, s) = (ParameterCounts::of(&teacher_ckpt.weights), ParameterCounts::of(&init.weights));
            println!(
                "student     {} ({}, {} of the teacher's {n} layers)",
                out.display(),
                init.config.family.model_type(),
                layers.len()
            );
            println!("layers      teacher {layers:?} -> student 0..{}", layers.len() - 1);
            println!(
                "parameters  {:.2}M (teacher {:.2}M, {:.0}%)",
                s.total() as f64 / 1e6,
                t.total() as f64 / 1e6,
                100.0 * s.total() as f64 / t.total() as f64
            );
            for note in &init.left_out {
                println!("left out    {note}");
            }
            Ok(())
        }
        Command::Loss {
            teacher,
            student,
            batch,
            temperature,
            alpha_ce,
            alpha_mlm,
            alpha_cos,
            alpha_mse,
            restrict_ce_to_mask,
            grads_out,
        } => {
            let cfg = LossConfig { temperature, alpha_ce, alpha_mlm, alpha_cos, alpha_mse, restrict_ce_to_mask };
            let (teacher, student) = (Checkpoint::load(&teacher, &device)?, Checkpoint::load(&student, &device)?);
            let batch = BatchJson::read(&batch)?;
            let (values, grads) = batch_loss(&teacher, &student, &batch, &cfg, grads_out.is_some())?;
            if let (Some(path), Some(grads)) = (grads_out, grads) {
                let bytes = safetensors::serialize(grads.iter().map(|(k, v)| (k.clone(), v)), None)?;
                write_atomic(&path, &bytes)?;
            }
            println!("{}", serde_json::to_string(&values)?);
            Ok(())
        }
        Command::Train { config, overrides, resume, stop_after, device } => {
            let config = match (&config, &resume) {
                (Some(path), _) => RunConfig::load(path, &overrides)?,
                (None, Some(dir)) => RunConfig::load(&dir.join("run.toml"), &overrides)?,
                (None, None) => bail!("give --config RUN.toml, or --resume RUN_DIR"),
            };
            if let Some(dir) = &resume {
                if dir != &config.out {
                    bail!("--resume {} but the config's run folder is {}", dir.display(), config.out.display());
                }
            }
            let mut world = World::from_launch()?;
            if world.size() > 1 {
                join_world(&world)?;
            }
            let device = distil::device::parse(&device, local_rank())?;
            world.use_device(&device)?;
            let interrupt = Arc::new(AtomicBool::new(false));
            let flag = interrupt.clone();
            ctrlc::set_handler(move || {
                eprintln!("\ninterrupted: finishing this step and writing a checkpoint (Ctrl-C again to abort)");
                if flag.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
            })?;
            let options = TrainOptions {
                device,
                resume: resume.is_some(),
                stop_after,
                interrupt: Some(interrupt),
                world: world.clone(),
            };
            let outcome = match train(&config, &options) {
                Ok(outcome) => outcome,
                // The other ranks may be waiting for this one: end them all, with the reason.
                Err(e) if world.size() > 1 => {
                    eprintln!("error on rank {} of {}: {e:#}", world.rank(), world.size());
                    world.abort(1)
                }
                Err(e) => return Err(e),
            };
            if !world.is_leader() {
                return Ok(());
            }
            match &outcome.exported {
                Some(dir) => println!("finished {} steps; student saved to {}", outcome.step, dir.display()),
                None => println!("stopped after step {} of {}", outcome.step, outcome.total_steps),
            }
            if let Some(e) = outcome.last_eval {
                println!("held-out MLM loss {:.4}, accuracy {:.2}%", e.mlm_loss, 100.0 * e.mlm_accuracy);
            }
            Ok(())
        }
        Command::Bench { models, texts, task, task_dir, limit, repeats, threads, out } => {
            let threads = distil::threads::configure_threads(threads)?;
            let source = match (texts, task) {
                (Some(file), _) => bench::TextSource::File(file),
                (None, Some(Task::RtSentiment)) => bench::TextSource::RtSentimentTest(task_dir),
                (None, None) => bail!("give --texts FILE or --task rt-sentiment"),
            };
            let mut texts = source.load()?;
            if let Some(n) = limit {
                texts.sentences.truncate(n.max(1));
            }
            let result = bench::bench(&models, &texts, &bench::BenchOptions { repeats }, threads)?;
            print!("{}", bench::format_table(&result));
            if let Some(path) = out {
                write_json(&path, &result)?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Report { run_dir, compare, out } => {
            let path = report::write_report(&report::ReportOptions { run_dir, compare, out })?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Eval(EvalCommand::Classify(args)) => eval_classify(args),
        Command::Forward { model, input, out } => {
            // The trainable layout, which computes padding positions too (as transformers does),
            // so that every output compares position by position with another implementation.
            let ckpt = Checkpoint::load(&model, &device)?;
            let encoder = Encoder::new(&ckpt.config, &ckpt.weights)?;
            let batch = BatchJson::read(&input)?;
            let outputs = infer::named_outputs(&encoder, &batch.to_input(&encoder, &device)?)
                .with_context(|| format!("forward pass on {}", input.display()))?;
            let bytes = safetensors::serialize(outputs.iter().map(|(k, v)| (k.clone(), v)), None)?;
            write_atomic(&out, &bytes)?;
            eprintln!("wrote {} tensors to {}", outputs.len(), out.display());
            Ok(())
        }
    }
}

fn eval_classify(args: ClassifyArgs) -> Result<()> {
    let source = match (args.task, args.train, args.test) {
        (Some(Task::RtSentiment), _, _) => data::Source::RtSentiment(args.task_dir),
        (None, Some(train), Some(test)) => data::Source::Files {
            train,
            test,
            columns: data::Columns { text: args.text_column, label: args.label_column },
        },
        _ => bail!("give --task rt-sentiment, or --train FILE --test FILE"),
    };
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let mut dataset = source.load()?;
    if let Some(n) = args.limit {
        dataset = dataset.truncated(n.max(1));
    }
    let options = ClassifyOptions {
        mode: args.mode,
        seeds: (0..args.seeds).collect(),
        max_len: args.max_len,
        epochs: args.epochs,
        lr: args.lr,
        batch_size: args.batch_size,
        weight_decay: args.weight_decay,
        l2: args.l2,
        save: args.save.clone(),
        ..ClassifyOptions::default()
    };
    eprintln!(
        "{}: {} train, {} test texts, classes {:?}; {} of {}, {} seed(s)",
        dataset.name,
        dataset.train.len(),
        dataset.test.len(),
        dataset.classes,
        options.mode.name(),
        args.model.display(),
        options.seeds.len()
    );
    let result = classify(&args.model, &dataset, &options)?;
    let runs = |s: &Summary| s.runs.iter().map(|x| format!("{:.2}", 100.0 * x)).collect::<Vec<_>>().join(", ");
    println!("model       {}", result.model);
    println!("task        {} ({} classes: {})", result.task, result.classes.len(), result.classes.join(", "));
    println!("mode        {}", result.mode);
    println!("sizes       {} train, {} test", result.train_size, result.test_size);
    println!(
        "accuracy    {:.2}% ± {:.2} (seeds {:?}: {})",
        100.0 * result.accuracy.mean,
        100.0 * result.accuracy.std,
        result.seeds,
        runs(&result.accuracy)
    );
    println!(
        "macro-F1    {:.2}% ± {:.2} ({})",
        100.0 * result.macro_f1.mean,
        100.0 * result.macro_f1.std,
        runs(&result.macro_f1)
    );
    println!("time        {:.1} s", result.seconds);
    if let Some(dir) = &args.save {
        println!("saved       {} (first seed's classifier)", dir.display());
    }
    if let Some(path) = &args.out {
        write_json(path, &result)?;
        println!("result      {}", path.display());
    }
    Ok(())
}

fn inspect(dir: &Path, device: &Device) -> Result<()> {
    let ckpt = Checkpoint::load(dir, device)?;
    let c = &ckpt.config;
    let counts = ParameterCounts::of(&ckpt.weights);
    let m = |n: usize| if n >= 100_000 { format!("{:.2}M", n as f64 / 1e6) } else { format!("{n}") };
    println!("model       {}", dir.display());
    println!("family      {}", c.family.model_type());
    println!(
        "sizes       {} layers, hidden {}, {} heads, FFN {}, vocabulary {}, {} positions, {} token types, activation {}, LayerNorm eps {:e}",
        c.num_layers, c.hidden_size, c.num_heads, c.intermediate_size, c.vocab_size, c.max_position_embeddings,
        c.type_vocab_size, c.activation, c.layer_norm_eps
    );
    println!(
        "parameters  {} in all: embeddings {}, encoder {}, MLM head {}",
        m(counts.total()),
        m(counts.embeddings),
        m(counts.encoder),
        m(counts.head)
    );
    if ckpt.has_head {
        let tied = if c.tie_word_embeddings { "decoder tied to the word embeddings" } else { "own decoder" };
        println!("MLM head    yes ({tied})");
    } else {
        println!(
            "MLM head    none: an encoder-only checkpoint (embeddings work; fill-mask and distillation need a head)"
        );
    }
    let files: Vec<String> =
        ckpt.report.files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into()).collect();
    println!("weights     {}", files.join(", "));
    if !ckpt.report.ignored.is_empty() {
        println!("ignored     {} (known, unused by an encoder)", ckpt.report.ignored.join(", "));
    }
    if !ckpt.report.tied_duplicates.is_empty() {
        println!(
            "tied        {} (stored, but the config ties it to the word embeddings)",
            ckpt.report.tied_duplicates.join(", ")
        );
    }
    if !ckpt.report.regenerated.is_empty() {
        println!("regenerated {} (sinusoidal_pos_embds is true)", ckpt.report.regenerated.join(", "));
    }
    match TextTokenizer::load(dir) {
        Ok(t) => {
            let s = t.special;
            println!(
                "tokenizer   {} ({} tokens; start {}, end {}, mask {} = `{}`, pad {})",
                t.source.file_name().unwrap().to_string_lossy(),
                t.vocab_size(),
                s.start,
                s.end,
                s.mask,
                t.mask_token(),
                s.pad
            );
            if t.vocab_size() > c.vocab_size {
                println!("warning     the tokenizer has more tokens than the model's vocabulary");
            }
        }
        Err(e) => println!("tokenizer   none usable: {e:#}"),
    }
    Ok(())
}

fn read_lines(input: Option<&Path>) -> Result<Vec<String>> {
    let lines: Vec<String> = match input {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read input file {}", path.display()))?
            .lines()
            .map(str::to_string)
            .collect(),
        None => {
            std::io::stdin().lock().lines().collect::<std::io::Result<_>>().context("cannot read standard input")?
        }
    };
    let lines: Vec<String> = lines.into_iter().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        bail!("no input sentences: expected one sentence per non-empty line");
    }
    Ok(lines)
}

fn print_similarities(lines: &[String], vectors: &[Vec<f32>]) {
    for (i, line) in lines.iter().enumerate() {
        println!("[{i}] {line}");
    }
    for i in 0..lines.len() {
        for j in i + 1..lines.len() {
            println!("cos([{i}], [{j}]) = {:+.4}", infer::cosine(&vectors[i], &vectors[j]));
        }
    }
}

fn write_embeddings(vectors: &[Vec<f32>], out: Option<&Path>) -> Result<()> {
    let jsonl = || -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        for v in vectors {
            serde_json::to_writer(&mut buf, v)?;
            buf.push(b'\n');
        }
        Ok(buf)
    };
    match out {
        None => std::io::stdout().lock().write_all(&jsonl()?).context("cannot write to standard output"),
        Some(path) if path.extension().is_some_and(|e| e == "npy") => write_atomic(path, &npy_f32(vectors)),
        Some(path) if path.extension().is_some_and(|e| e == "jsonl") => write_atomic(path, &jsonl()?),
        Some(path) => bail!("output {}: expected a file name ending in .npy or .jsonl", path.display()),
    }
}

/// A float32 matrix in NumPy's `.npy` format (version 1.0).
fn npy_f32(rows: &[Vec<f32>]) -> Vec<u8> {
    let cols = rows.first().map_or(0, Vec::len);
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", rows.len(), cols);
    // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    for v in rows.iter().flatten() {
        out.extend(v.to_le_bytes());
    }
    out
}

fn parse_compare(s: &str) -> Result<(String, PathBuf)> {
    report::parse_compare(s)
}
