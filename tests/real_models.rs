//! Real pretrained checkpoints (fetched by `scripts/fetch_assets.sh`) compute what
//! transformers computed on them.

mod common;

use candle_core::Device;
use common::{asset, fixture, load_expected, max_abs_diff, max_abs_diff_real};
use distil::infer::{cosine, embed, fill_mask, load_encoder, named_outputs, BatchJson, Pooling};
use distil::model::TextTokenizer;
use serde_json::Value;

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn minilm_hidden_states_and_similarities_match_transformers() {
    let device = Device::Cpu;
    let dir = asset("all-MiniLM-L6-v2");
    let (ckpt, encoder) = load_encoder(&dir, &device).unwrap();
    assert!(!ckpt.has_head, "all-MiniLM-L6-v2 has no MLM head");
    assert!(ckpt.report.ignored.iter().any(|k| k.starts_with("pooler.")), "{:?}", ckpt.report.ignored);

    let batch = BatchJson::read(&fixture("minilm/inputs.json")).unwrap();
    let input = batch.to_input(&encoder, &device).unwrap();
    let ours = named_outputs(&encoder, &input).unwrap();
    let expected = load_expected(&fixture("minilm/expected.safetensors"));
    for i in 0..=6 {
        let key = format!("hidden_states.{i}");
        let diff = max_abs_diff_real(&ours[&key], &expected[&key], &input.attention_mask);
        assert!(diff <= 1e-4, "{key}: max abs diff {diff:e}");
    }

    let facts = read_json(&fixture("minilm/expected.json"));
    let sentences: Vec<String> =
        facts["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    let tokenizer = TextTokenizer::load(&dir).unwrap();
    for (i, sentence) in sentences.iter().enumerate() {
        let ids: Vec<u32> =
            facts["token_ids"][i].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tokenizer.encode(sentence, 512).unwrap(), ids, "tokens of {sentence:?}");
    }
    let vectors = embed(&encoder, &tokenizer, &sentences, Pooling::Mean, 2).unwrap();
    for (pair, (a, b)) in [("0,1", (0, 1)), ("0,2", (0, 2)), ("1,2", (1, 2))] {
        let want = facts["cosine"][pair].as_f64().unwrap() as f32;
        let got = cosine(&vectors[a], &vectors[b]);
        assert!((got - want).abs() < 1e-4, "cosine {pair}: {got} vs transformers {want}");
    }
    // The values the issue quotes, as a sanity check of the fixture itself.
    assert!((cosine(&vectors[0], &vectors[1]) - 0.719).abs() < 1e-3);
    assert!((cosine(&vectors[0], &vectors[2]) + 0.054).abs() < 1e-3);
}

#[test]
fn antiberty_loads_strictly_and_fills_masks_like_transformers() {
    let device = Device::Cpu;
    let dir = asset("antiberty");
    let (ckpt, encoder) = load_encoder(&dir, &device).unwrap();
    assert!(ckpt.has_head);
    for head in ["cls.species.weight", "cls.chain.weight", "cls.graft.weight", "bert.pooler.dense.weight"] {
        assert!(ckpt.report.ignored.iter().any(|k| k == head), "{head} not reported: {:?}", ckpt.report.ignored);
    }

    let facts = read_json(&fixture("antiberty/fillmask.json"));
    let text = facts["text"].as_str().unwrap().to_string();
    let tokenizer = TextTokenizer::load(&dir).unwrap();
    let ids: Vec<u32> = facts["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(tokenizer.encode(&text, 512).unwrap(), ids, "AntiBERTy tokenization");

    let expected = load_expected(&fixture("antiberty/expected.safetensors"));
    let batch = BatchJson {
        input_ids: vec![ids.clone()],
        attention_mask: vec![vec![1; ids.len()]],
        token_type_ids: None,
        labels: None,
    };
    let ours = named_outputs(&encoder, &batch.to_input(&encoder, &device).unwrap()).unwrap();
    for key in ["last_hidden_state", "logits"] {
        let diff = max_abs_diff(&ours[key], &expected[key]);
        assert!(diff <= 1e-4, "{key}: max abs diff {diff:e}");
    }

    let predictions = fill_mask(&encoder, &tokenizer, &[text], 5).unwrap().remove(0);
    let masks = facts["masks"].as_array().unwrap();
    assert_eq!(predictions.len(), masks.len());
    for (got, want) in predictions.iter().zip(masks) {
        assert_eq!(got.position as u64, want["position"].as_u64().unwrap());
        for (k, (token, p)) in got.candidates.iter().enumerate() {
            assert_eq!(token, want["top5_tokens"][k].as_str().unwrap(), "mask at {}: rank {k}", got.position);
            let want_p = want["top5_probs"][k].as_f64().unwrap() as f32;
            assert!((p - want_p).abs() < 1e-4, "mask at {}: p {p} vs {want_p}", got.position);
        }
    }
}
