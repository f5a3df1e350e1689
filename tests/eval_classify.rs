//! `distil eval classify`: labelled data (CSV, JSON lines, the Rotten Tomatoes snippets), the
//! linear probe, fine-tuning with each family's head, and saved classifiers.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use common::{distil_bin, fixture, root};
use distil::eval::classify::{
    accuracy_of, classify, encode_texts, finetune, head_key, macro_f1, Classifier, ClassifyOptions, Mode,
};
use distil::eval::data::{self, Columns, Dataset, Example};
use distil::eval::results::{read_json, ClassifyResult};
use distil::model::{Checkpoint, Family, TextTokenizer};
use distil::rng::Rng;

const WORDS: [&str; 12] = ["the", "a", "film", "movie", "plot", "actors", "story", "it", "was", "is", "very", "quite"];
const POSITIVE: [&str; 3] = ["good", "great", "fine"];
const NEGATIVE: [&str; 3] = ["bad", "awful", "poor"];

/// A fixture checkpoint with a small WordPiece vocabulary of whole words, its `[PAD]` at the
/// config's pad id, copied into `dir`.
fn tiny_model(name: &str, dir: &Path) -> PathBuf {
    let src = fixture(&format!("models/{name}"));
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let pad = config["pad_token_id"].as_u64().unwrap() as usize;
    let mut vocab: Vec<&str> = vec!["[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    vocab.insert(pad, "[PAD]");
    vocab.extend(WORDS.iter().chain(&POSITIVE).chain(&NEGATIVE));
    std::fs::write(out.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    out
}

/// A few filler words and three sentiment words: trivially separable.
fn separable(n: usize, seed: u64) -> Vec<Example> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let label = i % 2;
            let cue = if label == 1 { &POSITIVE } else { &NEGATIVE };
            let len = 1 + rng.below(3) as usize;
            let mut words: Vec<&str> = (0..len).map(|_| WORDS[rng.below(WORDS.len() as u64) as usize]).collect();
            for _ in 0..3 {
                let at = rng.below(words.len() as u64 + 1) as usize;
                words.insert(at, cue[rng.below(3) as usize]);
            }
            Example { text: words.join(" "), label }
        })
        .collect()
}

fn dataset(train: usize, test: usize) -> Dataset {
    Dataset {
        name: "synthetic".into(),
        classes: vec!["neg".into(), "pos".into()],
        train: separable(train, 1),
        test: separable(test, 2),
    }
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn error_of(result: anyhow::Result<Dataset>) -> String {
    format!("{:#}", result.expect_err("expected an error"))
}

#[test]
fn csv_with_quotes_and_jsonl_give_the_same_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(
        dir.path(),
        "train.csv",
        "id,label,text\n1,pos,\"good, very \"\"good\"\"\"\n2,neg,\"bad\nand worse\"\n3,neutral,plain\n",
    );
    let jsonl = write(
        dir.path(),
        "test.jsonl",
        "{\"text\": \"good, very \\\"good\\\"\", \"label\": \"pos\"}\n\n{\"label\": \"neg\", \"text\": \"bad\\nand worse\"}\n",
    );
    let d = data::from_files(&csv, &jsonl, &Columns::default()).unwrap();
    assert_eq!(d.classes, ["neg", "neutral", "pos"]);
    let texts: Vec<(&str, usize)> = d.train.iter().map(|e| (e.text.as_str(), e.label)).collect();
    assert_eq!(texts, [("good, very \"good\"", 2), ("bad\nand worse", 0), ("plain", 1)]);
    assert_eq!(d.test.len(), 2);
    assert_eq!((d.test[0].text.as_str(), d.test[0].label), ("good, very \"good\"", 2));
    assert_eq!((d.test[1].text.as_str(), d.test[1].label), ("bad\nand worse", 0));

    // Other column names, and numeric labels in JSON lines.
    let a = write(dir.path(), "a.jsonl", "{\"sentence\": \"x\", \"y\": 1}\n{\"sentence\": \"z\", \"y\": 0}\n");
    let cols = Columns { text: "sentence".into(), label: "y".into() };
    let d = data::from_files(&a, &a, &cols).unwrap();
    assert_eq!(d.classes, ["0", "1"]);
    assert_eq!(d.train[0].label, 1);
}

#[test]
fn bad_inputs_name_the_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let cols = Columns::default();
    let good = write(dir.path(), "good.csv", "text,label\na,x\nb,y\n");
    let check = |train: &Path, test: &Path, cols: &Columns, needles: &[&str]| {
        let msg = error_of(data::from_files(train, test, cols));
        for n in needles {
            assert!(msg.contains(n), "`{msg}` should mention `{n}`");
        }
    };
    let missing = dir.path().join("nope.csv");
    check(&missing, &good, &cols, &["nope.csv", "does not exist"]);
    let empty = write(dir.path(), "empty.csv", "");
    check(&empty, &good, &cols, &["empty.csv", "empty"]);
    let header_only = write(dir.path(), "header.csv", "text,label\n");
    check(&header_only, &good, &cols, &["header.csv", "empty"]);
    let empty_jsonl = write(dir.path(), "empty.jsonl", "\n\n");
    check(&empty_jsonl, &good, &cols, &["empty.jsonl", "empty"]);
    let no_label = write(dir.path(), "nolabel.csv", "text,class\na,x\n");
    check(&no_label, &good, &cols, &["nolabel.csv", "line 1", "`label`", "`class`"]);
    let no_field = write(dir.path(), "nofield.jsonl", "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\"}\n");
    check(&no_field, &good, &cols, &["nofield.jsonl", "line 2", "`label`"]);
    let bad_json = write(dir.path(), "bad.jsonl", "{\"text\": \"a\", \"label\": \"x\"}\n{oops\n");
    check(&bad_json, &good, &cols, &["bad.jsonl", "line 2", "JSON"]);
    let one_class = write(dir.path(), "one.csv", "text,label\na,x\nb,x\n");
    check(&one_class, &good, &cols, &["one.csv", "one class", "`x`", "at least 2"]);
    let unseen = write(dir.path(), "unseen.csv", "text,label\na,x\nb,z\n");
    check(&good, &unseen, &cols, &["unseen.csv", "line 3", "`z`", "good.csv"]);
    let other = write(dir.path(), "data.txt", "text,label\n");
    check(&other, &good, &cols, &["data.txt", ".csv", ".jsonl"]);
    let ragged = write(dir.path(), "ragged.csv", "text,label\na,x\nb\n");
    check(&ragged, &good, &cols, &["ragged.csv"]);
}

#[test]
fn rt_sentiment_has_10605_snippets_split_by_id() {
    let dir = root().join(data::RT_DEFAULT_DIR);
    assert!(
        dir.join(data::RT_FILE).is_file(),
        "asset {} is missing: run `scripts/fetch_assets.sh` first",
        dir.display()
    );
    let snippets = data::read_rt_snippets(&dir).unwrap();
    assert_eq!(snippets.len(), 10_605);
    assert_eq!(snippets.iter().filter(|s| s.score == 0.0).count(), 37);
    assert!(snippets.iter().all(|s| !s.text.is_empty() && !s.text.ends_with('\r')));
    let d = data::rt_sentiment(&dir).unwrap();
    assert_eq!(d.classes, ["negative", "positive"]);
    assert_eq!((d.train.len(), d.test.len()), (8_457, 2_111));
    assert_eq!(d.test.iter().filter(|e| e.label == 1).count(), 1_052);
    assert_eq!(d.train.iter().filter(|e| e.label == 1).count(), 4_190);
    assert!(d.train[0].text.starts_with("The Rock is destined"));
    assert_eq!(d.train[0].label, 1);
    let missing = error_of(data::rt_sentiment(Path::new("/nonexistent/rt")));
    assert!(missing.contains("scripts/fetch_assets.sh"), "{missing}");
}

#[test]
fn metrics() {
    assert_eq!(accuracy_of(&[0, 1, 1, 0], &[0, 1, 0, 0]), 0.75);
    // Class 0: tp 2, fp 0, fn 1 → 0.8; class 1: tp 1, fp 1, fn 0 → 2/3.
    let f1 = macro_f1(&[0, 1, 1, 0], &[0, 1, 0, 0], 2);
    assert!((f1 - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    // A class absent from gold and predictions does not count.
    assert_eq!(macro_f1(&[0, 1], &[0, 1], 3), 1.0);
}

#[test]
fn probe_separates_a_trivial_task() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model("bert_encoder", dir.path());
    let options = ClassifyOptions { mode: Mode::Probe, seeds: vec![0, 1], progress: false, ..Default::default() };
    // A random tiny model's features: enough examples that the probe generalises.
    let result = classify(&model, &dataset(1000, 200), &options).unwrap();
    assert!(result.accuracy.mean >= 0.9, "{result:?}");
    assert!(result.macro_f1.mean >= 0.9, "{result:?}");
    assert_eq!((result.train_size, result.test_size, result.mode.as_str()), (1000, 200, "probe"));
    assert_eq!(result.accuracy.runs.len(), 2);
}

#[test]
fn finetune_learns_a_separable_task_and_saves_a_classifier_that_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model("bert_encoder", dir.path());
    let data = dataset(128, 64);
    let tokenizer = TextTokenizer::load(&model).unwrap();
    let ckpt = Checkpoint::load(&model, &Device::Cpu).unwrap();
    let encode = |ex: &[Example]| encode_texts(&tokenizer, ex.iter().map(|e| e.text.as_str()), 32).unwrap();
    let (train, test) = (encode(&data.train), encode(&data.test));
    let labels: Vec<usize> = data.train.iter().map(|e| e.label).collect();
    let gold: Vec<usize> = data.test.iter().map(|e| e.label).collect();
    let pad = tokenizer.special.pad;

    let untrained = Classifier::from_pretrained(&ckpt, &data.classes, 0).unwrap();
    let before = accuracy_of(&untrained.predict_encoded(&test, pad, 32).unwrap(), &gold);
    let options = ClassifyOptions { epochs: 5, lr: 2e-3, batch_size: 16, progress: false, ..Default::default() };
    let trained = finetune(&ckpt, &data.classes, &train, &labels, pad, &options, 0, "test").unwrap();
    let predicted = trained.predict_encoded(&test, pad, 32).unwrap();
    let after = accuracy_of(&predicted, &gold);
    assert!(after >= 0.9 && after > before, "accuracy {before} before, {after} after 24 steps");

    // Saved as BertForSequenceClassification: it reloads with the same predictions.
    let saved = dir.path().join("classifier");
    trained.save(&saved, Some(&model)).unwrap();
    let reloaded = Classifier::load(&saved).unwrap();
    assert_eq!(reloaded.classes, data.classes);
    assert_eq!(reloaded.predict_encoded(&test, pad, 7).unwrap(), predicted);
    let texts: Vec<String> = data.test.iter().map(|e| e.text.clone()).collect();
    let reloaded_tokenizer = TextTokenizer::load(&saved).unwrap();
    assert_eq!(reloaded.predict(&reloaded_tokenizer, &texts, 32).unwrap(), predicted);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["num_labels"], 2);
    assert_eq!(config["id2label"]["1"], "pos");
    assert_eq!(config["label2id"]["neg"], 0);
}

/// The key names transformers' `*ForSequenceClassification` expects, per family.
#[test]
fn saved_classifiers_carry_the_hf_key_names_of_each_family() {
    let dir = tempfile::tempdir().unwrap();
    let classes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let cases: [(&str, Family, &[&str], &str); 3] = [
        (
            "bert_encoder",
            Family::Bert,
            &["bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"],
            "bert.encoder.layer.1.output.LayerNorm.weight",
        ),
        (
            "roberta",
            Family::Roberta,
            &[
                "classifier.dense.weight",
                "classifier.dense.bias",
                "classifier.out_proj.weight",
                "classifier.out_proj.bias",
            ],
            "roberta.encoder.layer.0.attention.self.query.weight",
        ),
        (
            "distilbert",
            Family::DistilBert,
            &["pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"],
            "distilbert.transformer.layer.0.attention.q_lin.weight",
        ),
    ];
    let texts: Vec<String> = separable(20, 3).into_iter().map(|e| e.text).collect();
    for (name, family, head, encoder_key) in cases {
        let model = tiny_model(name, dir.path());
        let ckpt = Checkpoint::load(&model, &Device::Cpu).unwrap();
        let classifier = Classifier::from_pretrained(&ckpt, &classes, 5).unwrap();
        let saved = dir.path().join(format!("{name}-classifier"));
        classifier.save(&saved, Some(&model)).unwrap();
        let tensors = candle_core::safetensors::load(saved.join("model.safetensors"), &Device::Cpu).unwrap();
        for key in head {
            assert!(tensors.contains_key(*key), "{name}: no `{key}` in {:?}", tensors.keys());
        }
        let head_keys: Vec<String> = ["dense.weight", "dense.bias", "out.weight", "out.bias"]
            .map(|p| head_key(family, &format!("classifier.{p}")))
            .to_vec();
        assert_eq!(head_keys, head.iter().map(|k| k.to_string()).collect::<Vec<_>>());
        assert!(tensors.contains_key(encoder_key), "{name}: no `{encoder_key}`");
        let prefix = format!("{}.", family.model_type());
        assert!(tensors.keys().all(|k| k.starts_with(&prefix) || head.contains(&k.as_str())), "{:?}", tensors.keys());
        assert_eq!(tensors[head[3]].dims(), [3]);
        let reloaded = Classifier::load(&saved).unwrap();
        let tokenizer = TextTokenizer::load(&saved).unwrap();
        assert_eq!(
            reloaded.predict(&tokenizer, &texts, 32).unwrap(),
            classifier.predict(&tokenizer, &texts, 32).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn cli_finetunes_from_csv_and_writes_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model("distilbert", dir.path());
    let rows = |ex: Vec<Example>| {
        let mut s = String::from("text,label\n");
        for e in ex {
            s += &format!("\"{}\",{}\n", e.text, ["neg", "pos"][e.label]);
        }
        s
    };
    let train = write(dir.path(), "train.csv", &rows(separable(48, 1)));
    let test = write(dir.path(), "test.csv", &rows(separable(16, 2)));
    let out = dir.path().join("result.json");
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let output = Command::new(distil_bin())
        .args(["eval", "classify", "--model", &p(&model), "--train", &p(&train), "--test", &p(&test)])
        .args(["--mode", "finetune", "--seeds", "2", "--epochs", "1", "--batch-size", "16", "--lr", "1e-3"])
        .args(["--out", &p(&out), "--save", &p(&dir.path().join("saved"))])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("accuracy") && stdout.contains("macro-F1"), "{stdout}");
    let result: ClassifyResult = read_json(&out).unwrap();
    assert_eq!((result.mode.as_str(), result.train_size, result.test_size), ("finetune", 48, 16));
    assert_eq!(result.seeds, [0, 1]);
    assert_eq!(result.classes, ["neg", "pos"]);
    assert!(dir.path().join("saved/model.safetensors").is_file());

    // A bad column is one line naming it, with a non-zero exit.
    let output = Command::new(distil_bin())
        .args(["eval", "classify", "--model", &p(&model), "--train", &p(&train), "--test", &p(&test)])
        .args(["--label-column", "sentiment"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("`sentiment`"), "{stderr}");
}
