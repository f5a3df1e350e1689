//! Distillation proper: the student built from the teacher, and the losses that train it.

pub mod check;
pub mod loss;
pub mod student;
pub mod teacher_head;
pub mod vocab_loss;
