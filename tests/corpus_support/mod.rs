//! Shared by the corpus tests: the committed real-text sample, all-MiniLM-L6-v2's tokenizer, and
//! what building a corpus should give, computed from the tokenizer's own encoding.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use distil::corpus::{build, BuildOptions, BuildReport, Corpus, Split};
use distil::model::TextTokenizer;

use crate::common::{asset, distil_bin, fixture};

/// A few hundred real lines from the Debian text packages (WordNet glosses, fortunes, Jargon
/// File entries with blank lines between them), made by `scripts/extract_text.py sample`.
pub fn sample_text() -> PathBuf {
    let path = fixture("text/sample.txt");
    assert!(path.is_file(), "test sample {} is missing (it is committed)", path.display());
    path
}

pub fn minilm() -> PathBuf {
    asset("all-MiniLM-L6-v2")
}

pub fn minilm_tokenizer() -> TextTokenizer {
    TextTokenizer::load(&minilm()).unwrap()
}

/// Builds a corpus quietly, with the defaults of `distil corpus build` changed by `edit`.
pub fn build_corpus(inputs: &[&Path], out: &Path, edit: impl FnOnce(&mut BuildOptions)) -> BuildReport {
    let mut options = BuildOptions::new(minilm(), inputs.iter().map(|p| p.to_path_buf()).collect(), out);
    edit(&mut options);
    build(&options).unwrap_or_else(|e| panic!("building {}: {e:#}", out.display()))
}

pub fn read_split(dir: &Path, split: Split) -> Vec<Vec<u32>> {
    let corpus = Corpus::open(dir, split).unwrap();
    (0..corpus.len()).map(|i| corpus.sequence(i)).collect()
}

pub fn non_empty_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

/// The text tokens of `text` (no start and end tokens), from the tokenizer's own `encode`.
pub fn content(tok: &TextTokenizer, text: &str) -> Vec<u32> {
    let ids = tok.encode(text, 1 << 20).unwrap();
    assert_eq!((ids[0], ids[ids.len() - 1]), (tok.special.start, tok.special.end), "{text:?} is not wrapped");
    ids[1..ids.len() - 1].to_vec()
}

/// The specified sequences of one line: its tokens cut into pieces of `max_len - 2`, each
/// wrapped in the start and end tokens, those shorter than `min_len` or at least `max_unk`
/// unknown left out.
pub fn expected_pieces(tok: &TextTokenizer, line: &str, max_len: usize, min_len: usize, max_unk: f64) -> Vec<Vec<u32>> {
    let tokens = content(tok, line);
    let chunks: Vec<&[u32]> = if tokens.is_empty() { vec![&[][..]] } else { tokens.chunks(max_len - 2).collect() };
    chunks
        .into_iter()
        .map(|c| [&[tok.special.start][..], c, &[tok.special.end]].concat())
        .filter(|s| s.len() >= min_len)
        .filter(|s| {
            let unknown = s.iter().filter(|&&t| Some(t) == tok.special.unk).count();
            (unknown as f64) < max_unk * s.len() as f64
        })
        .collect()
}

/// Runs distil, expects it to fail with one `error:` line, no panic, and returns that line.
pub fn fails(args: &[&str]) -> String {
    let out = Command::new(distil_bin()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "distil {args:?} succeeded; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "distil {args:?} panicked: {stderr}");
    assert!(stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1, "distil {args:?}: {stderr}");
    stderr
}

pub fn assert_mentions(message: &str, words: &[&str]) {
    for w in words {
        assert!(message.contains(w), "message lacks `{w}`: {message}");
    }
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}
