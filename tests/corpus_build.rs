//! `distil corpus build` on real text and on crafted lines: the shards hold exactly the
//! tokenizer's own encoding, split, wrapped, cleaned, packed and divided as specified.

mod common;
mod corpus_support;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::distil_bin;
use corpus_support::*;
use distil::corpus::{Corpus, Manifest, Split};

/// Every file of a corpus directory, by name, for comparing two builds byte for byte.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn round_trip_gives_the_tokenizers_own_encoding() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("corpus");
    let sample = sample_text();
    let status = Command::new(distil_bin())
        .args(["corpus", "build", "--tokenizer", p(&minilm()), "--input", p(&sample), "--out", p(&out)])
        .args(["--max-len", "48", "--heldout", "0"])
        .status()
        .unwrap();
    assert!(status.success());

    let tok = minilm_tokenizer();
    let lines = non_empty_lines(&sample);
    let per_line: Vec<Vec<Vec<u32>>> = lines.iter().map(|l| expected_pieces(&tok, l, 48, 12, 0.5)).collect();
    let expected: Vec<Vec<u32>> = per_line.concat();
    let got = read_split(&out, Split::Train);
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "sequence {i}: {:?}", tok.decode(g, false).unwrap());
    }
    assert!(got.iter().all(|s| s.len() <= 48) && got.iter().any(|s| s.len() == 48), "some lines must be split");

    let corpus = Corpus::open(&out, Split::Train).unwrap();
    let m = corpus.manifest();
    assert_eq!(m.tokenizer_fingerprint, tok.fingerprint().unwrap());
    assert_eq!((m.vocab_size, m.token_bytes, m.special.mask, m.special.pad), (30522, 2, 103, 0));
    assert_eq!(m.special_ids, tok.special_ids());
    assert_eq!(m.input.lines, lines.len() as u64);
    assert_eq!(m.split_long, lines.iter().filter(|l| content(&tok, l).len() > 46).count() as u64);
    let all_pieces: u64 =
        lines.iter().map(|l| expected_pieces(&tok, l, 48, 0, f64::INFINITY).len() as u64).sum::<u64>();
    assert_eq!(m.dropped.too_short + m.dropped.too_many_unknown, all_pieces - expected.len() as u64);
    assert_eq!(corpus.lengths(), expected.iter().map(|s| s.len() as u32).collect::<Vec<_>>());

    // The token counts are those of the train split.
    let mut counts = vec![0u64; m.vocab_size];
    expected.iter().flatten().for_each(|&t| counts[t as usize] += 1);
    assert_eq!(corpus.token_counts(), counts);

    // The views run and show real text.
    let stats = Command::new(distil_bin()).args(["corpus", "stats", p(&out)]).output().unwrap();
    let stats = String::from_utf8(stats.stdout).unwrap();
    assert!(stats.contains(&format!("{} sequences", expected.len())) && stats.contains("the "), "{stats}");
    let sample =
        Command::new(distil_bin()).args(["corpus", "sample", p(&out), "-n", "4", "--masked"]).output().unwrap();
    let sample = String::from_utf8(sample.stdout).unwrap();
    assert_eq!(sample.lines().filter(|l| l.starts_with('#')).count(), 4, "{sample}");
    assert!(sample.contains("[CLS]") && sample.contains(']'), "{sample}");
}

#[test]
fn heldout_split_is_seeded_keeps_a_lines_pieces_together_and_ignores_threads_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = sample_text();
    let tok = minilm_tokenizer();
    let settings = |threads: usize, seed: u64, shard_tokens: u64| {
        move |o: &mut distil::corpus::BuildOptions| {
            o.max_len = Some(32);
            o.heldout = 0.3;
            o.seed = seed;
            o.threads = Some(threads);
            o.shard_tokens = shard_tokens;
        }
    };
    let one = tmp.path().join("one");
    build_corpus(&[&sample], &one, settings(1, 5, 1 << 28));
    let two = tmp.path().join("two");
    build_corpus(&[&sample], &two, settings(2, 5, 1 << 28));
    assert_eq!(files(&one), files(&two), "the number of threads changed the corpus");

    // Each line's pieces all go to one split; train and held-out are the lines in input order.
    let lines = non_empty_lines(&sample);
    let per_line: Vec<Vec<Vec<u32>>> = lines.iter().map(|l| expected_pieces(&tok, l, 32, 12, 0.5)).collect();
    let (train, heldout) = (read_split(&one, Split::Train), read_split(&one, Split::Heldout));
    let (mut t, mut h) = (train.iter().peekable(), heldout.iter().peekable());
    let mut held_lines = 0;
    for pieces in per_line.iter().filter(|p| !p.is_empty()) {
        let held = t.peek() != Some(&&pieces[0]);
        held_lines += usize::from(held);
        let source = if held { &mut h } else { &mut t };
        for piece in pieces {
            assert_eq!(source.next(), Some(piece));
        }
    }
    assert!(t.next().is_none() && h.next().is_none());
    let lines_kept = per_line.iter().filter(|p| !p.is_empty()).count();
    let share = held_lines as f64 / lines_kept as f64;
    assert!((0.22..0.38).contains(&share), "held-out share {share}");

    let other_seed = tmp.path().join("other");
    build_corpus(&[&sample], &other_seed, settings(2, 6, 1 << 28));
    assert_ne!(read_split(&other_seed, Split::Heldout), heldout);

    // Small shards: several files, cut at sequence boundaries, the same sequences.
    let sharded = tmp.path().join("sharded");
    build_corpus(&[&sample], &sharded, settings(2, 5, 1000));
    let m = Manifest::read(&sharded).unwrap();
    assert!(m.train.shards.len() > 5 && m.train.shards.iter().all(|s| s.tokens <= 1000), "{:?}", m.train.shards);
    assert_eq!(read_split(&sharded, Split::Train), train);
}

#[test]
fn cleaning_rules_on_crafted_lines() {
    let tok = minilm_tokenizer();
    let unk = tok.special.unk.unwrap();
    assert_eq!(content(&tok, "☃"), [unk], "the snowman must be unknown to this vocabulary");
    let long = (0..100).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ");
    let lines = [
        "a short line".to_string(),                                      // 5 tokens: dropped
        "☃ ☃ ☃ ☃ ☃ ☃ ☃ ☃ and then a few real words".to_string(),         // 8 of 16 unknown: dropped
        "☃ ☃ ☃ ☃ ☃ ☃ ☃ and then a few more real words here".to_string(), // 7 of 17: kept
        "this line has exactly enough tokens to be kept, barely".to_string(),
        long,
    ];
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("crafted.txt");
    let mut f = std::fs::File::create(&text).unwrap();
    for line in &lines {
        write!(f, "{line}\r\n   \n").unwrap();
    }
    f.write_all(b"\xff\xfe not UTF-8 at all, this line is skipped and counted\n").unwrap();
    drop(f);

    let out = tmp.path().join("corpus");
    let report = build_corpus(&[&text], &out, |o| {
        o.max_len = Some(32);
        o.heldout = 0.0;
    });
    let expected: Vec<Vec<u32>> = lines.iter().flat_map(|l| expected_pieces(&tok, l, 32, 12, 0.5)).collect();
    assert_eq!(read_split(&out, Split::Train), expected);
    let m = &report.manifest;
    let long_pieces = content(&tok, &lines[4]).len().div_ceil(30);
    assert!(long_pieces > 3);
    assert_eq!(m.split_long, 1);
    assert_eq!(m.dropped.too_many_unknown, 1);
    // Dropped as too short: the short line, and the long line's pieces that are not kept (its
    // last); kept: the line with 7 unknowns of 17, the line of exactly 13 tokens, the rest.
    let kept_long_pieces = expected.len() - 2;
    assert_eq!(m.dropped.too_short as usize, 1 + long_pieces - kept_long_pieces);
    assert_eq!((m.input.lines, m.input.invalid_utf8_lines), (5, 1));
    assert_eq!(expected[0].len(), 17);
    assert_eq!(expected[1], [&[tok.special.start][..], &content(&tok, &lines[3]), &[tok.special.end]].concat());
}

#[test]
fn document_mode_packs_the_lines_of_a_document() {
    let tok = minilm_tokenizer();
    let words = |n: usize, from: usize| -> String {
        let names = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"];
        (0..n).map(|i| names[(from + i) % 10]).collect::<Vec<_>>().join(" ")
    };
    let (l1, l2, l3, l4, l5, l6, l7) =
        (words(8, 0), words(8, 1), words(10, 2), words(30, 3), words(5, 4), words(3, 5), words(12, 6));
    for (line, n) in [(&l1, 8), (&l3, 10), (&l4, 30)] {
        assert_eq!(content(&tok, line).len(), n, "{line:?} should be one token per word");
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.txt");
    std::fs::write(&a, format!("{l1}\n{l2}\n{l3}\n\n{l4}\n{l5}\n\n\n{l6}\n")).unwrap();
    let b = tmp.path().join("b.txt");
    std::fs::write(&b, format!("{l7}\n")).unwrap();
    let out = tmp.path().join("corpus");
    let report = build_corpus(&[&a, &b], &out, |o| {
        o.max_len = Some(24);
        o.min_len = 2;
        o.heldout = 0.0;
        o.documents = true;
    });
    let c = |line: &str| content(&tok, line);
    let wrap = |parts: &[&[u32]]| [&[tok.special.start][..], &parts.concat(), &[tok.special.end]].concat();
    let expected = vec![
        wrap(&[&c(&l1), &c(&l2)]), // 16 tokens fit in 22; the third line does not
        wrap(&[&c(&l3)]),
        wrap(&[&c(&l4)[..22]]), // a line longer than 22 is cut; its tail packs with the next line
        wrap(&[&c(&l4)[22..], &c(&l5)]),
        wrap(&[&c(&l6)]), // blank lines end documents
        wrap(&[&c(&l7)]), // so does the end of a file
    ];
    assert_eq!(read_split(&out, Split::Train), expected);
    assert_eq!((report.manifest.input.units, report.manifest.split_long), (4, 1));
}

#[test]
fn folders_gzip_and_hidden_files() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = sample_text();
    let folder = tmp.path().join("text");
    std::fs::create_dir_all(folder.join("nested")).unwrap();
    std::fs::copy(&sample, folder.join("a.txt")).unwrap();
    let gz = std::fs::File::create(folder.join("nested/b.txt.gz")).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(gz, flate2::Compression::default());
    encoder.write_all(&std::fs::read(&sample).unwrap()).unwrap();
    encoder.finish().unwrap();
    std::fs::write(folder.join(".hidden.txt"), "a hidden file that must not be read, with enough words in it\n")
        .unwrap();

    let plain = tmp.path().join("plain");
    build_corpus(&[&sample, &sample], &plain, |o| o.heldout = 0.0);
    let walked = tmp.path().join("walked");
    let report = build_corpus(&[&folder], &walked, |o| o.heldout = 0.0);
    assert_eq!(report.manifest.input.files, 2);
    assert_eq!(report.manifest.input.bytes, 2 * std::fs::metadata(&sample).unwrap().len());
    assert_eq!(read_split(&walked, Split::Train), read_split(&plain, Split::Train));
}

#[test]
fn u32_shards_for_a_vocabulary_beyond_65536() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("big-vocab");
    std::fs::create_dir(&model).unwrap();
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(String::from).to_vec();
    vocab.extend((0..70_000).map(|i| format!("w{i}")));
    std::fs::write(model.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    let text = tmp.path().join("text.txt");
    let line = |k: usize| (0..20).map(|i| format!("w{}", 69_990 - 7 * i - k)).collect::<Vec<_>>().join(" ");
    std::fs::write(&text, format!("{}\n{}\n", line(0), line(1))).unwrap();

    let out = tmp.path().join("corpus");
    let mut options = distil::corpus::BuildOptions::new(&model, vec![text.clone()], &out);
    options.heldout = 0.0;
    let report = distil::corpus::build(&options).unwrap();
    assert_eq!(report.manifest.token_bytes, 4);
    assert!(report.manifest.train.shards[0].file.ends_with(".u32"));
    let tok = distil::model::TextTokenizer::load(&model).unwrap();
    let expected: Vec<Vec<u32>> = [line(0), line(1)].iter().map(|l| tok.encode(l, 512).unwrap()).collect();
    assert!(expected[0].iter().any(|&t| t > 65_535));
    assert_eq!(read_split(&out, Split::Train), expected);
}

#[test]
fn maximum_length_comes_from_the_models_config() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = sample_text();
    let max_len = |tokenizer: &Path| {
        let out = tmp.path().join("corpus");
        let mut options = distil::corpus::BuildOptions::new(tokenizer, vec![sample.clone()], &out);
        options.heldout = 0.0;
        distil::corpus::build(&options).map(|r| r.manifest.settings.max_len)
    };
    assert_eq!(max_len(&minilm()).unwrap(), 512);
    assert_eq!(max_len(&minilm().join("tokenizer.json")).unwrap(), 512);

    let short = tmp.path().join("short-model");
    std::fs::create_dir(&short).unwrap();
    std::fs::copy(minilm().join("tokenizer.json"), short.join("tokenizer.json")).unwrap();
    assert_eq!(max_len(&short).unwrap(), 512, "no config.json: the default");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(minilm().join("config.json")).unwrap()).unwrap();
    config["max_position_embeddings"] = 128.into();
    std::fs::write(short.join("config.json"), config.to_string()).unwrap();
    assert_eq!(max_len(&short).unwrap(), 128);

    let e = fails(&[
        "corpus",
        "build",
        "--tokenizer",
        p(&short),
        "--input",
        p(&sample),
        "--out",
        p(&tmp.path().join("x")),
        "--max-len",
        "200",
    ]);
    assert_mentions(&e, &["--max-len 200", "128", "config.json"]);
}

#[test]
fn a_rebuild_replaces_a_corpus_whole_and_a_failed_one_leaves_it_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = sample_text();
    let out = tmp.path().join("corpus");
    build_corpus(&[&sample], &out, |o| o.heldout = 0.0);
    let before = files(&out);

    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "too short\nalso short\n").unwrap();
    let e = fails(&["corpus", "build", "--tokenizer", p(&minilm()), "--input", p(&short), "--out", p(&out)]);
    assert_mentions(&e, &["no sequence survived cleaning", "2 lines", "--min-len 12"]);
    assert_eq!(files(&out), before, "a failed build touched the existing corpus");

    build_corpus(&[&sample], &out, |o| o.heldout = 0.5);
    assert_ne!(files(&out), before);
    assert!(Corpus::open(&out, Split::Heldout).unwrap().len() > 100);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "temporary directories left behind: {leftovers:?}");

    let precious = tmp.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "mine").unwrap();
    let e = fails(&["corpus", "build", "--tokenizer", p(&minilm()), "--input", p(&sample), "--out", p(&precious)]);
    assert_mentions(&e, &["refusing to replace", "precious", "not a distil corpus"]);
    assert_eq!(std::fs::read_to_string(precious.join("notes.txt")).unwrap(), "mine");
}
