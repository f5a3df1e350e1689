//! A damaged, mismatched or empty corpus, or bad build arguments: one clear line naming the file
//! and what was expected, a non-zero exit, never a panic.

mod common;
mod corpus_support;

use std::path::{Path, PathBuf};

use corpus_support::*;
use distil::corpus::{Corpus, Split};
use distil::model::TextTokenizer;
use serde_json::Value;

fn sample_corpus(root: &Path, name: &str, seed: u64) -> PathBuf {
    let dir = root.join(name);
    build_corpus(&[&sample_text()], &dir, |o| o.seed = seed);
    dir
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("manifest.json");
    let mut manifest: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, manifest.to_string()).unwrap();
}

#[test]
fn corrupt_and_truncated_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = sample_corpus(tmp.path(), "corpus", 0);
    let shard = dir.join("train-00000.u16");
    let mut bytes = std::fs::read(&shard).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&shard, &bytes).unwrap();
    assert_mentions(&fails(&["corpus", "stats", p(&dir)]), &[p(&shard), "corrupt", "CRC-32"]);

    bytes[middle] ^= 0x5a;
    bytes.truncate(bytes.len() - 2);
    std::fs::write(&shard, &bytes).unwrap();
    let e = fails(&["corpus", "sample", p(&dir)]);
    assert_mentions(&e, &[p(&shard), &format!("has {} bytes", bytes.len()), &format!("expects {}", bytes.len() + 2)]);
}

#[test]
fn a_manifest_that_does_not_match_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = sample_corpus(tmp.path(), "corpus", 0);
    let pristine = std::fs::read(dir.join("manifest.json")).unwrap();
    let restore = || std::fs::write(dir.join("manifest.json"), &pristine).unwrap();

    edit_manifest(&dir, |m| m["train"]["sequences"] = (m["train"]["sequences"].as_u64().unwrap() + 1).into());
    assert_mentions(&fails(&["corpus", "stats", p(&dir)]), &["manifest.json", "train lists shards with", "sequences"]);
    restore();

    edit_manifest(&dir, |m| m["vocab_size"] = 30000.into());
    assert_mentions(&fails(&["corpus", "stats", p(&dir)]), &["manifest.json", "token_counts.u64", "30000"]);
    restore();

    std::fs::write(dir.join("manifest.json"), "{ not json").unwrap();
    assert_mentions(&fails(&["corpus", "stats", p(&dir)]), &["manifest.json", "not a valid manifest"]);
    restore();

    // A shard of another build: the sizes or the checksum differ.
    let other = sample_corpus(tmp.path(), "other", 1);
    std::fs::copy(other.join("train-00000.u16"), dir.join("train-00000.u16")).unwrap();
    assert_mentions(&fails(&["corpus", "stats", p(&dir)]), &["train-00000.u16", "the manifest"]);
    std::fs::remove_file(dir.join("train-00000.u16")).unwrap();
    assert_mentions(&fails(&["corpus", "stats", p(&dir)]), &["train-00000.u16", "missing"]);

    // An index whose checksum matches but whose offsets do not fit the shard.
    let dir = sample_corpus(tmp.path(), "index", 0);
    let index_path = dir.join("train.index.u64");
    let mut index = std::fs::read(&index_path).unwrap();
    index[8..16].copy_from_slice(&1u64.to_le_bytes());
    std::fs::write(&index_path, &index).unwrap();
    edit_manifest(&dir, |m| m["train"]["index"]["crc32"] = crc32fast::hash(&index).into());
    let e = fails(&["corpus", "stats", p(&dir)]);
    assert_mentions(&e, &[p(&index_path), "sequence 0", "1 tokens", "expected 2 to 512"]);
}

#[test]
fn not_a_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    assert_mentions(
        &fails(&["corpus", "stats", p(tmp.path())]),
        &[p(tmp.path()), "not a distil corpus", "manifest.json"],
    );
    let missing = tmp.path().join("nowhere");
    assert_mentions(&fails(&["corpus", "sample", p(&missing)]), &[p(&missing), "does not exist"]);
}

#[test]
fn empty_corpora_are_refused_at_build_time() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("corpus");
    let build =
        |input: &Path| fails(&["corpus", "build", "--tokenizer", p(&minilm()), "--input", p(input), "--out", p(&out)]);
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "\n  \n\n").unwrap();
    assert_mentions(&build(&empty), &["no text in the inputs", "empty.txt"]);
    let folder = tmp.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    assert_mentions(&build(&folder), &["no input files in", "folder"]);
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "one line\nanother line\n").unwrap();
    assert_mentions(&build(&short), &["no sequence survived cleaning", "short.txt", "2 lines"]);
    assert!(!out.exists(), "a failed build left {}", out.display());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 3, "temporary directories left behind");
}

#[test]
fn a_corpus_refuses_another_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = sample_corpus(tmp.path(), "corpus", 0);
    let corpus = Corpus::open(&dir, Split::Train).unwrap();
    let antiberty = TextTokenizer::load(&common::asset("antiberty")).unwrap();
    let e = corpus.check_tokenizer(&antiberty).unwrap_err().to_string();
    assert_mentions(&e, &[p(&dir), "different tokenizer", "antiberty", "rebuild the corpus"]);
    corpus.check_tokenizer(&minilm_tokenizer()).unwrap();

    // The copy of the tokenizer inside the corpus is checked too.
    let copy = dir.join("tokenizer");
    std::fs::remove_file(copy.join("tokenizer.json")).unwrap();
    std::fs::copy(common::asset("antiberty").join("vocab.txt"), copy.join("vocab.txt")).unwrap();
    assert_mentions(&fails(&["corpus", "sample", p(&dir), "--masked"]), &["different tokenizer"]);
}

#[test]
fn bad_build_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = sample_text();
    let (out, model) = (tmp.path().join("corpus"), minilm());
    let base = ["corpus", "build", "--tokenizer", p(&model), "--input", p(&sample), "--out", p(&out)];
    let with = |extra: &[&str]| fails(&[&base[..], extra].concat());
    assert_mentions(&with(&["--heldout", "1.5"]), &["--heldout", "1.5"]);
    assert_mentions(&with(&["--max-len", "2"]), &["--max-len", "at least 3"]);
    assert_mentions(&with(&["--min-len", "600"]), &["--min-len 600", "512"]);
    assert_mentions(&with(&["--threads", "0"]), &["--threads"]);
    assert_mentions(&with(&["--input", "/no/such/text.txt"]), &["/no/such/text.txt", "does not exist"]);
    let e = fails(&["corpus", "build", "--tokenizer", p(tmp.path()), "--input", p(&sample), "--out", p(&out)]);
    assert_mentions(&e, &["no tokenizer in", "tokenizer.json"]);
    let file = tmp.path().join("file");
    std::fs::write(&file, "").unwrap();
    let e = fails(&["corpus", "build", "--tokenizer", p(&minilm()), "--input", p(&sample), "--out", p(&file)]);
    assert_mentions(&e, &["is a file", "directory"]);
}
