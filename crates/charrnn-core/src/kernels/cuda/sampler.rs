//! Generation on the GPU. Per character: one kernel per layer (each unit's dot products and
//! gates, fused) and one for the output layer and the draw. The chosen ids stay on the device
//! and feed the next step, so the host neither waits nor allocates per character: it sends the
//! random numbers for a chunk of characters and reads the chunk's ids back once.

use candle_core::cuda::cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig};
use candle_core::{bail, CudaDevice, DType, Device, Result, Tensor};

use std::sync::Arc;

use super::{addr, err, kernel, launch, per_warp, tensor_addr};

/// Shared memory the draw kernel may use per block without asking for more (3 words per
/// vocabulary entry).
const MAX_VOCAB: usize = 48 * 1024 / 12;

/// A GRU layer's weights: W_ih and b_ih (layers above the first), W_hh [3H, H] and b_hh.
pub struct LayerWeights {
    pub input: Option<(Tensor, Tensor)>,
    pub w_hh: Tensor,
    pub b_hh: Tensor,
}

/// What the sampler samples from: the first layer's input table [V, 3H] (embedding · W_ihᵀ +
/// b_ih), the recurrent layers, and the output layer W [V, H], b [V]; all on the GPU. The
/// sampler keeps contiguous f32 copies and takes their addresses at each launch.
pub struct SamplerWeights {
    pub table: Tensor,
    pub layers: Vec<LayerWeights>,
    pub dense_w: Tensor,
    pub dense_b: Tensor,
}

/// A tensor's address, or 0 (the kernel's "none") for an absent one.
fn addr_or_null(t: Option<&Tensor>) -> Result<u64> {
    t.map_or(Ok(0), tensor_addr)
}

pub struct GpuSampler {
    dev: CudaDevice,
    batch: usize,
    hidden: usize,
    vocab: usize,
    /// The first layer's input projection of every character, [V, 3H].
    table: Tensor,
    layers: Vec<LayerWeights>,
    dense_w: Tensor,
    dense_b: Tensor,
    /// Two state buffers [B, H] per layer: a step reads one and writes the other.
    states: Vec<[CudaSlice<f32>; 2]>,
    current: usize,
    /// The ids each sequence reads next, [B].
    ids: CudaSlice<u32>,
    /// The two kernels of a character, looked up once rather than per character.
    step_kernel: (Arc<CudaStream>, CudaFunction),
    draw_kernel: (Arc<CudaStream>, CudaFunction),
}

impl GpuSampler {
    /// A sampler for `batch` sequences of a GRU whose weights are on the GPU.
    pub fn new(weights: SamplerWeights, batch: usize) -> anyhow::Result<Self> {
        let Device::Cuda(dev) = weights.table.device() else {
            anyhow::bail!("the GPU sampler needs weights on the GPU")
        };
        let ((v, h), (v_table, width)) = (weights.dense_w.dims2()?, weights.table.dims2()?);
        if v_table != v || width != 3 * h || weights.layers.is_empty() {
            anyhow::bail!(
                "GPU sampler: table {:?} and output layer {:?} do not fit",
                weights.table.dims(),
                weights.dense_w.dims()
            );
        }
        for layer in &weights.layers {
            let input_fits =
                layer.input.as_ref().is_none_or(|(w, b)| w.dims() == [3 * h, h] && b.dims() == [3 * h]);
            if !input_fits || layer.w_hh.dims() != [3 * h, h] || layer.b_hh.dims() != [3 * h] {
                anyhow::bail!("GPU sampler: a layer's weights are not those of a GRU of {h} units");
            }
        }
        if v > MAX_VOCAB {
            anyhow::bail!("the GPU sampler handles up to {MAX_VOCAB} distinct characters, the model has {v}");
        }
        let own = |t: &Tensor| -> Result<Tensor> { t.to_dtype(DType::F32)?.contiguous() };
        let table = own(&weights.table)?;
        let mut layers = Vec::new();
        for (l, p) in weights.layers.iter().enumerate() {
            let input = match (&p.input, l) {
                (Some((w, b)), 1..) => Some((own(w)?, own(b)?)),
                (None, 0) => None,
                _ => anyhow::bail!("GPU sampler: only the layers above the first have input weights"),
            };
            layers.push(LayerWeights { input, w_hh: own(&p.w_hh)?, b_hh: own(&p.b_hh)? });
        }
        let (dense_w, dense_b) = (own(&weights.dense_w)?, own(&weights.dense_b)?);
        let states = (0..layers.len())
            .map(|_| Ok([dev.alloc_zeros::<f32>(batch * h)?, dev.alloc_zeros::<f32>(batch * h)?]))
            .collect::<Result<_>>()?;
        Ok(GpuSampler {
            dev: dev.clone(),
            batch,
            hidden: h,
            vocab: v,
            table,
            layers,
            dense_w,
            dense_b,
            states,
            current: 0,
            ids: dev.alloc_zeros::<u32>(batch)?,
            step_kernel: kernel(dev, "gru_sample_step")?,
            draw_kernel: kernel(dev, "sample_draw")?,
        })
    }

    /// Back to the zero state.
    pub fn reset(&mut self) -> Result<()> {
        let stream = self.dev.cuda_stream();
        for pair in &mut self.states {
            for s in pair.iter_mut() {
                stream.memset_zeros(s).map_err(err)?;
            }
        }
        Ok(())
    }

    /// Feeds one id to each sequence.
    pub fn feed(&mut self, ids: &[u32]) -> Result<()> {
        self.dev.cuda_stream().memcpy_htod(ids, &mut self.ids).map_err(err)?;
        self.step()
    }

    /// Every layer takes one step on the ids in the device buffer.
    fn step(&mut self) -> Result<()> {
        let (now, next) = (self.current, 1 - self.current);
        let table = tensor_addr(&self.table)?;
        for (l, w) in self.layers.iter().enumerate() {
            let below = if l == 0 { 0 } else { addr(&self.states[l - 1][next], 0) };
            let w_ih = addr_or_null(w.input.as_ref().map(|(w, _)| w))?;
            let b_ih = addr_or_null(w.input.as_ref().map(|(_, b)| b))?;
            launch!(self.step_kernel, per_warp(self.hidden);
                self.batch as i32, self.hidden as i32, table, addr(&self.ids, 0),
                below, w_ih, b_ih, tensor_addr(&w.w_hh)?, tensor_addr(&w.b_hh)?,
                addr(&self.states[l][now], 0), addr(&self.states[l][next], 0));
        }
        self.current = next;
        Ok(())
    }

    /// Draws `steps` characters for every sequence ([steps, batch] ids), each from the state
    /// the previous one left, as [`crate::model::sample::Picker`] does: `uniforms` holds one number in
    /// [0, 1) per character (none for greedy decoding), `top_k` 0 and a negative `top_p` mean
    /// no cut.
    pub fn sample(
        &mut self,
        steps: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        uniforms: &[f32],
    ) -> Result<Vec<u32>> {
        let n = self.batch;
        let greedy = temperature == 0.0;
        if !greedy && uniforms.len() != steps * n {
            bail!("GPU sampler: {} random numbers for {} characters", uniforms.len(), steps * n);
        }
        let uniforms = self.dev.clone_htod(if greedy { &[0.0f32][..] } else { uniforms })?;
        let out = self.dev.alloc_zeros::<u32>(steps * n)?;
        let blocks = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: (3 * self.vocab * 4) as u32,
        };
        let (dense_w, dense_b) = (tensor_addr(&self.dense_w)?, tensor_addr(&self.dense_b)?);
        for s in 0..steps {
            let top = addr(&self.states[self.layers.len() - 1][self.current], 0);
            let u = if greedy { addr(&uniforms, 0) } else { addr(&uniforms, s * n) };
            launch!(self.draw_kernel, blocks;
                self.hidden as i32, self.vocab as i32, dense_w, dense_b, top,
                u, temperature, top_k as i32, top_p, addr(&self.ids, 0), addr(&out, s * n));
            self.step()?;
        }
        self.dev.clone_dtoh(&out)
    }
}
