//! Run checkpoints: everything a resumed run needs to continue exactly where an unbroken run
//! would be: the student's weights, the optimiser's moments, the step, the random generators
//! and the data cursor.
//!
//! Each checkpoint is a folder `checkpoints/step-NNNNNNNN/` written under a temporary name and
//! renamed into place, so that an interrupted write never replaces a good checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::loss_scale::LossScale;
use crate::corpus::batches::Cursor;
use crate::model::checkpoint::write_atomic;
use crate::model::Weights;
use crate::rng::Rng;

/// The small part of a checkpoint: counters, generators, data position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Optimiser steps completed.
    pub step: u64,
    /// Updates actually applied by the optimiser (skipped steps excluded).
    pub optimizer_steps: u64,
    /// Masking is drawn from one generator, the same on every rank; dropout's generators are
    /// derived from the step (see the run), so they need no state.
    pub mask_rng: Rng,
    pub cursor: Cursor,
    pub skipped: u64,
    pub consecutive_skipped: u64,
    /// Float16's dynamic loss scale (1 and fixed for other types).
    #[serde(default)]
    pub loss_scale: LossScale,
}

fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    Ok(safetensors::serialize(tensors.iter().map(|(k, v)| (k.clone(), v)), None)?)
}

/// Writes a checkpoint and deletes all but the newest `keep`.
pub fn save(
    run: &Path,
    state: &RunState,
    weights: &Weights,
    optimizer: &BTreeMap<String, Tensor>,
    keep: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run);
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let name = format!("step-{:08}", state.step);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    write_atomic(&tmp.join("model.safetensors"), &safetensors_bytes(weights)?)?;
    write_atomic(&tmp.join("optimizer.safetensors"), &safetensors_bytes(optimizer)?)?;
    write_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(state)?.as_bytes())?;
    let dest = root.join(&name);
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::rename(&tmp, &dest).with_context(|| format!("cannot move checkpoint into {}", dest.display()))?;
    let all = list(run)?;
    for old in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old).with_context(|| format!("cannot delete old checkpoint {}", old.display()))?;
    }
    Ok(dest)
}

/// Complete checkpoints of a run, oldest first.
pub fn list(run: &Path) -> Result<Vec<PathBuf>> {
    let root = checkpoints_dir(run);
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")) && p.join("state.json").is_file()
        })
        .collect();
    found.sort();
    Ok(found)
}

/// A checkpoint read back.
pub struct Restored {
    pub dir: PathBuf,
    pub state: RunState,
    pub weights: Weights,
    pub optimizer_file: PathBuf,
}

/// Reads the newest checkpoint of a run.
pub fn load_latest(run: &Path, device: &Device) -> Result<Restored> {
    let Some(dir) = list(run)?.pop() else {
        bail!("{} has no checkpoint to resume from (checkpoints/step-*/state.json)", run.display());
    };
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).with_context(|| format!("cannot read {}", state_path.display()))?;
    let state: RunState =
        serde_json::from_str(&text).with_context(|| format!("{} is not a distil run state", state_path.display()))?;
    let weights_path = dir.join("model.safetensors");
    let weights = candle_core::safetensors::load(&weights_path, device)
        .with_context(|| format!("cannot read {}", weights_path.display()))?
        .into_iter()
        .collect();
    Ok(Restored { optimizer_file: dir.join("optimizer.safetensors"), dir, state, weights })
}
