//! Checks against what transformers and the reference formulas computed, run on any device:
//! the CPU in `parity.rs` and `distill_reference.rs`, a GPU in `gpu.rs`.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::common::{fixture, load_expected, max_abs_diff, max_abs_diff_real, MODELS};
use distil::distill::check::batch_loss;
use distil::distill::loss::LossConfig;
use distil::infer::{named_outputs, BatchJson};
use distil::model::{Checkpoint, Encoder};

pub const TOLERANCE: f32 = 1e-4;

/// Every hidden state and the logits of each fixture checkpoint, run on `device` in both weight
/// layouts, are within `TOLERANCE` of what transformers computed: at every position for the
/// trainable layout; at real tokens for the frozen one, whose hidden states are zero at padding
/// (it computes real tokens alone, on the CPU).
pub fn outputs_match_transformers(device: &Device) {
    for name in MODELS {
        let dir = fixture(&format!("models/{name}"));
        let ckpt = Checkpoint::load(&dir, device).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(ckpt.has_head, *name != "bert_encoder", "{name}: head detection");
        let layouts = [
            ("trainable", Encoder::new(&ckpt.config, &ckpt.weights).unwrap()),
            ("frozen", Encoder::frozen(&ckpt.config, &ckpt.weights).unwrap()),
        ];
        for (layout, encoder) in &layouts {
            for batch in ["batch0", "batch1"] {
                let at = format!("{name}/{layout}/{batch}");
                let input = BatchJson::read(&dir.join(format!("expected/{batch}.json"))).unwrap();
                let encoder_input = input.to_input(encoder, device).unwrap();
                let ours = named_outputs(encoder, &encoder_input).unwrap();
                let expected = load_expected(&dir.join(format!("expected/{batch}.safetensors")));
                let mask = &encoder_input.attention_mask;
                for (key, want) in &expected {
                    if key == "pooler_output" {
                        continue; // the pooler is not part of an encoder's outputs here
                    }
                    let got = ours.get(key).unwrap_or_else(|| panic!("{at}: no output `{key}`"));
                    let diff =
                        if *layout == "frozen" { max_abs_diff_real(got, want, mask) } else { max_abs_diff(got, want) };
                    assert!(diff <= TOLERANCE, "{at}/{key}: max abs diff {diff:e} > {TOLERANCE:e}");
                    if *layout == "frozen" && key != "logits" && device.is_cpu() {
                        let padding = (1.0 - mask.to_dtype(DType::F32).unwrap()).unwrap();
                        let at_padding = max_abs_diff_real(got, &got.zeros_like().unwrap(), &padding);
                        assert_eq!(at_padding, 0.0, "{at}/{key}: the frozen layout left values at padding");
                    }
                }
                for key in ours.keys() {
                    assert!(expected.contains_key(key), "{at}: transformers recorded no `{key}`");
                }
            }
        }
    }
}

pub fn students() -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(fixture("distill/students.json")).unwrap();
    let map: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    map.into_iter().collect()
}

fn rel_close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * want.abs().max(1e-6)
}

/// The loss components and the student's gradients of each reference case, computed on
/// `device`, equal the reference formulas' (float64 torch).
pub fn loss_matches_the_reference(device: &Device) {
    let mut checked_grads = 0;
    for (teacher_name, entry) in students() {
        let teacher = Checkpoint::load(&fixture(&format!("models/{teacher_name}")), device).unwrap();
        let student_dir = fixture(&format!("distill/{}", entry["student_dir"].as_str().unwrap()));
        let student = Checkpoint::load(&student_dir, device).unwrap();
        let dir = fixture(&format!("distill/{teacher_name}"));
        let records: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("losses.json")).unwrap()).unwrap();
        assert!(records.len() >= 3, "{teacher_name}: too few reference cases");
        for r in records {
            let case = format!("{teacher_name}/{}/{}", r["batch"].as_str().unwrap(), r["case"].as_str().unwrap_or("?"));
            let mut batch = BatchJson::read(&dir.join(format!("{}.json", r["batch"].as_str().unwrap()))).unwrap();
            if r.get("token_type_ids").and_then(Value::as_bool) == Some(false) {
                batch.token_type_ids = None;
            }
            let f = |k: &str| r[k].as_f64().unwrap();
            let cfg = LossConfig {
                temperature: f("temperature"),
                alpha_ce: f("alpha_ce"),
                alpha_mlm: f("alpha_mlm"),
                alpha_cos: f("alpha_cos"),
                alpha_mse: f("alpha_mse"),
                restrict_ce_to_mask: r["restrict_ce_to_mask"].as_bool().unwrap(),
            };
            let grads_file = r["grads"].as_str();
            let (values, grads) = batch_loss(&teacher, &student, &batch, &cfg, grads_file.is_some()).unwrap();
            for (name, got) in [
                ("ce", values.ce),
                ("mlm", values.mlm),
                ("cos", values.cos),
                ("mse", values.mse),
                ("total", values.total),
            ] {
                assert!(rel_close(got, f(name), 1e-5), "{case}: {name} = {got}, reference {}", f(name));
            }
            if let (Some(file), Some(grads)) = (grads_file, grads) {
                let want = load_expected(&dir.join(file));
                assert_eq!(
                    grads.keys().collect::<Vec<_>>(),
                    {
                        let mut k: Vec<_> = want.keys().collect();
                        k.sort();
                        k
                    },
                    "{case}: gradient names"
                );
                // Relative to each tensor's own scale; a tensor whose true gradient vanishes
                // (the key bias: softmax ignores a shift shared by all keys) is held to float32
                // noise relative to the largest gradient of the model.
                let scale_of = |t: &Tensor| {
                    let m = t.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                    m.to_dtype(candle_core::DType::F32).unwrap().to_scalar::<f32>().unwrap()
                };
                let global = want.values().map(scale_of).fold(0f32, f32::max);
                for (name, g) in &grads {
                    let w = &want[name];
                    let scale = scale_of(w);
                    let tol = if scale < 1e-6 * global { 1e-6 * global } else { 1e-4 * scale.max(1e-3 * global) };
                    let diff = max_abs_diff(g, w);
                    assert!(diff <= tol, "{case}: gradient of {name} differs by {diff:e} (scale {scale:e})");
                }
                checked_grads += 1;
            }
        }
    }
    assert!(checked_grads >= 4, "only {checked_grads} gradient references were checked");
}
