//! `distil bench`: size and CPU speed of one or more models on the same sentences.
//!
//! Batch-1 latency follows the DistilBERT paper's setup: a full pass over the sentences on the
//! CPU, one sentence at a time, tokenisation included. Batch-32 throughput runs the same
//! sentences in batches of 32 (padded to the longest in the batch). Each model first makes one
//! warm-up pass; then every repeat runs all models one after the other, in an order rotated from
//! repeat to repeat, so that a drift of the machine's speed hits all models alike. The encoder
//! runs to its last hidden state (what a downstream task uses); the MLM head is counted in the
//! parameters but not run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;

use crate::eval::results::{median, BenchResult, ModelBench, Parameters, Summary};
use crate::infer::load_encoder;
use crate::model::{Encoder, EncoderInput, ParameterCounts, TextTokenizer};

/// Sentences per batch in the throughput measurement.
pub const THROUGHPUT_BATCH: usize = 32;

/// Where the benchmark's sentences come from. One variant per source, so that another (a
/// labelled task's texts, say) is one more arm here.
#[derive(Debug, Clone)]
pub enum TextSource {
    /// A text file, one sentence per line; blank lines are skipped.
    File(PathBuf),
    /// The test sentences of the Rotten Tomatoes sentiment task in this folder.
    RtSentimentTest(PathBuf),
}

/// The sentences, and a label saying where they came from (written into the result).
#[derive(Debug, Clone)]
pub struct Texts {
    pub label: String,
    pub sentences: Vec<String>,
}

impl TextSource {
    pub fn load(&self) -> Result<Texts> {
        match self {
            TextSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the texts file {}", path.display()))?;
                let sentences: Vec<String> =
                    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
                if sentences.is_empty() {
                    bail!("the texts file {} has no sentences (one per line; blank lines are skipped)", path.display());
                }
                Ok(Texts { label: path.display().to_string(), sentences })
            }
            TextSource::RtSentimentTest(dir) => {
                let sentences = crate::eval::data::rt_sentiment(dir)?.test.into_iter().map(|e| e.text).collect();
                Ok(Texts { label: "rt-sentiment test split".to_string(), sentences })
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Timed passes per model (after one warm-up pass).
    pub repeats: usize,
}

struct Loaded {
    name: String,
    encoder: Encoder,
    tokenizer: TextTokenizer,
    parameters: Parameters,
}

#[derive(Default)]
struct Timings {
    batch1_pass_s: Vec<f64>,
    sentence_s: Vec<f64>,
    batch32_pass_s: Vec<f64>,
    /// Real (non-padding) tokens in one pass; the same for every pass.
    tokens: usize,
}

/// Loads every model, then times them on `texts`. `threads` is what [`configure_threads`] returned.
pub fn bench(models: &[PathBuf], texts: &Texts, options: &BenchOptions, threads: usize) -> Result<BenchResult> {
    if models.is_empty() {
        bail!("give at least one --model DIR");
    }
    if options.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let device = Device::Cpu;
    let loaded: Vec<Loaded> = models.iter().map(|dir| load(dir, &device)).collect::<Result<_>>()?;
    let mut timings: Vec<Timings> = loaded.iter().map(|_| Timings::default()).collect();
    for m in &loaded {
        batch1_pass(m, &texts.sentences).with_context(|| format!("warm-up pass of {}", m.name))?;
        batch32_pass(m, &texts.sentences)?;
    }
    for repeat in 0..options.repeats {
        let order: Vec<usize> = (0..loaded.len()).map(|i| (i + repeat) % loaded.len()).collect();
        for &i in &order {
            let (pass, sentences) = batch1_pass(&loaded[i], &texts.sentences)?;
            timings[i].batch1_pass_s.push(pass);
            timings[i].sentence_s.extend(sentences);
        }
        for &i in &order {
            let (pass, tokens) = batch32_pass(&loaded[i], &texts.sentences)?;
            timings[i].batch32_pass_s.push(pass);
            timings[i].tokens = tokens;
        }
    }
    let n = texts.sentences.len() as f64;
    let models = loaded
        .iter()
        .zip(timings)
        .map(|(m, t)| {
            let batch32 = Summary::of(t.batch32_pass_s);
            let b32 = batch32.median();
            ModelBench {
                model: m.name.clone(),
                parameters: m.parameters,
                batch1_pass_s: Summary::of(t.batch1_pass_s),
                batch1_sentence_ms: 1e3 * median(&t.sentence_s),
                batch32_sentences_per_s: n / b32,
                batch32_tokens_per_s: t.tokens as f64 / b32,
                batch32_pass_s: batch32,
            }
        })
        .collect();
    Ok(BenchResult {
        texts: texts.label.clone(),
        sentences: texts.sentences.len(),
        repeats: options.repeats,
        threads,
        models,
    })
}

fn load(dir: &Path, device: &Device) -> Result<Loaded> {
    if !dir.is_dir() {
        bail!("model directory {} does not exist", dir.display());
    }
    let (ckpt, encoder) = load_encoder(dir, device).with_context(|| format!("cannot load model {}", dir.display()))?;
    let tokenizer = TextTokenizer::load(dir).with_context(|| format!("model {} needs a tokenizer", dir.display()))?;
    let c = ParameterCounts::of(&ckpt.weights);
    let parameters = Parameters { embeddings: c.embeddings, encoder: c.encoder, head: c.head, total: c.total() };
    Ok(Loaded { name: dir.display().to_string(), encoder, tokenizer, parameters })
}

/// Tokenises and runs a batch to the last hidden state; returns its real tokens.
fn run_batch<S: AsRef<str>>(m: &Loaded, sentences: &[S]) -> Result<usize> {
    let cfg = &m.encoder.cfg;
    let batch = m.tokenizer.encode_batch(sentences, cfg.max_sequence_length())?;
    let types = (cfg.type_vocab_size > 0).then_some(batch.token_type_ids.as_slice());
    let input = EncoderInput::from_rows(cfg, &batch.input_ids, &batch.attention_mask, types, &Device::Cpu)?;
    // candle's CPU backend computes eagerly: the hidden states exist when forward returns.
    let hidden = m.encoder.forward(&input, None).with_context(|| format!("forward pass of {}", m.name))?;
    drop(hidden);
    Ok(batch.attention_mask.iter().flatten().map(|&x| x as usize).sum())
}

/// One pass, one sentence at a time: the pass's seconds and each sentence's.
fn batch1_pass(m: &Loaded, sentences: &[String]) -> Result<(f64, Vec<f64>)> {
    let mut each = Vec::with_capacity(sentences.len());
    let start = Instant::now();
    for s in sentences {
        let t = Instant::now();
        run_batch(m, std::slice::from_ref(s))?;
        each.push(t.elapsed().as_secs_f64());
    }
    Ok((start.elapsed().as_secs_f64(), each))
}

/// One pass in batches of [`THROUGHPUT_BATCH`]: seconds and real tokens.
fn batch32_pass(m: &Loaded, sentences: &[String]) -> Result<(f64, usize)> {
    let start = Instant::now();
    let mut tokens = 0;
    for chunk in sentences.chunks(THROUGHPUT_BATCH) {
        tokens += run_batch(m, chunk)?;
    }
    Ok((start.elapsed().as_secs_f64(), tokens))
}

/// Millions with two decimals from 100k up, else the plain count.
pub fn format_count(n: usize) -> String {
    if n >= 100_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else {
        n.to_string()
    }
}

/// The readable table `distil bench` prints: one row per model, speed-ups against the first.
pub fn format_table(result: &BenchResult) -> String {
    let mut out = format!(
        "{} sentences from {}, {} repeat(s) (median), {} thread(s)\n",
        result.sentences, result.texts, result.repeats, result.threads
    );
    let header = ["model", "params", "encoder", "b1 ms/sent", "b1 pass s", "b1 speed-up", "b32 sent/s", "b32 tok/s"];
    let first = result.models.first();
    let rows: Vec<[String; 8]> = result
        .models
        .iter()
        .map(|m| {
            let pass = m.batch1_pass_s.median();
            let speedup = first.map_or(f64::NAN, |f| f.batch1_pass_s.median() / pass);
            [
                m.model.clone(),
                format_count(m.parameters.total),
                format_count(m.parameters.encoder),
                format!("{:.2}", m.batch1_sentence_ms),
                format!("{pass:.3}"),
                format!("{speedup:.2}x"),
                format!("{:.1}", m.batch32_sentences_per_s),
                format!("{:.0}", m.batch32_tokens_per_s),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| if i == 0 { format!("{c:<w$}") } else { format!("{c:>w$}") })
            .collect();
        parts.join("  ").trim_end().to_string() + "\n"
    };
    out += &line(header.to_vec());
    for row in &rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}
