//! `teacher fit-head` on the real all-MiniLM-L6-v2 encoder and real text, and `eval mlm`:
//! the fitted head beats the unigram prior, the result is an ordinary masked-LM checkpoint,
//! and `eval mlm` scores it exactly as fit-head's held-out evaluation did.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use common::{asset, distil_bin, fixture};
use distil::corpus::build::{build, BuildOptions};
use distil::distill::teacher_head::{fit_head, FitHeadOptions};
use distil::eval::mlm::{evaluate, HeldoutOptions};
use distil::model::Checkpoint;

fn build_corpus(root: &Path) -> PathBuf {
    let out = root.join("corpus");
    let mut options = BuildOptions::new(asset("all-MiniLM-L6-v2"), vec![fixture("text/sample.txt")], out.clone());
    options.max_len = Some(64);
    options.heldout = 0.15;
    build(&options).unwrap();
    out
}

#[test]
fn fitted_head_beats_the_prior_and_eval_mlm_agrees_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = build_corpus(tmp.path());
    let out = tmp.path().join("teacher");
    let options = FitHeadOptions { rows: 1500, batch_rows: 128, max_epochs: 4, ..FitHeadOptions::default() };
    let report = fit_head(&asset("all-MiniLM-L6-v2"), &corpus, &out, &options).unwrap();
    assert!(report.train_rows >= 1500 && report.heldout_rows > 100, "{report:?}");
    let best = report.best();
    assert!(
        best.heldout_top1 > report.prior_top1 + 0.02,
        "the head must beat predicting the unigram prior: {:.3} vs {:.3}",
        best.heldout_top1,
        report.prior_top1
    );
    assert!(report.epochs[0].train_loss > report.epochs.last().unwrap().train_loss, "training loss must fall");

    // An ordinary masked-LM checkpoint: strict load finds the head, decoder tied.
    let saved = Checkpoint::load(&out, &Device::Cpu).unwrap();
    assert!(saved.has_head && saved.config.tie_word_embeddings);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForMaskedLM");
    assert!(out.join("tokenizer.json").is_file() && out.join("fit-head.json").is_file());

    // eval mlm draws the same held-out targets with the same defaults: the same accuracy.
    let result = evaluate(&out, &corpus, None, &HeldoutOptions::default()).unwrap();
    assert_eq!(result.targets, report.heldout_rows);
    assert!((result.top1 - best.heldout_top1).abs() < 1e-12, "{} vs {}", result.top1, best.heldout_top1);
    assert!((result.loss - best.heldout_loss).abs() < 1e-6, "{} vs {}", result.loss, best.heldout_loss);
    assert!(result.top5 >= result.top1 && (result.perplexity - result.loss.exp()).abs() < 1e-9);

    // A model agrees perfectly with itself.
    let same = evaluate(&out, &corpus, Some(&out), &HeldoutOptions::default()).unwrap();
    let a = same.agreement.unwrap();
    assert_eq!(a.top1_match, 1.0);
    assert!(a.kl.abs() < 1e-6 && (a.hidden_cosine - 1.0).abs() < 1e-5, "{a:?}");

    // The command line writes the same result as JSON.
    let json = tmp.path().join("mlm.json");
    let status = Command::new(distil_bin())
        .args(["eval", "mlm", "--model"])
        .arg(&out)
        .arg("--corpus")
        .arg(&corpus)
        .arg("--out")
        .arg(&json)
        .status()
        .unwrap();
    assert!(status.success());
    let written: distil::eval::results::MlmResult = distil::eval::results::read_json(&json).unwrap();
    assert_eq!(written.top1, result.top1);
}

#[test]
fn fit_head_and_eval_mlm_refuse_the_wrong_model() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = build_corpus(tmp.path());
    let run = |args: &[&str]| {
        let out = Command::new(distil_bin()).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let c = corpus.to_str().unwrap();
    let antiberty = asset("antiberty");
    let err = run(&["teacher", "fit-head", "--teacher", antiberty.to_str().unwrap(), "--corpus", c, "--out", "/tmp/x"]);
    assert!(err.contains("already has an MLM head"), "{err}");
    let minilm = asset("all-MiniLM-L6-v2");
    let err = run(&["eval", "mlm", "--model", minilm.to_str().unwrap(), "--corpus", c]);
    assert!(err.contains("has no MLM head") && err.contains("fit-head"), "{err}");
    let err = run(&["eval", "mlm", "--model", antiberty.to_str().unwrap(), "--corpus", "/nonexistent/corpus"]);
    assert!(err.contains("/nonexistent/corpus"), "{err}");
}
