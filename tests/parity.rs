//! Every output of the tiny fixture checkpoints matches what transformers computed, and a
//! checkpoint saved by distil loads back exactly.

mod common;
mod reference;

use candle_core::Device;
use common::{fixture, load_expected, max_abs_diff, MODELS};
use distil::infer::{named_outputs, BatchJson};
use distil::model::{checkpoint, Checkpoint, Encoder};
use reference::TOLERANCE;

#[test]
fn outputs_match_transformers() {
    reference::outputs_match_transformers(&Device::Cpu);
}

#[test]
fn save_then_load_is_lossless() {
    let device = Device::Cpu;
    for name in MODELS {
        let dir = fixture(&format!("models/{name}"));
        let first = Checkpoint::load(&dir, &device).unwrap();
        let out = tempfile::tempdir().unwrap();
        checkpoint::save(out.path(), &first.config, &first.weights, None).unwrap();
        let second = Checkpoint::load(out.path(), &device).unwrap_or_else(|e| panic!("{name}: reload: {e:#}"));
        assert_eq!(second.has_head, first.has_head, "{name}");
        assert!(second.report.ignored.is_empty(), "{name}: saved extra tensors {:?}", second.report.ignored);
        assert_eq!(first.weights.keys().collect::<Vec<_>>(), second.weights.keys().collect::<Vec<_>>(), "{name}");
        for (key, a) in &first.weights {
            let b = &second.weights[key];
            assert_eq!(max_abs_diff(a, b), 0.0, "{name}: tensor {key} changed on save/load");
        }
        let (c1, c2) = (&first.config, &second.config);
        assert_eq!(
            (c1.family, c1.hidden_size, c1.num_layers, c1.num_heads, c1.intermediate_size, c1.vocab_size),
            (c2.family, c2.hidden_size, c2.num_layers, c2.num_heads, c2.intermediate_size, c2.vocab_size),
            "{name}"
        );
        assert_eq!(
            (c1.activation, c1.layer_norm_eps, c1.pad_token_id, c1.tie_word_embeddings, c1.type_vocab_size),
            (c2.activation, c2.layer_norm_eps, c2.pad_token_id, c2.tie_word_embeddings, c2.type_vocab_size),
            "{name}"
        );
        assert_eq!((c1.hidden_dropout, c1.attention_dropout), (c2.hidden_dropout, c2.attention_dropout), "{name}");
        // The reloaded model computes the recorded outputs too.
        let encoder = Encoder::new(&second.config, &second.weights).unwrap();
        let input = BatchJson::read(&dir.join("expected/batch0.json")).unwrap();
        let ours = named_outputs(&encoder, &input.to_input(&encoder, &device).unwrap()).unwrap();
        let expected = load_expected(&dir.join("expected/batch0.safetensors"));
        let diff = max_abs_diff(&ours["last_hidden_state"], &expected["last_hidden_state"]);
        assert!(diff <= TOLERANCE, "{name}: reloaded model differs by {diff:e}");
    }
}

#[test]
fn tied_decoder_is_not_written() {
    let device = Device::Cpu;
    let first = Checkpoint::load(&fixture("models/bert_tied"), &device).unwrap();
    let out = tempfile::tempdir().unwrap();
    checkpoint::save(out.path(), &first.config, &first.weights, None).unwrap();
    let keys: Vec<String> =
        candle_core::safetensors::load(out.path().join("model.safetensors"), &device).unwrap().into_keys().collect();
    assert!(keys.iter().all(|k| !k.contains("decoder")), "tied decoder or its bias saved: {keys:?}");
    assert!(keys.iter().any(|k| k == "bert.embeddings.word_embeddings.weight"), "{keys:?}");
    assert!(keys.iter().any(|k| k == "cls.predictions.bias"), "{keys:?}");
}
