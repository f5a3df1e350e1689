//! Data-parallel training across processes: the world of ranks a run belongs to, and the
//! collective operations the trainer needs from it.
//!
//! A run started by `mpirun -np N` is N ranks of one [`World`]; a run started directly is a
//! world of one, where every collective is a no-op. Each rank computes gradients on its part of
//! every global batch, and one all-reduce per optimiser step (over the gradients flattened into
//! buckets, not one call per tensor) gives every rank the same sum, so the ranks' weights stay
//! identical without ever being sent.

pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor, Var};

use self::mpi::{Launch, Mpi};

/// Elements per all-reduce call when gradients are exchanged (16 MiB of float32).
const BUCKET: usize = 1 << 22;

/// The ranks of a run. Cloning shares the one MPI session, which ends when the last clone drops.
#[derive(Clone, Default)]
pub struct World {
    mpi: Option<Arc<Mpi>>,
    /// GPU-to-GPU sums, once [`World::use_device`] is given a CUDA device.
    #[cfg(feature = "nccl")]
    nccl: Option<Arc<nccl::Nccl>>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "World(rank {} of {})", self.rank(), self.size())
    }
}

impl World {
    /// One process alone.
    pub fn single() -> Self {
        World::default()
    }

    /// Joins the MPI job when `mpirun` started this process, and is alone otherwise.
    pub fn from_launch() -> Result<Self> {
        match mpi::launch() {
            Launch::Alone => Ok(World::single()),
            Launch::OpenMpi => Ok(World {
                mpi: Some(Arc::new(Mpi::init()?)),
                #[cfg(feature = "nccl")]
                nccl: None,
            }),
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

    /// Prepares the collectives for gradients on `device`: with the `nccl` feature and a CUDA
    /// device, an NCCL communicator (a collective call of all ranks); otherwise nothing, and
    /// gradients on a GPU go through host memory and MPI.
    pub fn use_device(&mut self, device: &Device) -> Result<()> {
        #[cfg(feature = "nccl")]
        if let (Some(mpi), true) = (&self.mpi, device.is_cuda()) {
            self.nccl = Some(Arc::new(nccl::Nccl::new(mpi, device)?));
        }
        let _ = device;
        Ok(())
    }

    /// Sums each parameter's gradient over all ranks. A rank that had nothing to compute (an
    /// empty share of the batch) contributes zeros for the parameters it has no gradient of.
    pub fn sum_gradients(&self, grads: &mut BTreeMap<String, Tensor>, params: &BTreeMap<String, Var>) -> Result<()> {
        let Some(mpi) = &self.mpi else { return Ok(()) };
        // Every rank walks the parameters in the same (name) order, so the buffers line up.
        let flat = params
            .iter()
            .map(|(name, param)| match grads.get(name) {
                Some(g) => g.flatten_all(),
                None => param.zeros_like()?.flatten_all(),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let Some(first) = flat.first() else { return Ok(()) };
        let device = first.device().clone();
        let all = Tensor::cat(&flat, 0)?;
        drop(flat);
        let summed = match self.gpu_sum(&all)? {
            Some(summed) => summed,
            None => {
                // Through host memory, in buckets, for gradients on a GPU too.
                let mut host: Vec<f32> = all.to_device(&Device::Cpu)?.to_vec1()?;
                for bucket in host.chunks_mut(BUCKET) {
                    mpi.sum_f32(bucket)?;
                }
                let n = host.len();
                Tensor::from_vec(host, n, &device)?
            }
        };
        let mut offset = 0;
        for (name, param) in params {
            let n = param.elem_count();
            grads.insert(name.clone(), summed.narrow(0, offset, n)?.reshape(param.shape())?);
            offset += n;
        }
        Ok(())
    }

    /// The sum over all ranks by NCCL, when there is a communicator for this tensor's GPU.
    fn gpu_sum(&self, t: &Tensor) -> Result<Option<Tensor>> {
        #[cfg(feature = "nccl")]
        if let (Some(nccl), true) = (&self.nccl, t.device().is_cuda()) {
            return Ok(Some(nccl.sum(t)?));
        }
        let _ = t;
        Ok(None)
    }
}

fn launch_number(name: &str, alone: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(alone)
}

/// Ranks of this job on this machine, as Open MPI tells its processes.
pub fn local_ranks() -> usize {
    launch_number("OMPI_COMM_WORLD_LOCAL_SIZE", 1)
}

/// This process's number among the ranks on its machine (0 when alone).
pub fn local_rank() -> usize {
    launch_number("OMPI_COMM_WORLD_LOCAL_RANK", 0)
}
