//! `distil report`: a run folder's numbers side by side, as Markdown with PNG charts.
//!
//! Reads `run.toml`, `metrics.jsonl` and the evaluation results in `eval/` (see
//! [`EVAL_FILES`]). Any input may be missing: its cells say "not measured" and the report lists
//! the missing files. A file that is present but cannot be read is an error naming it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

use crate::eval::charts::{draw_panels, Panel, Series};
use crate::eval::results::{read_json, BenchResult, ClassifyResult, MlmResult, ModelBench};
use crate::train::config::RunConfig;
use crate::train::metrics::{EvalRecord, MetricsLog, Record, StepRecord};

pub const NOT_MEASURED: &str = "not measured";

/// The evaluation results a run folder's `eval/` may hold.
pub const EVAL_FILES: [&str; 7] = [
    "teacher-mlm.json",
    "student-mlm.json",
    "teacher-probe.json",
    "student-probe.json",
    "teacher-finetune.json",
    "student-finetune.json",
    "bench.json",
];

#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub run_dir: PathBuf,
    /// Other runs for the comparison table, with the label of their row.
    pub compare: Vec<(String, PathBuf)>,
    /// Output folder (default `RUN_DIR/report`).
    pub out: Option<PathBuf>,
}

/// Parses `LABEL=RUN_DIR` (the value of `--compare`).
pub fn parse_compare(s: &str) -> Result<(String, PathBuf)> {
    match s.split_once('=') {
        Some((label, dir)) if !label.trim().is_empty() && !dir.trim().is_empty() => {
            Ok((label.trim().to_string(), PathBuf::from(dir.trim())))
        }
        _ => bail!("--compare {s:?}: expected LABEL=RUN_DIR, e.g. \"KL only=runs/kl-only\""),
    }
}

/// What one run folder holds; `None` where a file is missing.
struct Run {
    config: Option<RunConfig>,
    steps: Vec<StepRecord>,
    evals: Vec<EvalRecord>,
    has_metrics: bool,
    teacher_mlm: Option<MlmResult>,
    student_mlm: Option<MlmResult>,
    teacher_probe: Option<ClassifyResult>,
    student_probe: Option<ClassifyResult>,
    teacher_finetune: Option<ClassifyResult>,
    student_finetune: Option<ClassifyResult>,
    bench: Option<BenchResult>,
}

impl Run {
    fn read(dir: &Path, missing: &mut Vec<PathBuf>) -> Result<Run> {
        if !dir.is_dir() {
            bail!("run folder {} does not exist", dir.display());
        }
        let toml = dir.join("run.toml");
        let config = if toml.is_file() {
            Some(RunConfig::load(&toml, &[])?)
        } else {
            missing.push(toml);
            None
        };
        let metrics = dir.join("metrics.jsonl");
        let (mut steps, mut evals) = (Vec::new(), Vec::new());
        let has_metrics = metrics.is_file();
        if has_metrics {
            for record in MetricsLog::read(dir)? {
                match record {
                    Record::Step(s) => steps.push(s),
                    Record::Eval { eval } => evals.push(eval),
                }
            }
        } else {
            missing.push(metrics);
        }
        let eval = dir.join("eval");
        let get = |name: &str| -> PathBuf { eval.join(name) };
        Ok(Run {
            config,
            steps,
            evals,
            has_metrics,
            teacher_mlm: optional(&get("teacher-mlm.json"), missing)?,
            student_mlm: optional(&get("student-mlm.json"), missing)?,
            teacher_probe: optional(&get("teacher-probe.json"), missing)?,
            student_probe: optional(&get("student-probe.json"), missing)?,
            teacher_finetune: optional(&get("teacher-finetune.json"), missing)?,
            student_finetune: optional(&get("student-finetune.json"), missing)?,
            bench: optional(&get("bench.json"), missing)?,
        })
    }

    fn bench_model(&self, i: usize) -> Option<&ModelBench> {
        self.bench.as_ref().and_then(|b| b.models.get(i))
    }
}

/// Reads a result file if it exists; a missing one is noted, a malformed one is an error.
fn optional<T: DeserializeOwned>(path: &Path, missing: &mut Vec<PathBuf>) -> Result<Option<T>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        missing.push(path.to_path_buf());
        Ok(None)
    }
}

/// Writes `report.md` and its charts; returns the path of `report.md`.
pub fn write_report(options: &ReportOptions) -> Result<PathBuf> {
    let mut missing = Vec::new();
    let run = Run::read(&options.run_dir, &mut missing)?;
    let mut compared = Vec::new();
    for (label, dir) in &options.compare {
        let mut their_missing = Vec::new();
        let other =
            Run::read(dir, &mut their_missing).with_context(|| format!("--compare {label}={}", dir.display()))?;
        // A comparison run needs only its own metrics and student results.
        missing.extend(their_missing.into_iter().filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            name == "metrics.jsonl" || name.starts_with("student-")
        }));
        compared.push((label.clone(), dir.clone(), other));
    }
    let out = options.out.clone().unwrap_or_else(|| options.run_dir.join("report"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create the report folder {}", out.display()))?;
    let charts = draw_charts(&run, &out)?;
    let markdown = render(&options.run_dir, &run, &compared, &charts, &missing);
    let path = out.join("report.md");
    crate::model::checkpoint::write_atomic(&path, markdown.as_bytes())?;
    Ok(path)
}

/// One number of a logged step.
type StepValue = fn(&StepRecord) -> f64;

/// A chart that was drawn: its file name in the report folder and its caption.
struct Chart {
    file: &'static str,
    caption: &'static str,
}

fn draw_charts(run: &Run, out: &Path) -> Result<Vec<Chart>> {
    let mut charts = Vec::new();
    if !run.steps.is_empty() {
        let step_series = |label: &str, f: &dyn Fn(&StepRecord) -> f64| Series {
            label: label.to_string(),
            points: run.steps.iter().map(|s| (s.step as f64, f(s))).collect(),
        };
        let mut panels = Vec::new();
        let components: [(&str, &str, StepValue); 4] = [
            ("L_ce", "KL to the teacher (x T²)", |s| s.loss.ce),
            ("L_mlm", "masked-word cross-entropy", |s| s.loss.mlm),
            ("L_cos", "1 - cosine of hidden states", |s| s.loss.cos),
            ("L_mse", "squared distance of logits", |s| s.loss.mse),
        ];
        for (name, what, f) in components {
            if run.steps.iter().any(|s| f(s) != 0.0) {
                panels.push(Panel {
                    title: format!("{name}: {what}"),
                    y_label: name.to_string(),
                    series: vec![step_series(name, &f)],
                });
            }
        }
        panels.push(Panel {
            title: "total: weighted sum".into(),
            y_label: "loss".into(),
            series: vec![step_series("total", &|s| s.loss.total)],
        });
        draw_panels(&out.join("loss.png"), "Training loss by component", "step", &panels)?;
        charts.push(Chart { file: "loss.png", caption: "Training loss: each component present, and the total" });
        let panels = vec![
            Panel { title: "learning rate".into(), y_label: "lr".into(), series: vec![step_series("lr", &|s| s.lr)] },
            Panel {
                title: "gradient norm".into(),
                y_label: "global L2 norm".into(),
                series: vec![step_series("grad norm", &|s| s.grad_norm)],
            },
        ];
        draw_panels(&out.join("lr.png"), "Optimiser", "step", &panels)?;
        charts.push(Chart { file: "lr.png", caption: "Learning rate and gradient norm" });
    }
    if !run.evals.is_empty() {
        let eval_series = |label: &str, f: &dyn Fn(&EvalRecord) -> Option<f64>| Series {
            label: label.to_string(),
            points: run.evals.iter().filter_map(|e| f(e).map(|v| (e.step as f64, v))).collect(),
        };
        let mut panels = vec![
            Panel {
                title: "held-out MLM accuracy".into(),
                y_label: "top-1 accuracy (%)".into(),
                series: vec![eval_series("student", &|e| Some(100.0 * e.mlm_accuracy))],
            },
            Panel {
                title: "held-out MLM loss".into(),
                y_label: "cross-entropy (nats)".into(),
                series: vec![eval_series("student", &|e| Some(e.mlm_loss))],
            },
        ];
        if run.evals.iter().any(|e| e.kl.is_some()) {
            panels.push(Panel {
                title: "KL(teacher || student), T = 1".into(),
                y_label: "KL (nats per token)".into(),
                series: vec![eval_series("KL", &|e| e.kl)],
            });
        }
        if run.evals.iter().any(|e| e.cosine.is_some()) {
            panels.push(Panel {
                title: "cosine of last hidden states".into(),
                y_label: "mean cosine".into(),
                series: vec![eval_series("cosine", &|e| e.cosine)],
            });
        }
        draw_panels(&out.join("heldout.png"), "Held-out evaluation", "step", &panels)?;
        charts.push(Chart { file: "heldout.png", caption: "Held-out metrics over the run" });
    }
    Ok(charts)
}

fn pct(share: f64) -> String {
    format!("{:.2}%", 100.0 * share)
}

fn count(n: usize) -> String {
    if n >= 100_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else {
        n.to_string()
    }
}

fn or_nm<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| NOT_MEASURED.to_string())
}

fn accuracy(r: &ClassifyResult) -> String {
    let a = &r.accuracy;
    format!(
        "{:.2} ± {:.2}% ({} seed{})",
        100.0 * a.mean,
        100.0 * a.std,
        a.runs.len(),
        if a.runs.len() == 1 { "" } else { "s" }
    )
}

/// Student / teacher as a percentage ("share kept").
fn kept(student: Option<f64>, teacher: Option<f64>) -> String {
    match (student, teacher) {
        (Some(s), Some(t)) if t != 0.0 => format!("{:.1}% kept", 100.0 * s / t),
        _ => String::new(),
    }
}

/// Teacher / student as a factor ("speed-up"), for times where smaller is better.
fn faster(student: Option<f64>, teacher: Option<f64>) -> String {
    match (student, teacher) {
        (Some(s), Some(t)) if s > 0.0 => format!("{:.2}x faster", t / s),
        _ => String::new(),
    }
}

fn render(
    run_dir: &Path,
    run: &Run,
    compared: &[(String, PathBuf, Run)],
    charts: &[Chart],
    missing: &[PathBuf],
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Distillation report: {}\n", run_dir.display());
    let _ = writeln!(
        md,
        "Written by `distil report` from the run folder `{}`. A cell that says \"{NOT_MEASURED}\" had no input file; \
         the missing files are listed at the end.\n",
        run_dir.display()
    );
    render_main_table(&mut md, run);
    render_run(&mut md, run);
    if !charts.is_empty() {
        let _ = writeln!(md, "## Charts\n");
        for c in charts {
            let _ = writeln!(md, "![{}]({})\n", c.caption, c.file);
        }
    }
    if !compared.is_empty() {
        render_comparison(&mut md, run, compared);
    }
    let _ = writeln!(md, "## Missing inputs\n");
    if missing.is_empty() {
        let _ = writeln!(md, "None: every input was found.\n");
    } else {
        for p in missing {
            let _ = writeln!(md, "- `{}`", p.display());
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "---\nCharts drawn with DejaVu Sans, embedded in distil (Bitstream Vera licence; DejaVu changes in the public \
         domain; see `resources/fonts/DejaVuSans-LICENSE.txt`)."
    );
    md
}

fn row(md: &mut String, cells: [&str; 4]) {
    let _ = writeln!(md, "| {} | {} | {} | {} |", cells[0], cells[1], cells[2], cells[3]);
}

fn render_main_table(md: &mut String, run: &Run) {
    let _ = writeln!(md, "## Teacher vs student\n");
    let (t, s) = (run.bench_model(0), run.bench_model(1));
    row(md, ["", "teacher", "student", "student vs teacher"]);
    let _ = writeln!(md, "|---|---:|---:|---:|");
    let name = |m: Option<&ModelBench>, r: Option<&MlmResult>| {
        m.map(|m| format!("`{}`", m.model)).or(r.map(|r| format!("`{}`", r.model))).unwrap_or_default()
    };
    row(md, ["model", &name(t, run.teacher_mlm.as_ref()), &name(s, run.student_mlm.as_ref()), ""]);
    let params = |f: fn(&ModelBench) -> usize| {
        let (tv, sv) = (t.map(f), s.map(f));
        [or_nm(tv, count), or_nm(sv, count), kept(sv.map(|x| x as f64), tv.map(|x| x as f64))]
    };
    let [a, b, c] = params(|m| m.parameters.total);
    row(md, ["parameters, total", &a, &b, &c]);
    let [a, b, c] = params(|m| m.parameters.encoder);
    row(md, ["parameters, encoder layers", &a, &b, &c]);
    let bench = run.bench.as_ref();
    let sentences = bench.map(|b| format!("{} sentences", b.sentences)).unwrap_or_default();
    let lat = |m: Option<&ModelBench>| m.map(|m| m.batch1_sentence_ms);
    row(
        md,
        [
            "batch-1 latency, ms per sentence (median)",
            &or_nm(lat(t), |v| format!("{v:.2}")),
            &or_nm(lat(s), |v| format!("{v:.2}")),
            &faster(lat(s), lat(t)),
        ],
    );
    let pass = |m: Option<&ModelBench>| m.map(|m| m.batch1_pass_s.median());
    let label = format!(
        "batch-1 pass over the {sentences}, s (median of {} repeats, {} threads)",
        bench.map_or(0, |b| b.repeats),
        bench.map_or(0, |b| b.threads)
    );
    let label = if bench.is_some() { label } else { "batch-1 pass over the sentences, s".to_string() };
    row(
        md,
        [
            &label,
            &or_nm(pass(t), |v| format!("{v:.3}")),
            &or_nm(pass(s), |v| format!("{v:.3}")),
            &faster(pass(s), pass(t)),
        ],
    );
    let thr = |m: Option<&ModelBench>| m.map(|m| m.batch32_sentences_per_s);
    let ratio = |sv: Option<f64>, tv: Option<f64>| match (sv, tv) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => String::new(),
    };
    row(
        md,
        [
            "batch-32 throughput, sentences/s",
            &or_nm(thr(t), |v| format!("{v:.1}")),
            &or_nm(thr(s), |v| format!("{v:.1}")),
            &ratio(thr(s), thr(t)),
        ],
    );
    let tok = |m: Option<&ModelBench>| m.map(|m| m.batch32_tokens_per_s);
    row(
        md,
        [
            "batch-32 throughput, real tokens/s",
            &or_nm(tok(t), |v| format!("{v:.0}")),
            &or_nm(tok(s), |v| format!("{v:.0}")),
            &ratio(tok(s), tok(t)),
        ],
    );
    let (tm, sm) = (run.teacher_mlm.as_ref(), run.student_mlm.as_ref());
    for (label, f) in
        [("held-out MLM top-1", (|r: &MlmResult| r.top1) as fn(&MlmResult) -> f64), ("held-out MLM top-5", |r| r.top5)]
    {
        let (tv, sv) = (tm.map(f), sm.map(f));
        row(md, [label, &or_nm(tv, pct), &or_nm(sv, pct), &kept(sv, tv)]);
    }
    let (tv, sv) = (tm.map(|r| r.perplexity), sm.map(|r| r.perplexity));
    row(
        md,
        [
            "held-out MLM perplexity",
            &or_nm(tv, |v| format!("{v:.2}")),
            &or_nm(sv, |v| format!("{v:.2}")),
            &ratio(sv, tv).replace('x', "x the teacher's"),
        ],
    );
    let agreement = sm.and_then(|r| r.agreement.as_ref());
    let agree_cell = |f: fn(&crate::eval::results::Agreement) -> String| or_nm(agreement, f);
    row(md, ["agreement: top-1 match with the teacher", "", &agree_cell(|a| pct(a.top1_match)), ""]);
    row(md, ["agreement: KL(teacher ‖ student), T = 1", "", &agree_cell(|a| format!("{:.4}", a.kl)), ""]);
    row(md, ["agreement: cosine of last hidden states", "", &agree_cell(|a| format!("{:.4}", a.hidden_cosine)), ""]);
    for (label, tr, sr) in [
        ("sentiment accuracy, linear probe", &run.teacher_probe, &run.student_probe),
        ("sentiment accuracy, fine-tuned", &run.teacher_finetune, &run.student_finetune),
    ] {
        let mean = |r: &Option<ClassifyResult>| r.as_ref().map(|r| r.accuracy.mean);
        row(md, [label, &or_nm(tr.as_ref(), accuracy), &or_nm(sr.as_ref(), accuracy), &kept(mean(sr), mean(tr))]);
    }
    md.push('\n');
    if let Some(b) = bench {
        let _ = writeln!(
            md,
            "Speed: `distil bench` on {} ({} sentences), CPU, {} thread(s); batch-1 runs one sentence at a time, \
             tokenisation included (the DistilBERT paper's setup); speed-up = teacher time / student time.\n",
            b.texts, b.sentences, b.threads
        );
    }
}

fn last_step(run: &Run) -> Option<&StepRecord> {
    run.steps.last()
}

fn render_run(md: &mut String, run: &Run) {
    let _ = writeln!(md, "## Run\n");
    match &run.config {
        Some(c) => {
            let teacher =
                c.teacher.as_ref().map_or("none (MLM pretraining)".to_string(), |t| format!("`{}`", t.display()));
            let _ = writeln!(md, "- teacher: {teacher}; student: `{}`", c.student.display());
            let _ = writeln!(md, "- corpus: `{}`", c.corpus.display());
            let steps = if c.run.steps > 0 { format!("{}", c.run.steps) } else { format!("{} epoch(s)", c.run.epochs) };
            let done = last_step(run).map_or("none logged".to_string(), |s| format!("{} (epoch {})", s.step, s.epoch));
            let _ = writeln!(md, "- steps: {steps} configured; last logged step {done}");
            let l = &c.loss;
            let _ = writeln!(
                md,
                "- loss weights: α_ce {} · α_mlm {} · α_cos {} · α_mse {}; temperature {}; KL over {}",
                l.alpha_ce,
                l.alpha_mlm,
                l.alpha_cos,
                l.alpha_mse,
                l.temperature,
                if l.restrict_ce_to_mask { "masked tokens only" } else { "all real tokens" }
            );
            let _ = writeln!(
                md,
                "- optimiser: AdamW lr {}, warmup {}% of the steps, gradient clip {}; batch {} × {} accumulation, seed {}",
                c.optim.adamw.lr,
                100.0 * c.optim.warmup,
                c.optim.clip_grad_norm,
                if c.batch.tokens > 0 { format!("{} tokens", c.batch.tokens) } else { format!("{} sequences", c.batch.sequences) },
                c.batch.accumulation,
                c.run.seed
            );
        }
        None => {
            let _ = writeln!(md, "- config: {NOT_MEASURED} (no run.toml)");
        }
    }
    match last_step(run) {
        Some(s) => {
            let l = &s.loss;
            let _ = writeln!(
                md,
                "- final training loss (step {}): L_ce {:.4}, L_mlm {:.4}, L_cos {:.4}, L_mse {:.4}, total {:.4}",
                s.step, l.ce, l.mlm, l.cos, l.mse, l.total
            );
            let _ = writeln!(md, "- non-finite steps skipped: {}", s.skipped);
            let mean_tps = run.steps.iter().map(|s| s.tokens_per_s).sum::<f64>() / run.steps.len() as f64;
            let _ = writeln!(md, "- mean training throughput over the logged steps: {mean_tps:.0} tokens/s");
        }
        None if run.has_metrics => {
            let _ = writeln!(md, "- final training loss: no step logged in metrics.jsonl");
        }
        None => {
            let _ = writeln!(md, "- final training loss: {NOT_MEASURED} (no metrics.jsonl)");
        }
    }
    if let Some(e) = run.evals.last() {
        let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
        let _ = writeln!(
            md,
            "- final held-out evaluation (step {}): MLM loss {:.4}, MLM accuracy {}, KL {}, cosine {}",
            e.step,
            e.mlm_loss,
            pct(e.mlm_accuracy),
            opt(e.kl),
            opt(e.cosine)
        );
    }
    let _ = writeln!(md, "- wall time: not recorded (metrics.jsonl carries no timestamps)\n");
}

fn render_comparison(md: &mut String, run: &Run, compared: &[(String, PathBuf, Run)]) {
    let _ = writeln!(md, "## Comparison runs\n");
    let _ = writeln!(
        md,
        "| run | L_ce | L_mlm | L_cos | total | held-out MLM top-1 | agreement KL | probe accuracy | fine-tuned accuracy |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut line = |label: String, r: &Run| {
        let last = r.steps.last();
        let loss = |f: fn(&StepRecord) -> f64| or_nm(last, |s| format!("{:.4}", f(s)));
        let mlm = r.student_mlm.as_ref();
        let cells = [
            label,
            loss(|s| s.loss.ce),
            loss(|s| s.loss.mlm),
            loss(|s| s.loss.cos),
            loss(|s| s.loss.total),
            or_nm(mlm, |m| pct(m.top1)),
            or_nm(mlm.and_then(|m| m.agreement.as_ref()), |a| format!("{:.4}", a.kl)),
            or_nm(r.student_probe.as_ref(), accuracy),
            or_nm(r.student_finetune.as_ref(), accuracy),
        ];
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    };
    line("this run".to_string(), run);
    for (label, dir, r) in compared {
        line(format!("{label} (`{}`)", dir.display()), r);
    }
    md.push('\n');
}
