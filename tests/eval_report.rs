//! `distil report` on a synthetic run folder, and `distil bench` on two tiny fixture checkpoints.
//! Fast, and no assets needed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use distil::distill::loss::LossValues;
use distil::eval::report::{write_report, ReportOptions};
use distil::eval::results::{
    read_json, write_json, Agreement, BenchResult, ClassifyResult, MlmResult, ModelBench, Parameters, Summary,
};
use distil::train::metrics::{EvalRecord, MetricsLog, Record, StepRecord};

use common::fixture;

const RUN_TOML: &str = r#"
teacher = "runs/teacher"
student = "runs/student-init"
corpus = "assets/corpus-minilm"
out = "runs/distil-3l"

[loss]
temperature = 2.0
alpha_ce = 5.0
alpha_mlm = 2.0
alpha_cos = 1.0

[run]
steps = 40
"#;

/// A run folder with a config and metrics (steps every 10, evaluations at 20 and 40).
fn write_run(dir: &Path, scale: f64) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("run.toml"), RUN_TOML).unwrap();
    let mut log = MetricsLog::open(dir, 0).unwrap();
    for step in (10..=40).step_by(10) {
        let f = scale * 40.0 / step as f64;
        let loss = LossValues { ce: 2.0 * f, mlm: 3.0 * f, cos: 0.1 * f, mse: 0.0, total: 16.1 * f };
        log.write(&Record::Step(StepRecord {
            step,
            epoch: 0,
            loss,
            lr: 5e-4 * (1.0 - step as f64 / 40.0),
            grad_norm: 1.5 * f,
            tokens_per_s: 1000.0,
            skipped: 0,
        }))
        .unwrap();
        if step % 20 == 0 {
            let eval =
                EvalRecord { step, mlm_loss: 3.0 * f, mlm_accuracy: 0.3 / f, kl: Some(0.5 * f), cosine: Some(0.9) };
            log.write(&Record::Eval { eval }).unwrap();
        }
    }
}

fn mlm(model: &str, top1: f64, agreement: Option<Agreement>) -> MlmResult {
    MlmResult {
        model: model.into(),
        corpus: "corpus".into(),
        sequences: 100,
        targets: 1500,
        seed: 7,
        loss: 2.0,
        perplexity: 2f64.exp(),
        top1,
        top5: top1 + 0.2,
        agreement,
    }
}

fn classify(model: &str, mode: &str, runs: Vec<f64>) -> ClassifyResult {
    ClassifyResult {
        model: model.into(),
        task: "rt-sentiment".into(),
        mode: mode.into(),
        classes: vec!["negative".into(), "positive".into()],
        train_size: 8000,
        test_size: 2000,
        seeds: (0..runs.len() as u64).collect(),
        macro_f1: Summary::of(runs.clone()),
        accuracy: Summary::of(runs),
        seconds: 10.0,
    }
}

fn model_bench(model: &str, total: usize, encoder: usize, pass: Vec<f64>) -> ModelBench {
    let b32 = pass.iter().map(|p| p / 4.0).collect();
    ModelBench {
        model: model.into(),
        parameters: Parameters { embeddings: total - encoder, encoder, head: 0, total },
        batch1_sentence_ms: pass[0],
        batch1_pass_s: Summary::of(pass),
        batch32_pass_s: Summary::of(b32),
        batch32_sentences_per_s: 100.0,
        batch32_tokens_per_s: 2000.0,
    }
}

fn write_evals(dir: &Path) {
    let eval = dir.join("eval");
    std::fs::create_dir_all(&eval).unwrap();
    let agreement = Agreement { teacher: "teacher".into(), top1_match: 0.75, kl: 0.1234, hidden_cosine: 0.9321 };
    write_json(&eval.join("teacher-mlm.json"), &mlm("teacher", 0.5, None)).unwrap();
    write_json(&eval.join("student-mlm.json"), &mlm("student", 0.45, Some(agreement))).unwrap();
    write_json(&eval.join("teacher-probe.json"), &classify("teacher", "probe", vec![0.80, 0.82])).unwrap();
    write_json(&eval.join("student-probe.json"), &classify("student", "probe", vec![0.77, 0.79])).unwrap();
    write_json(&eval.join("teacher-finetune.json"), &classify("teacher", "finetune", vec![0.9])).unwrap();
    write_json(&eval.join("student-finetune.json"), &classify("student", "finetune", vec![0.855])).unwrap();
    let bench = BenchResult {
        texts: "sentences.txt".into(),
        sentences: 50,
        repeats: 3,
        threads: 2,
        models: vec![
            // Medians: teacher 2.0 s, student 1.25 s → 1.60x faster.
            model_bench("teacher", 110_000_000, 85_000_000, vec![2.2, 2.0, 1.9]),
            model_bench("student", 66_000_000, 42_500_000, vec![1.25, 1.0, 1.3]),
        ],
    };
    write_json(&eval.join("bench.json"), &bench).unwrap();
}

fn report(run: &Path, compare: Vec<(String, PathBuf)>) -> String {
    let path = write_report(&ReportOptions { run_dir: run.to_path_buf(), compare, out: None }).unwrap();
    assert_eq!(path, run.join("report/report.md"));
    std::fs::read_to_string(path).unwrap()
}

/// A PNG's signature and its IHDR width and height.
fn png_size(path: &Path) -> (u32, u32, usize) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20), bytes.len())
}

fn line_with<'a>(md: &'a str, start: &str) -> &'a str {
    md.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no line starting {start:?} in\n{md}"))
}

#[test]
fn report_puts_teacher_and_student_side_by_side_with_charts() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    write_run(&run, 1.0);
    write_evals(&run);
    let md = report(&run, vec![]);

    assert!(!md.contains("| not measured"), "{md}");
    assert!(line_with(&md, "| parameters, total |").contains("| 110.00M | 66.00M | 60.0% kept |"));
    assert!(line_with(&md, "| parameters, encoder layers |").contains("50.0% kept"));
    let pass = line_with(&md, "| batch-1 pass over the 50 sentences");
    assert!(pass.contains("| 2.000 | 1.250 | 1.60x faster |"), "{pass}");
    assert!(line_with(&md, "| held-out MLM top-1 |").contains("| 50.00% | 45.00% | 90.0% kept |"));
    assert!(line_with(&md, "| agreement: top-1 match").contains("75.00%"));
    assert!(line_with(&md, "| agreement: KL").contains("0.1234"));
    assert!(line_with(&md, "| agreement: cosine").contains("0.9321"));
    // Probe: 0.78 / 0.81 = 96.3%; fine-tuned: 0.855 / 0.9 = 95.0%.
    let probe = line_with(&md, "| sentiment accuracy, linear probe |");
    assert!(probe.contains("81.00 ± 1.41% (2 seeds)") && probe.contains("78.00 ± 1.41% (2 seeds)"), "{probe}");
    assert!(probe.ends_with("96.3% kept |"), "{probe}");
    assert!(line_with(&md, "| sentiment accuracy, fine-tuned |").ends_with("95.0% kept |"));
    // The run section: config and the last logged losses.
    assert!(md.contains("α_ce 5 · α_mlm 2 · α_cos 1 · α_mse 0; temperature 2"), "{md}");
    assert!(md.contains("final training loss (step 40): L_ce 2.0000, L_mlm 3.0000, L_cos 0.1000"), "{md}");
    assert!(md.contains("final held-out evaluation (step 40): MLM loss 3.0000, MLM accuracy 30.00%"), "{md}");
    assert!(md.contains("None: every input was found."));

    for chart in ["loss.png", "lr.png", "heldout.png"] {
        assert!(md.contains(&format!("({chart})")), "{chart} not linked");
        let (w, h, bytes) = png_size(&run.join("report").join(chart));
        assert!(w >= 500 && h >= 300, "{chart}: {w}x{h}");
        assert!(bytes > 10_000, "{chart}: only {bytes} bytes");
    }
}

#[test]
fn missing_inputs_say_not_measured_and_are_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    write_run(&run, 1.0);
    let eval = run.join("eval");
    std::fs::create_dir_all(&eval).unwrap();
    write_json(&eval.join("student-mlm.json"), &mlm("student", 0.45, None)).unwrap();
    let md = report(&run, vec![]);
    let top1 = line_with(&md, "| held-out MLM top-1 |");
    assert!(top1.contains("| not measured | 45.00% |"), "{top1}");
    assert!(line_with(&md, "| parameters, total |").contains("| not measured | not measured |"));
    assert!(line_with(&md, "| agreement: KL").contains("not measured"));
    for name in ["teacher-mlm.json", "bench.json", "student-probe.json", "teacher-finetune.json"] {
        assert!(md.contains(&format!("eval/{name}`")), "{name} not listed as missing:\n{md}");
    }
    assert!(!md.contains("student-mlm.json`"), "a present file listed as missing");

    // An empty run folder still gives a report: no charts, everything missing.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let md = report(&empty, vec![]);
    assert!(md.contains("no run.toml") && md.contains("no metrics.jsonl"), "{md}");
    assert!(md.contains("metrics.jsonl`") && !md.contains(".png"));
}

#[test]
fn a_malformed_input_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    write_run(&run, 1.0);
    write_evals(&run);
    std::fs::write(run.join("eval/student-probe.json"), "{\"model\": 3").unwrap();
    let err = write_report(&ReportOptions { run_dir: run.clone(), compare: vec![], out: None }).unwrap_err();
    assert!(format!("{err:#}").contains("student-probe.json"), "{err:#}");

    // Through the command line: a non-zero exit and the file's name.
    std::fs::write(run.join("eval/student-probe.json"), "[]").unwrap();
    let out = distil(&["report", run.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("student-probe.json"));

    std::fs::remove_file(run.join("eval/student-probe.json")).unwrap();
    std::fs::write(run.join("metrics.jsonl"), "{\"step\": 1}\nnot json\n").unwrap();
    let err = write_report(&ReportOptions { run_dir: run, compare: vec![], out: None }).unwrap_err();
    assert!(format!("{err:#}").contains("metrics.jsonl line 1"), "{err:#}");
}

#[test]
fn compare_adds_one_row_per_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    write_run(&run, 1.0);
    write_evals(&run);
    let kl_only = tmp.path().join("kl-only");
    write_run(&kl_only, 2.0);
    let agreement = Agreement { teacher: "teacher".into(), top1_match: 0.6, kl: 0.4321, hidden_cosine: 0.8 };
    std::fs::create_dir_all(kl_only.join("eval")).unwrap();
    write_json(&kl_only.join("eval/student-mlm.json"), &mlm("kl-only", 0.3333, Some(agreement))).unwrap();
    let random = tmp.path().join("random");
    write_run(&random, 3.0);

    let out_dir = tmp.path().join("out");
    let out = distil(&[
        "report",
        run.to_str().unwrap(),
        "--compare",
        &format!("KL only={}", kl_only.display()),
        "--compare",
        &format!("random init={}", random.display()),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.trim(), out_dir.join("report.md").to_str().unwrap());
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(out_dir.join("loss.png").is_file());

    let this = line_with(&md, "| this run |");
    assert!(
        this.starts_with("| this run | 2.0000 | 3.0000 | 0.1000 | 16.1000 | 45.00% | 0.1234 | 78.00 ± 1.41%"),
        "{this}"
    );
    let kl = line_with(&md, "| KL only (");
    assert!(
        kl.contains("| 4.0000 | 6.0000 | 0.2000 | 32.2000 | 33.33% | 0.4321 | not measured | not measured |"),
        "{kl}"
    );
    let random_row = line_with(&md, "| random init (");
    assert!(random_row.contains("| 6.0000 | 9.0000 |") && random_row.contains("not measured"), "{random_row}");
    // A comparison run's missing student results are listed; its teacher files are not needed.
    assert!(md.contains(&format!("{}`", random.join("eval/student-probe.json").display())));
    assert!(!md.contains(&format!("{}`", random.join("eval/teacher-mlm.json").display())));

    let bad = distil(&["report", run.to_str().unwrap(), "--compare", "no-label"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("LABEL=RUN_DIR"));
}

fn distil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distil")).args(args).output().unwrap()
}

/// A fixture checkpoint copied with a small WordPiece vocabulary (the fixtures have no tokenizer).
fn model_with_vocab(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dst.join(path.file_name().unwrap())).unwrap();
        }
    }
    let words = "the a of and to in is it that was for on are with as his they at be this from have or by one had \
                 not but what all were when we there can an your which their said if do will each about how up out \
                 them then she many some so these would other into has more her two like him see time could no make";
    let mut vocab = vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "##s", "##ed", "##ing"];
    vocab.extend(words.split_whitespace());
    assert!(vocab.len() <= 99);
    std::fs::write(dst.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
}

/// `inspect`'s parameter counts: (total, embeddings, encoder, head).
fn inspected_parameters(dir: &Path) -> [usize; 4] {
    let out = distil(&["inspect", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text.lines().find(|l| l.starts_with("parameters")).unwrap();
    let numbers: Vec<usize> =
        line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    numbers.try_into().unwrap_or_else(|n| panic!("unexpected parameters line {line:?}: {n:?}"))
}

#[test]
fn bench_measures_two_models_and_counts_what_inspect_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = tmp.path().join("teacher");
    let student = tmp.path().join("student");
    model_with_vocab(&fixture("models/bert_tied"), &teacher);
    model_with_vocab(&fixture("distill/bert_untied_student"), &student);
    let texts = tmp.path().join("texts.txt");
    std::fs::write(&texts, "the time of his life.\n\n  \nthey said it was one of them\nwhat could be more like her\n")
        .unwrap();
    let result_path = tmp.path().join("bench.json");
    let out = distil(&[
        "bench",
        "--model",
        teacher.to_str().unwrap(),
        "--model",
        student.to_str().unwrap(),
        "--texts",
        texts.to_str().unwrap(),
        "--repeats",
        "1",
        "--threads",
        "1",
        "--out",
        result_path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("b1 speed-up") && stdout.contains("1.00x"), "{stdout}");

    let result: BenchResult = read_json(&result_path).unwrap();
    assert_eq!((result.sentences, result.repeats, result.threads), (3, 1, 1));
    assert_eq!(result.models.len(), 2);
    for (m, dir) in result.models.iter().zip([&teacher, &student]) {
        assert_eq!(m.model, dir.display().to_string());
        let [total, embeddings, encoder, head] = inspected_parameters(dir);
        let p = m.parameters;
        assert_eq!([p.total, p.embeddings, p.encoder, p.head], [total, embeddings, encoder, head]);
        assert!(p.total > 0 && p.encoder > 0);
        assert_eq!(m.batch1_pass_s.runs.len(), 1);
        assert!(m.batch1_pass_s.median() > 0.0 && m.batch1_sentence_ms > 0.0);
        assert!(m.batch32_pass_s.median() > 0.0);
        assert!(m.batch32_sentences_per_s > 0.0 && m.batch32_tokens_per_s > m.batch32_sentences_per_s);
    }
}

#[test]
fn bench_rejects_bad_input_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    model_with_vocab(&fixture("models/bert_tied"), &model);
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "\n   \n\n").unwrap();
    let texts = tmp.path().join("texts.txt");
    std::fs::write(&texts, "the time\n").unwrap();
    let m = model.to_str().unwrap();

    let out = distil(&["bench", "--model", m, "--texts", empty.to_str().unwrap(), "--repeats", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("empty.txt") && err.contains("no sentences"), "{err}");

    let missing = tmp.path().join("nowhere");
    let out = distil(&["bench", "--model", missing.to_str().unwrap(), "--texts", texts.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nowhere") && err.contains("does not exist"), "{err}");

    let out = distil(&["bench", "--model", m, "--texts", tmp.path().join("no.txt").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no.txt"));

    // A model folder without a tokenizer.
    let out = distil(&[
        "bench",
        "--model",
        fixture("models/bert_tied").to_str().unwrap(),
        "--texts",
        texts.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokenizer"));
}
