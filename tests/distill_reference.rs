//! The distillation loss and the student initialisation agree with the reference
//! (`scripts/make_loss_fixtures.py`: DistilBERT's formulas in torch, float64, and students built
//! by copying teacher layers by hand in transformers).

mod common;
mod reference;

use candle_core::Device;
use common::{fixture, load_expected, max_abs_diff};
use distil::distill::check::batch_loss;
use distil::distill::loss::LossConfig;
use distil::distill::student::{init_student, StudentArch};
use distil::infer::{named_outputs, BatchJson};
use distil::model::{Checkpoint, Encoder};
use reference::students;
use serde_json::Value;

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

#[test]
fn loss_components_and_gradients_match_the_reference() {
    reference::loss_matches_the_reference(&Device::Cpu);
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
