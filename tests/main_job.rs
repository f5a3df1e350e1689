//! The README's main job (`scripts/main_job.sh`), shortened to a tiny budget: every stage runs
//! on the real teacher, real text and the real sentiment data, and leaves the output the next
//! stage and the report need. A second run reuses everything.

mod common;

use std::path::Path;
use std::process::Command;

use candle_core::Device;
use common::{asset, distil_bin, fixture, root};
use distil::distill::teacher_head::FitReport;
use distil::eval::results::{read_json, BenchResult, ClassifyResult, MlmResult};
use distil::model::encoder::init_weights;
use distil::model::{checkpoint, ModelConfig};
use distil::rng::Rng;
use distil::train::config::RunConfig;
use distil::train::metrics::{MetricsLog, Record};

/// Runs the main job script with a tiny budget into `runs`; returns its standard output.
fn main_job(runs: &Path, extra: &[(&str, &str)]) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/main_job.sh"))
        .env("DISTIL_BIN", distil_bin())
        .env("DISTIL_RUNS", runs)
        .env("DISTIL_TEXT", fixture("text/sample.txt"))
        .env("DISTIL_CORPUS", runs.join("corpus"))
        .env("DISTIL_CORPUS_OPTIONS", "--heldout 0.15 --max-len 64")
        .env("DISTIL_STEPS", "3")
        .env("DISTIL_BATCH_TOKENS", "512")
        .env("DISTIL_FIT_ROWS", "800")
        .env("DISTIL_PROBE_SEEDS", "2")
        .env("DISTIL_FINETUNE_SEEDS", "1")
        .env("DISTIL_FINETUNE_EPOCHS", "1")
        .env("DISTIL_BENCH_REPEATS", "1")
        .env("DISTIL_CLASSIFY_LIMIT", "48");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "main job failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn last_step_logged(run: &Path) -> u64 {
    MetricsLog::read(run)
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            Record::Step(s) => Some(s.step),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn main_job_runs_every_stage_and_reuses_them() {
    let _ = asset("all-MiniLM-L6-v2");
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let stdout = main_job(&runs, &[]);

    // Corpus, teacher head, student.
    assert!(runs.join("corpus/manifest.json").is_file());
    let fit: FitReport =
        serde_json::from_str(&std::fs::read_to_string(runs.join("teacher/fit-head.json")).unwrap()).unwrap();
    assert!(fit.best().heldout_top1 > fit.prior_top1, "{fit:?}");
    let student = ModelConfig::from_dir(&runs.join("student-init")).unwrap();
    assert_eq!(student.num_layers, 3, "half of the teacher's 6 layers");

    // The main run and the three comparisons, each at the same budget.
    for (name, alphas) in [
        ("distil", (5.0, 2.0, 1.0)),
        ("random-init", (5.0, 2.0, 1.0)),
        ("kl-only", (5.0, 0.0, 0.0)),
        ("mlm-only", (0.0, 2.0, 0.0)),
    ] {
        let run = runs.join(name);
        assert!(run.join("student/model.safetensors").is_file(), "{name} has no exported student");
        assert_eq!(last_step_logged(&run), 3, "{name}");
        let config = RunConfig::load(&run.join("run.toml"), &[]).unwrap();
        assert_eq!((config.loss.alpha_ce, config.loss.alpha_mlm, config.loss.alpha_cos), alphas, "{name}");
        assert!(config.loss.restrict_ce_to_mask);
        let mlm: MlmResult = read_json(&run.join("eval/student-mlm.json")).unwrap();
        assert!(mlm.agreement.is_some() && mlm.targets > 0, "{name}: {mlm:?}");
        let probe: ClassifyResult = read_json(&run.join("eval/student-probe.json")).unwrap();
        assert_eq!((probe.mode.as_str(), probe.train_size, probe.test_size), ("probe", 48, 48));
    }
    let eval = runs.join("distil/eval");
    let teacher_mlm: MlmResult = read_json(&eval.join("teacher-mlm.json")).unwrap();
    assert!(teacher_mlm.agreement.is_none());
    assert!(
        (teacher_mlm.top1 - fit.best().heldout_top1).abs() < 1e-12,
        "eval mlm scores the fitted head as fit-head did"
    );
    for role in ["teacher", "student"] {
        let ft: ClassifyResult = read_json(&eval.join(format!("{role}-finetune.json"))).unwrap();
        assert_eq!(ft.mode, "finetune");
        assert!((0.0..=1.0).contains(&ft.accuracy.mean));
    }
    let bench: BenchResult = read_json(&eval.join("bench.json")).unwrap();
    assert_eq!((bench.models.len(), bench.sentences), (2, 48));
    assert!(bench.models[1].parameters.encoder * 2 == bench.models[0].parameters.encoder, "3 of 6 equal layers");

    // The report, with the comparisons.
    let report = std::fs::read_to_string(runs.join("distil/report/report.md")).unwrap();
    for needle in ["random init", "KL alone", "MLM alone", "sentiment accuracy, linear probe", "faster"] {
        assert!(report.contains(needle), "report lacks {needle:?}:\n{report}");
    }
    let table = &report[report.find("## Teacher vs student").unwrap()..report.find("## Run").unwrap()];
    assert!(!table.contains("not measured"), "every teacher/student cell is measured:\n{table}");
    for png in ["loss.png", "lr.png", "heldout.png"] {
        assert!(runs.join("distil/report").join(png).is_file());
    }
    assert!(stdout.contains("report: "));

    // A second run reuses every stage.
    let again = main_job(&runs, &[]);
    for stage in ["corpus", "teacher", "student-init", "distil", "random-init", "kl-only", "mlm-only"] {
        assert!(again.contains(&format!("reusing {}", runs.join(stage).display())), "{stage} not reused:\n{again}");
    }
    assert!(!again.contains("finished"), "no training step runs again:\n{again}");
}

#[test]
fn main_job_takes_a_teacher_that_has_its_own_head() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    // A tiny BERT with an MLM head over MiniLM's vocabulary and tokenizer.
    let teacher = tmp.path().join("teacher");
    std::fs::create_dir_all(&teacher).unwrap();
    let config = serde_json::json!({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 4,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1
    });
    std::fs::write(teacher.join("config.json"), config.to_string()).unwrap();
    let config = ModelConfig::from_dir(&teacher).unwrap();
    let weights = init_weights(&config, true, 0.05, &mut Rng::new(3), &Device::Cpu).unwrap();
    checkpoint::save(&teacher, &config, &weights, Some(&asset("all-MiniLM-L6-v2"))).unwrap();

    main_job(&runs, &[("DISTIL_TEACHER", teacher.to_str().unwrap()), ("DISTIL_COMPARISONS", "0")]);
    assert!(!runs.join("teacher").exists(), "no head is fitted for a teacher that has one");
    assert_eq!(ModelConfig::from_dir(&runs.join("student-init")).unwrap().num_layers, 2);
    assert!(runs.join("distil/student/model.safetensors").is_file());
    let report = std::fs::read_to_string(runs.join("distil/report/report.md")).unwrap();
    assert!(report.contains("faster") && !report.contains("random init"), "{report}");
}
