//! Bad input gets one clear line naming the file, field or tensor and what was expected, and
//! a non-zero exit; never a panic.

mod common;

use std::path::Path;
use std::process::Command;

use common::{asset, distil_bin, fixture};

/// Runs distil, expects failure, and returns its standard error.
fn fails(args: &[&str]) -> String {
    let out = Command::new(distil_bin()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "distil {args:?} succeeded; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "distil {args:?} panicked: {stderr}");
    assert!(stderr.starts_with("error: "), "distil {args:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "distil {args:?}: expected one line, got {stderr}");
    stderr
}

fn assert_mentions(stderr: &str, words: &[&str]) {
    for w in words {
        assert!(stderr.contains(w), "error message lacks `{w}`: {stderr}");
    }
}

/// A copy of a fixture model whose config.json is edited by `edit`.
fn edited_model(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = fixture(&format!("models/{name}"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn missing_directory_or_config() {
    let e = fails(&["inspect", "/nonexistent/model"]);
    assert_mentions(&e, &["/nonexistent/model", "does not exist"]);
    let empty = tempfile::tempdir().unwrap();
    let e = fails(&["inspect", p(empty.path())]);
    assert_mentions(&e, &["config.json"]);
}

#[test]
fn malformed_config_and_unknown_model_type() {
    let dir = edited_model("bert_tied", |_| {});
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert_mentions(&fails(&["inspect", p(dir.path())]), &["config.json", "not valid JSON"]);

    let dir = edited_model("bert_tied", |c| c["model_type"] = "gpt2".into());
    assert_mentions(&fails(&["inspect", p(dir.path())]), &["model_type", "gpt2", "bert"]);

    let dir = edited_model("bert_tied", |c| c["hidden_size"] = "wide".into());
    assert_mentions(&fails(&["inspect", p(dir.path())]), &["hidden_size", "integer"]);
}

#[test]
fn wrong_shape_missing_and_unexpected_tensors() {
    let dir = edited_model("bert_tied", |c| c["intermediate_size"] = 40.into());
    assert_mentions(&fails(&["inspect", p(dir.path())]), &["intermediate.dense.weight", "[37, 45]", "[40, 45]"]);

    let dir = edited_model("bert_tied", |c| c["num_hidden_layers"] = 3.into());
    assert_mentions(
        &fails(&["inspect", p(dir.path())]),
        &["lacks", "bert.encoder.layer.2.attention.self.query.weight"],
    );

    let dir = edited_model("bert_tied", |c| c["num_hidden_layers"] = 1.into());
    assert_mentions(&fails(&["inspect", p(dir.path())]), &["does not have", "bert.encoder.layer.1."]);
}

#[test]
fn corrupt_weight_file() {
    let dir = edited_model("bert_tied", |_| {});
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    assert_mentions(&fails(&["inspect", p(dir.path())]), &["model.safetensors"]);
}

#[test]
fn fill_mask_without_a_mask_or_a_head() {
    let antiberty = asset("antiberty");
    assert_mentions(&fails(&["fill-mask", "--model", p(&antiberty), "E V Q L V E S"]), &["no mask token", "[MASK]"]);
    let minilm = asset("all-MiniLM-L6-v2");
    assert_mentions(&fails(&["fill-mask", "--model", p(&minilm), "a [MASK] day"]), &["no MLM head"]);
}

#[test]
fn forward_rejects_ids_outside_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("batch.json");
    std::fs::write(&input, r#"{"input_ids": [[2, 500, 3]], "attention_mask": [[1, 1, 1]]}"#).unwrap();
    let out = dir.path().join("out.safetensors");
    let model = fixture("models/bert_tied");
    let e = fails(&["forward", "--model", p(&model), "--input", p(&input), "--out", p(&out)]);
    assert_mentions(&e, &["input_ids", "500", "vocabulary of 99"]);
    assert!(!out.exists(), "a failed forward left an output file");

    std::fs::write(&input, r#"{"input_ids": [[2, 5, 3]], "attention_mask": [[1, 1]]}"#).unwrap();
    assert_mentions(
        &fails(&["forward", "--model", p(&model), "--input", p(&input), "--out", p(&out)]),
        &["attention_mask", "row 0"],
    );
}
