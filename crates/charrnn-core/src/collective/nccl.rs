//! NCCL for ranks that train on GPUs (feature `nccl`): the gradients are summed where they are,
//! in GPU memory, by NCCL's all-reduce on candle's stream; the few control values (stop flags,
//! fingerprints, validation sums) go through the host collective that started the ranks (MPI
//! in the binary), which also carries NCCL's unique id from rank 0 to the others.

use anyhow::{anyhow, bail, Result};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{DType, Device, Storage, Tensor};

use super::Collective;

/// A GPU world: NCCL for tensors, `host` for everything else.
pub struct Nccl<'a> {
    comm: Comm,
    device: candle_core::CudaDevice,
    host: &'a dyn Collective,
}

// SAFETY: the communicator is used only through `&self` methods that enqueue work on candle's
// one stream for the device, from the thread that runs the training (every rank makes its
// collective calls in the same order from one thread); NCCL's communicator may be used from
// any thread as long as calls on it are not concurrent, which that order guarantees.
unsafe impl Send for Nccl<'_> {}
// SAFETY: as for Send.
unsafe impl Sync for Nccl<'_> {}

impl<'a> Nccl<'a> {
    /// The NCCL communicator of `host`'s ranks, each on its `device` (every rank must call
    /// this together).
    pub fn new(host: &'a dyn Collective, device: &Device) -> Result<Self> {
        let Device::Cuda(cuda) = device else { bail!("NCCL needs each rank on a CUDA GPU") };
        // The 128-byte id, as 16 words through the host collective.
        let mut words = [0u64; 16];
        if host.rank() == 0 {
            let id = Id::new().map_err(|e| anyhow!("NCCL could not make its id: {e:?}"))?;
            for (word, bytes) in words.iter_mut().zip(id.internal().chunks_exact(8)) {
                *word = u64::from_le_bytes(std::array::from_fn(|i| bytes[i] as u8));
            }
        }
        host.broadcast_u64(&mut words)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (bytes, word) in internal.chunks_exact_mut(8).zip(words) {
            for (b, v) in bytes.iter_mut().zip(word.to_le_bytes()) {
                *b = v as std::ffi::c_char;
            }
        }
        let comm = Comm::from_rank(cuda.cuda_stream(), host.rank(), host.size(), Id::uninit(internal))
            .map_err(|e| anyhow!("NCCL could not join rank {} of {}: {e:?}", host.rank(), host.size()))?;
        Ok(Nccl { comm, device: cuda.clone(), host })
    }
}

impl Collective for Nccl<'_> {
    fn rank(&self) -> usize {
        self.host.rank()
    }
    fn size(&self) -> usize {
        self.host.size()
    }
    fn sum_f32(&self, values: &mut [f32]) -> Result<()> {
        self.host.sum_f32(values)
    }
    fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
        self.host.sum_f64(values)
    }
    fn max_u64(&self, values: &mut [u64]) -> Result<()> {
        self.host.max_u64(values)
    }
    fn broadcast_u64(&self, values: &mut [u64]) -> Result<()> {
        self.host.broadcast_u64(values)
    }

    fn sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        if !t.device().is_cuda() {
            return super::sum_through_host(self, t);
        }
        let t = t.to_dtype(DType::F32)?.contiguous()?;
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(s) = &*storage else { bail!("expected a tensor on the GPU") };
        let Some((start, end)) = layout.contiguous_offsets() else { bail!("expected a contiguous tensor") };
        let src = s.as_cuda_slice::<f32>()?.slice(start..end);
        let mut out = self.device.alloc_zeros::<f32>(end - start)?;
        self.comm
            .all_reduce(&src, &mut out, &ReduceOp::Sum)
            .map_err(|e| anyhow!("NCCL's all-reduce failed: {e:?}"))?;
        drop(storage);
        Ok(crate::kernels::cuda::tensor(out, &self.device, t.shape()))
    }
}
