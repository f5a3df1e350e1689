//! NCCL's all-reduce between the GPUs of a multi-process run (built with the `nccl` feature).
//!
//! MPI starts and places the ranks; NCCL then moves the gradients GPU to GPU (NVLink,
//! InfiniBand, or whatever it finds) without staging them in host memory. Rank 0 draws NCCL's
//! unique id and MPI broadcasts it, which is all the rendezvous NCCL needs.

use anyhow::{anyhow, bail, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Device, Layout, Shape, Tensor};

use super::mpi::Mpi;

/// One NCCL communicator over all ranks, on this rank's GPU.
pub struct Nccl {
    comm: Comm,
}

// SAFETY: the communicator is used by the training loop's thread alone (as MPI is), one
// collective at a time.
unsafe impl Send for Nccl {}
unsafe impl Sync for Nccl {}

impl Nccl {
    /// Joins every rank's GPU into one communicator; a collective call of all ranks.
    pub fn new(mpi: &Mpi, device: &Device) -> Result<Self> {
        let Device::Cuda(gpu) = device else { bail!("NCCL needs a CUDA device") };
        let mut id = [0u8; 128];
        if mpi.rank == 0 {
            let fresh = Id::new().map_err(|e| anyhow!("cannot create NCCL's unique id: {e:?}"))?;
            for (byte, &c) in id.iter_mut().zip(fresh.internal()) {
                *byte = c as u8;
            }
        }
        mpi.broadcast_bytes(&mut id)?;
        let internal = id.map(|b| b as std::ffi::c_char);
        let comm = Comm::from_rank(gpu.cuda_stream(), mpi.rank, mpi.size, Id::uninit(internal))
            .map_err(|e| anyhow!("cannot join NCCL's communicator as rank {} of {}: {e:?}", mpi.rank, mpi.size))?;
        Ok(Nccl { comm })
    }

    /// The element-wise sum of `t` (float32, on this rank's GPU) over all ranks.
    pub fn sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.contiguous()?.apply_op1_no_bwd(&Sum(&self.comm))?)
    }
}

struct Sum<'a>(&'a Comm);

impl CustomOp1 for Sum<'_> {
    fn name(&self) -> &'static str {
        "nccl-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL sums GPU tensors only")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("nccl-sum: not contiguous") };
        let source = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let gpu = storage.device().clone();
        let mut summed = gpu.alloc_zeros::<f32>(end - start)?;
        self.0
            .all_reduce(&source, &mut summed, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce failed: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(summed, gpu), layout.shape().clone()))
    }
}
