//! Training runs on real text: pretraining a small teacher with MLM alone, distilling a
//! student from it, and a stopped-and-resumed run ending exactly where an unbroken run ends.

mod common;
mod train_support;

use std::path::Path;

use candle_core::Device;
use common::{asset, distil_bin};
use distil::distill::student::{init_student, StudentArch};
use distil::model::encoder::init_weights;
use distil::model::{checkpoint, Checkpoint, ModelConfig};
use distil::rng::Rng;
use distil::train::config::{ComputeConfig, Precision};
use distil::train::run::{train, TrainOptions};
use train_support::*;

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn pretrain_a_teacher_then_distil_a_student_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let corpus = build_corpus(root);
    let device = Device::Cpu;

    // Pretraining: MLM loss alone, from random weights; the loss falls.
    let mut pretrain = run_config(None, &tiny_config(&root.join("tiny")), &corpus, &root.join("pretrain"), 80, 1e-2);
    pretrain.batch.sequences = 16;
    let outcome = train(&pretrain, &TrainOptions::default()).unwrap();
    let teacher_dir = outcome.exported.expect("a finished run exports the model");
    let log = steps(&root.join("pretrain"));
    assert_eq!(log.len(), 80);
    let (early, late) = (mean(log[..10].iter().map(|s| s.loss.mlm)), mean(log[70..].iter().map(|s| s.loss.mlm)));
    assert!(late < early - 0.5, "pretraining MLM loss did not fall: {early:.3} -> {late:.3}");
    assert!(log.iter().all(|s| s.loss.ce == 0.0 && s.loss.cos == 0.0), "pretraining has no teacher terms");
    let teacher = Checkpoint::load(&teacher_dir, &device).unwrap();
    assert!(teacher.has_head);

    // Students: one initialised from teacher layer 1, one at random with the same config.
    let init = init_student(&teacher, &[1], StudentArch::Same).unwrap();
    let from_teacher = root.join("student-init");
    checkpoint::save(&from_teacher, &init.config, &init.weights, Some(&teacher_dir)).unwrap();
    let random = root.join("student-random");
    let weights = init_weights(&init.config, true, 0.05, &mut Rng::new(9), &device).unwrap();
    checkpoint::save(&random, &init.config, &weights, Some(&teacher_dir)).unwrap();

    let distil = |student: &Path, name: &str| {
        let cfg = run_config(Some(&teacher_dir), student, &corpus, &root.join(name), 30, 1e-3);
        train(&cfg, &TrainOptions::default()).unwrap();
        steps(&root.join(name))
    };
    let informed = distil(&from_teacher, "distil-init");
    let blind = distil(&random, "distil-random");
    assert!(
        informed[0].loss.ce * 3.0 < blind[0].loss.ce,
        "a teacher-initialised student should start far closer to the teacher: KL term {} vs {} at random",
        informed[0].loss.ce,
        blind[0].loss.ce
    );
    // From random weights the student has everything to learn: its loss must fall.
    let (first, last) = (mean(blind[..5].iter().map(|s| s.loss.total)), mean(blind[25..].iter().map(|s| s.loss.total)));
    assert!(last < first - 0.5, "distillation loss did not fall: {first:.4} -> {last:.4}");
    let (first, last) = (mean(blind[..5].iter().map(|s| s.loss.ce)), mean(blind[25..].iter().map(|s| s.loss.ce)));
    assert!(last < first, "the KL to the teacher did not fall: {first:.4} -> {last:.4}");
    for s in &informed {
        assert!(s.loss.total.is_finite() && s.grad_norm.is_finite() && s.lr > 0.0, "{s:?}");
    }
    // The exported student is a plain checkpoint that loads strictly, with its tokenizer.
    let exported = Checkpoint::load(&root.join("distil-init/student"), &device).unwrap();
    assert_eq!(exported.config.num_layers, 1);
    assert!(root.join("distil-init/student/tokenizer.json").is_file());
    assert!(root.join("distil-init/run.toml").is_file());
}

#[test]
fn a_stopped_and_resumed_run_equals_an_unbroken_one() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let corpus = build_corpus(root);
    let device = Device::Cpu;
    // A small teacher with a head (random weights are enough for exactness) and a student
    // with dropout on, so that the generators' state matters too.
    let config_dir = random_teacher(&root.join("teacher"), 0.1);
    let teacher = Checkpoint::load(&config_dir, &device).unwrap();
    let init = init_student(&teacher, &[0], StudentArch::Same).unwrap();
    let student = root.join("student");
    checkpoint::save(&student, &init.config, &init.weights, Some(&config_dir)).unwrap();

    let unbroken = run_config(Some(&config_dir), &student, &corpus, &root.join("unbroken"), 8, 1e-3);
    train(&unbroken, &TrainOptions::default()).unwrap();
    let broken = run_config(Some(&config_dir), &student, &corpus, &root.join("broken"), 8, 1e-3);
    let stopped = train(&broken, &TrainOptions { stop_after: Some(4), ..Default::default() }).unwrap();
    assert_eq!(stopped.step, 4);
    assert!(stopped.exported.is_none());
    train(&broken, &TrainOptions { resume: true, ..Default::default() }).unwrap();

    let (a, b) = (steps(&root.join("unbroken")), steps(&root.join("broken")));
    assert_eq!(a.len(), 8);
    assert_eq!(b.len(), 8, "the resumed run's metrics hold each step once");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.step, x.epoch, x.loss, x.lr, x.grad_norm), (y.step, y.epoch, y.loss, y.lr, y.grad_norm));
    }
    let (wa, wb) = (
        Checkpoint::load(&root.join("unbroken/student"), &device).unwrap(),
        Checkpoint::load(&root.join("broken/student"), &device).unwrap(),
    );
    for (name, t) in &wa.weights {
        let diff = common::max_abs_diff(t, &wb.weights[name]);
        assert_eq!(diff, 0.0, "tensor {name} differs after resuming");
    }
}

#[test]
fn frozen_layers_keep_their_weights_while_the_top_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let corpus = build_corpus(root);
    let model = random_teacher(&root.join("model"), 0.0);
    let out = root.join("run");
    let mut config = run_config(None, &model, &corpus, &out, 3, 1e-3);
    config.optim.frozen_layers = 1;
    train(&config, &TrainOptions::default()).unwrap();
    let before = Checkpoint::load(&model, &Device::Cpu).unwrap().weights;
    let after = Checkpoint::load(&out.join("student"), &Device::Cpu).unwrap().weights;
    for (name, b) in &before {
        let a = &after[name];
        let same = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() == 0.0;
        let frozen = name.starts_with("embeddings.") || name.starts_with("layers.0.");
        // LayerNorm biases of the top may legitimately stay put only if their gradient is zero; they are not.
        assert_eq!(same, frozen, "{name}: frozen {frozen}, unchanged {same}");
    }
    let mut too_many = run_config(None, &model, &corpus, &root.join("run2"), 1, 1e-3);
    too_many.optim.frozen_layers = 3;
    let err = train(&too_many, &TrainOptions::default()).unwrap_err();
    assert!(format!("{err:#}").contains("frozen_layers"), "{err:#}");
}

/// Runs distil and expects a one-line error containing each of `words`.
fn fails_with(args: &[&str], words: &[&str]) {
    let out = std::process::Command::new(distil_bin()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "distil {args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for w in words {
        assert!(stderr.contains(w), "distil {args:?}: error lacks `{w}`: {stderr}");
    }
}

#[test]
fn bad_runs_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let corpus = build_corpus(root);
    let device = Device::Cpu;
    let config_dir = random_teacher(&root.join("teacher"), 0.0);
    let config = ModelConfig::from_dir(&config_dir).unwrap();
    let p = |x: &Path| x.display().to_string();

    fails_with(
        &["student", "init", "--teacher", &p(&config_dir), "--layers", "0,5", "--out", &p(&root.join("s"))],
        &["layer 5", "0..=1"],
    );
    let write = |name: &str, body: String| {
        let path = root.join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let base = format!("teacher = {:?}\nstudent = {:?}\ncorpus = {:?}\n", p(&config_dir), p(&config_dir), p(&corpus));
    let typo = write("typo.toml", format!("{base}out = {:?}\n[loss]\ntemprature = 3.0\n", p(&root.join("r1"))));
    fails_with(&["train", "--config", &p(&typo)], &["loss.temprature", "did you mean `loss.temperature`"]);

    // A student of another width, and a student with another tokenizer.
    let wide = root.join("wide");
    let mut wide_config = config.clone();
    wide_config.hidden_size = 48;
    wide_config.intermediate_size = 64;
    wide_config.num_heads = 2;
    let w = init_weights(&wide_config, true, 0.05, &mut Rng::new(2), &device).unwrap();
    checkpoint::save(&wide, &wide_config, &w, Some(&config_dir)).unwrap();
    let cfg = write(
        "wide.toml",
        format!(
            "teacher = {:?}\nstudent = {:?}\ncorpus = {:?}\nout = {:?}\n",
            p(&config_dir),
            p(&wide),
            p(&corpus),
            p(&root.join("r2"))
        ),
    );
    fails_with(&["train", "--config", &p(&cfg)], &["48 wide", "32"]);
    let other_tok = asset("antiberty");
    let cfg = write(
        "tok.toml",
        format!("student = {:?}\ncorpus = {:?}\nout = {:?}\n", p(&other_tok), p(&corpus), p(&root.join("r3"))),
    );
    fails_with(&["train", "--config", &p(&cfg)], &["tokenizer"]);

    // A run folder that exists, and a resume with another config.
    let good =
        write("good.toml", format!("{base}out = {:?}\n[run]\nsteps = 1\neval_batches = 0\n", p(&root.join("run"))));
    let ok = std::process::Command::new(distil_bin()).args(["train", "--config", &p(&good)]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    fails_with(&["train", "--config", &p(&good)], &["already exists", "--resume"]);
    fails_with(&["train", "--config", &p(&good), "--device", "gpu"], &["--device", "cuda:N"]);
    if cfg!(not(feature = "cuda")) {
        fails_with(&["train", "--config", &p(&good), "--device", "cuda"], &["built without CUDA", "--features cuda"]);
    }
    fails_with(
        &["train", "--config", &p(&good), "--set", "loss.temperature=3", "--resume", &p(&root.join("run"))],
        &["another config"],
    );
}

#[test]
fn half_precision_runs_follow_the_float32_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let corpus = build_corpus(root);
    let teacher_dir = random_teacher(&root.join("teacher"), 0.0);
    let teacher = Checkpoint::load(&teacher_dir, &Device::Cpu).unwrap();
    let init = init_student(&teacher, &[0], StudentArch::Same).unwrap();
    let student = root.join("student");
    checkpoint::save(&student, &init.config, &init.weights, Some(&teacher_dir)).unwrap();
    let run = |name: &str, dtype: Precision, teacher_dtype: Precision| {
        let mut config = run_config(Some(&teacher_dir), &student, &corpus, &root.join(name), 6, 1e-3);
        config.compute = ComputeConfig { dtype, teacher_dtype };
        train(&config, &TrainOptions::default()).unwrap();
        steps(&root.join(name))
    };
    let full = run("f32", Precision::F32, Precision::F32);
    for (name, dtype, teacher_dtype) in
        [("bf16", Precision::Bf16, Precision::Bf16), ("f16", Precision::F16, Precision::F32)]
    {
        let half = run(name, dtype, teacher_dtype);
        assert_eq!(half.len(), full.len());
        assert_ne!(half[0].loss.total, full[0].loss.total, "{name} computed exactly what float32 did");
        // The first step starts from the same weights: only rounding differs. Later steps
        // drift apart a little, as they would in any framework. The KL term is small (the
        // student starts as a copy of the teacher's layer), so it is compared to 0.1.
        for (i, (h, f)) in half.iter().zip(&full).enumerate() {
            let tolerance = if i == 0 { 2e-3 } else { 1e-2 };
            for (what, a, b) in [("total", h.loss.total, f.loss.total), ("ce", h.loss.ce, f.loss.ce)] {
                assert!((a - b).abs() <= tolerance * b.abs().max(0.1), "{name} step {}: {what} {a} vs {b}", h.step);
            }
            assert!(h.grad_norm.is_finite() && h.skipped == 0, "{name}: {h:?}");
        }
        // The exported student is float32: master weights never leave it.
        let exported = Checkpoint::load(&root.join(name).join("student"), &Device::Cpu).unwrap();
        assert!(exported.weights.values().all(|t| t.dtype() == candle_core::DType::F32));
    }
}
