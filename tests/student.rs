//! Student initialisation beyond the reference fixtures: the default layer choice, and the
//! DistilBERT conversion of a BERT teacher keeping single-segment inputs exact.

mod common;

use candle_core::Device;
use common::{fixture, max_abs_diff};
use distil::distill::student::{init_student, spread_layers, StudentArch};
use distil::infer::{named_outputs, BatchJson};
use distil::model::{checkpoint, Checkpoint, Encoder, Family};

#[test]
fn default_layers_are_spread_with_first_and_last_kept() {
    assert_eq!(spread_layers(12, 6), vec![0, 2, 4, 7, 9, 11]);
    assert_eq!(spread_layers(6, 3), vec![0, 3, 5]);
    assert_eq!(spread_layers(6, 2), vec![0, 5]);
    assert_eq!(spread_layers(8, 1), vec![0]);
}

#[test]
fn a_distilbert_student_of_all_layers_computes_what_the_bert_teacher_computes() {
    let device = Device::Cpu;
    let teacher = Checkpoint::load(&fixture("models/bert_tied"), &device).unwrap();
    let init = init_student(&teacher, &[0, 1], StudentArch::Distilbert).unwrap();
    assert_eq!(init.config.family, Family::DistilBert);
    assert!(!init.weights.contains_key("embeddings.token_type"));
    assert!(init.left_out.iter().any(|l| l.contains("token-type rows 1..1")), "{:?}", init.left_out);

    // Saved and read back as a DistilBERT checkpoint.
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save(dir.path(), &init.config, &init.weights, None).unwrap();
    let student = Checkpoint::load(dir.path(), &device).unwrap();
    let student = Encoder::new(&student.config, &student.weights).unwrap();
    let teacher = Encoder::new(&teacher.config, &teacher.weights).unwrap();

    // Single-segment inputs: the teacher with all-zero segment ids, the student with none.
    let mut batch = BatchJson::read(&fixture("models/bert_tied/expected/batch1.json")).unwrap();
    batch.token_type_ids = None;
    let t = named_outputs(&teacher, &batch.to_input(&teacher, &device).unwrap()).unwrap();
    let s = named_outputs(&student, &batch.to_input(&student, &device).unwrap()).unwrap();
    for key in ["hidden_states.0", "last_hidden_state", "logits"] {
        let diff = max_abs_diff(&t[key], &s[key]);
        assert!(diff < 1e-5, "{key}: DistilBERT student differs from its BERT teacher by {diff:e}");
    }
}

#[test]
fn layers_out_of_range_or_unordered_are_refused() {
    let device = Device::Cpu;
    let teacher = Checkpoint::load(&fixture("models/bert_untied"), &device).unwrap();
    let e = init_student(&teacher, &[0, 3], StudentArch::Same).err().unwrap();
    assert!(format!("{e:#}").contains("layer 3 does not exist"), "{e:#}");
    let e = init_student(&teacher, &[2, 1], StudentArch::Same).err().unwrap();
    assert!(format!("{e:#}").contains("increasing order"), "{e:#}");
    let roberta = Checkpoint::load(&fixture("models/roberta"), &device).unwrap();
    let e = init_student(&roberta, &[0], StudentArch::Distilbert).err().unwrap();
    assert!(format!("{e:#}").contains("needs a BERT teacher"), "{e:#}");
    let encoder_only = Checkpoint::load(&fixture("models/bert_encoder"), &device).unwrap();
    let e = init_student(&encoder_only, &[0], StudentArch::Same).err().unwrap();
    assert!(format!("{e:#}").contains("no MLM head"), "{e:#}");
}
