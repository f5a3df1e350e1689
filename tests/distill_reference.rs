//! The distillation loss and the student initialisation agree with the reference
//! (`scripts/make_loss_fixtures.py`: DistilBERT's formulas in torch, float64, and students built
//! by copying teacher layers by hand in transformers).

mod common;

use candle_core::{Device, Tensor};
use common::{fixture, load_expected, max_abs_diff};
use distil::distill::check::batch_loss;
use distil::distill::loss::LossConfig;
use distil::distill::student::{init_student, StudentArch};
use distil::infer::{named_outputs, BatchJson};
use distil::model::{Checkpoint, Encoder};
use serde_json::Value;

fn students() -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(fixture("distill/students.json")).unwrap();
    let map: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    map.into_iter().collect()
}

fn layers_of(entry: &Value) -> Vec<usize> {
    entry["layers"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect()
}

#[test]
fn student_init_equals_layers_copied_by_hand() {
    let device = Device::Cpu;
    for (teacher_name, entry) in students() {
        let teacher = Checkpoint::load(&fixture(&format!("models/{teacher_name}")), &device).unwrap();
        let student_dir = fixture(&format!("distill/{}", entry["student_dir"].as_str().unwrap()));
        let by_hand = Checkpoint::load(&student_dir, &device).unwrap();
        let init = init_student(&teacher, &layers_of(&entry), StudentArch::Same).unwrap();
        assert_eq!(
            init.weights.keys().collect::<Vec<_>>(),
            by_hand.weights.keys().collect::<Vec<_>>(),
            "{teacher_name}"
        );
        for (k, t) in &init.weights {
            assert_eq!(max_abs_diff(t, &by_hand.weights[k]), 0.0, "{teacher_name}: {k}");
        }
        // And the student computes what transformers computed for the hand-made copy.
        let encoder = Encoder::new(&init.config, &init.weights).unwrap();
        let batch = BatchJson::read(&student_dir.join("expected/batch0.json")).unwrap();
        let ours = named_outputs(&encoder, &batch.to_input(&encoder, &device).unwrap()).unwrap();
        let expected = load_expected(&student_dir.join("expected/batch0.safetensors"));
        for (key, want) in &expected {
            let diff = max_abs_diff(&ours[key], want);
            assert!(diff <= 1e-4, "{teacher_name} student {key}: {diff:e}");
        }
    }
}

fn rel_close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * want.abs().max(1e-6)
}

#[test]
fn loss_components_and_gradients_match_the_reference() {
    let device = Device::Cpu;
    let mut checked_grads = 0;
    for (teacher_name, entry) in students() {
        let teacher = Checkpoint::load(&fixture(&format!("models/{teacher_name}")), &device).unwrap();
        let student_dir = fixture(&format!("distill/{}", entry["student_dir"].as_str().unwrap()));
        let student = Checkpoint::load(&student_dir, &device).unwrap();
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

#[test]
fn all_padding_rows_do_not_divide_by_zero() {
    let device = Device::Cpu;
    let teacher = Checkpoint::load(&fixture("models/bert_tied"), &device).unwrap();
    let student = Checkpoint::load(&fixture("distill/bert_tied_student"), &device).unwrap();
    // One real row with no target, one all-padding row: no MLM target anywhere.
    let batch = BatchJson {
        input_ids: vec![vec![2, 7, 9, 3], vec![0, 0, 0, 0]],
        attention_mask: vec![vec![1, 1, 1, 1], vec![0, 0, 0, 0]],
        token_type_ids: None,
        labels: Some(vec![vec![-100; 4], vec![-100; 4]]),
    };
    let (values, grads) = batch_loss(&teacher, &student, &batch, &LossConfig::default(), true).unwrap();
    assert_eq!(values.mlm, 0.0);
    assert!(values.total.is_finite() && values.ce.is_finite() && values.cos.is_finite(), "{values:?}");
    for (k, g) in grads.unwrap() {
        let s = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(s.is_finite(), "{k}: non-finite gradient");
    }
}
