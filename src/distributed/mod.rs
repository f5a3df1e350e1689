//! Data-parallel training across processes: the world of ranks a run belongs to, and the
//! collective operations the trainer needs from it.
//!
//! A run started by `mpirun -np N` is N ranks of one [`World`]; a run started directly is a
//! world of one, where every collective is a no-op. Each rank computes gradients on its part of
//! every global batch, and one all-reduce per optimiser step (over the gradients flattened into
//! buckets, not one call per tensor) gives every rank the same sum, so the ranks' weights stay
//! identical without ever being sent.

pub mod mpi;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{Tensor, Var};

use self::mpi::{Launch, Mpi};
use crate::model::fused::with_f32_slice;

/// Elements per all-reduce call when gradients are exchanged (16 MiB of float32).
const BUCKET: usize = 1 << 22;

/// The ranks of a run. Cloning shares the one MPI session, which ends when the last clone drops.
#[derive(Clone, Default)]
pub struct World {
    mpi: Option<Arc<Mpi>>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "World(rank {} of {})", self.rank(), self.size())
    }
}

impl World {
    /// One process alone.
    pub fn single() -> Self {
        World { mpi: None }
    }

    /// Joins the MPI job when `mpirun` started this process, and is alone otherwise.
    pub fn from_launch() -> Result<Self> {
        match mpi::launch() {
            Launch::Alone => Ok(World::single()),
            Launch::OpenMpi => Ok(World { mpi: Some(Arc::new(Mpi::init()?)) }),
            Launch::Other(what) => {
                bail!("started by {what}; distil's multi-process training runs under Open MPI's mpirun")
            }
        }
    }

    pub fn rank(&self) -> usize {
        self.mpi.as_ref().map_or(0, |m| m.rank)
    }

    pub fn size(&self) -> usize {
        self.mpi.as_ref().map_or(1, |m| m.size)
    }

    /// Rank 0, the one that writes logs, metrics and checkpoints.
    pub fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    /// Element-wise sums over all ranks, in place.
    pub fn sum_f64(&self, data: &mut [f64]) -> Result<()> {
        match &self.mpi {
            Some(m) => m.sum_f64(data),
            None => Ok(()),
        }
    }

    pub fn barrier(&self) -> Result<()> {
        match &self.mpi {
            Some(m) => m.barrier(),
            None => Ok(()),
        }
    }

    /// Ends the whole job: every rank, not only this one.
    pub fn abort(&self, code: i32) -> ! {
        match &self.mpi {
            Some(m) => m.abort(code),
            None => std::process::exit(code),
        }
    }

    /// Sums each parameter's gradient over all ranks. A rank that had nothing to compute (an
    /// empty share of the batch) contributes zeros for the parameters it has no gradient of.
    pub fn sum_gradients(&self, grads: &mut BTreeMap<String, Tensor>, params: &BTreeMap<String, Var>) -> Result<()> {
        let Some(mpi) = &self.mpi else { return Ok(()) };
        // Every rank walks the parameters in the same (name) order, so the buffers line up.
        let total: usize = params.values().map(|p| p.elem_count()).sum();
        let mut flat = Vec::with_capacity(total);
        for (name, param) in params {
            match grads.get(name) {
                Some(g) => with_f32_slice(&g.contiguous()?, |s| {
                    flat.extend_from_slice(s);
                    Ok(())
                })?,
                None => flat.resize(flat.len() + param.elem_count(), 0.0),
            }
        }
        for bucket in flat.chunks_mut(BUCKET) {
            mpi.sum_f32(bucket)?;
        }
        let mut offset = 0;
        for (name, param) in params {
            let n = param.elem_count();
            let summed = Tensor::from_slice(&flat[offset..offset + n], param.shape(), param.device())?;
            grads.insert(name.clone(), summed);
            offset += n;
        }
        Ok(())
    }
}

/// Ranks of this job on this machine, as Open MPI tells its processes.
pub fn local_ranks() -> usize {
    std::env::var("OMPI_COMM_WORLD_LOCAL_SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}
