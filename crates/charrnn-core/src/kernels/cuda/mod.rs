//! The GPU side of the fused layers, the optimizer and the sampler (feature `cuda`): device
//! buffers, cuBLAS products and launches of the kernels in `kernels.cu`.
//!
//! The kernels are CUDA C compiled to PTX by build.rs with the toolkit's nvcc and embedded in
//! the binary, rather than compiled at run time with NVRTC: mistakes surface when the binary
//! is built, not on a user's GPU, start-up compiles nothing, and the binary does not need
//! libnvrtc. The driver turns the PTX into machine code once and caches it.
//!
//! Products and launches take raw device addresses: the per-step products of a sequence
//! address slices of one large buffer, and candle hands custom operations whole storages with
//! an offset. Everything is f32 and runs on candle's stream, in order, so no further
//! synchronisation is needed.
//!
//! The boundary: a function that takes a raw address is an `unsafe fn` whose `# Safety`
//! section says what the address must point to; its callers (the custom operations) derive
//! each address from a storage or tensor they hold for the whole call, and say so. Functions
//! that only touch buffers they allocate are safe. Work is queued on the device's one stream,
//! and freeing a buffer is queued on the same stream, so a buffer held until the call returns
//! outlives the work that uses it.

mod sampler;

pub(crate) use sampler::{GpuSampler, LayerWeights, SamplerWeights};

use candle_core::cuda::cudarc::cublas::{result::sgemm, sys::cublasOperation_t};
use candle_core::cuda::cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig};
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result, Shape, Storage, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));

fn err(e: impl std::error::Error + Send + Sync + 'static) -> candle_core::Error {
    candle_core::Error::Cuda(Box::new(e))
}

/// A kernel of kernels.cu and the stream it runs on.
fn kernel(dev: &CudaDevice, name: &str) -> Result<(std::sync::Arc<CudaStream>, CudaFunction)> {
    Ok((dev.cuda_stream(), dev.get_or_load_custom_func(name, "charrnn", PTX)?.into_cuda_function()))
}

/// Launches `$f` with the given configuration and arguments (each passed by value: i32, f32 or
/// a u64 device address).
macro_rules! launch {
    ($f:expr, $cfg:expr; $($arg:expr),+ $(,)?) => {{
        use candle_core::cuda::cudarc::driver::PushKernelArg as _;
        let (stream, function) = &$f;
        let mut args = stream.launch_builder(function);
        $(
            let arg = $arg;
            args.arg(&arg);
        )+
        // SAFETY: each call site passes the arguments of the kernel's signature in
        // kernels.cu, in order, with buffers of the sizes the kernel indexes (its own
        // allocations, or addresses its caller vouched for).
        unsafe { args.launch($cfg) }.map_err(err)?;
    }};
}
use launch;

/// One thread per element, 256 to a block.
fn per_element(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// One warp per item, 8 warps to a block.
fn per_warp(n: usize) -> LaunchConfig {
    per_element(n * 32)
}

/// The device address of element `offset` of a buffer.
fn addr<T>(s: &CudaSlice<T>, offset: usize) -> u64 {
    s.device_ptr(s.stream()).0 + (offset * std::mem::size_of::<T>()) as u64
}

/// The address of the first element a contiguous f32 layout of a storage covers; valid while
/// the storage lives.
pub(crate) fn storage_addr(s: &CudaStorage, l: &Layout) -> Result<u64> {
    let Some((start, _)) = l.contiguous_offsets() else {
        bail!("a CUDA kernel was handed a non-contiguous tensor")
    };
    Ok(addr(s.as_cuda_slice::<f32>()?, start))
}

/// The address of a contiguous f32 CUDA tensor's data; valid while the tensor lives.
pub(crate) fn tensor_addr(t: &Tensor) -> Result<u64> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) => storage_addr(s, layout),
        _ => bail!("expected a tensor on the GPU"),
    }
}

/// A tensor that owns `data`, outside the autograd graph.
pub(crate) fn tensor(data: CudaSlice<f32>, dev: &CudaDevice, shape: impl Into<Shape>) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(data, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

pub(crate) fn storage(data: CudaSlice<f32>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(data, dev.clone())
}

/// A buffer whose contents are unspecified until written.
fn uninit(dev: &CudaDevice, len: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: every caller writes the buffer in full before reading it.
    unsafe { dev.alloc::<f32>(len.max(1)) }
}

fn filled(dev: &CudaDevice, len: usize, value: f32) -> Result<CudaSlice<f32>> {
    let out = uninit(dev, len)?;
    launch!(kernel(dev, "fill")?, per_element(len); len as i32, value, addr(&out, 0));
    Ok(out)
}

/// The inverted-dropout mask of `n` elements made on the GPU (see `model::dropout_mask`),
/// counted from element `first` of a larger mask: `base` is the mixed seed, `threshold` the drop probability in units of 2⁻³², `keep` the
/// scale of the kept elements. No host memory and no upload.
pub(crate) fn dropout_mask(
    dev: &CudaDevice,
    n: usize,
    first: u64,
    base: u64,
    threshold: u64,
    keep: f32,
) -> Result<CudaSlice<f32>> {
    let out = uninit(dev, n)?;
    launch!(kernel(dev, "dropout_mask")?, per_element(n); n as u64, first, base, threshold, keep, addr(&out, 0));
    Ok(out)
}

/// C[m×n] = op(A)·op(B) + β·C with row-major operands, op(X) = Xᵀ where the flag is set.
/// cuBLAS is column-major, so it computes Cᵀ = op(B)ᵀ·op(A)ᵀ. Full f32 unless `tf32`: then f32
/// in and out, products on the tensor cores.
///
/// # Safety
/// `a`, `b` and `c` must be addresses of f32 device memory on `dev` holding at least m·k, k·n
/// and m·n elements, alive until the queued product has run.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    dev: &CudaDevice,
    tf32: bool,
    m: usize,
    n: usize,
    k: usize,
    a: u64,
    ta: bool,
    b: u64,
    tb: bool,
    beta: f32,
    c: u64,
) -> Result<()> {
    let op = |t| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let blas = dev.cublas_handle();
    let (lda, ldb) = (if tb { k } else { n }, if ta { m } else { k });
    let (m, n, k, lda, ldb) = (m as i32, n as i32, k as i32, lda as i32, ldb as i32);
    if tf32 {
        use candle_core::cuda::cudarc::cublas::{result::gemm_ex, sys};
        let (f32_, tf32) =
            (sys::cudaDataType_t::CUDA_R_32F, sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32);
        let (one, beta) = (&1.0f32 as *const f32 as *const _, &beta as *const f32 as *const _);
        // SAFETY: as below; the same operands, described as f32 to cublasGemmEx.
        return unsafe {
            gemm_ex(
                *blas.handle(),
                op(tb),
                op(ta),
                n,
                m,
                k,
                one,
                b as *const _,
                f32_,
                lda,
                a as *const _,
                f32_,
                ldb,
                beta,
                c as *mut _,
                f32_,
                n,
                tf32,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )
        }
        .map_err(err);
    }
    // SAFETY: the caller vouches for the three buffers' sizes and lifetimes (this function's
    // contract); the dimensions and leading dimensions describe exactly those sizes.
    unsafe {
        sgemm(
            *blas.handle(),
            op(tb),
            op(ta),
            n,
            m,
            k,
            &1.0,
            b as *const f32,
            lda,
            a as *const f32,
            ldb,
            &beta,
            c as *mut f32,
            n,
        )
    }
    .map_err(err)
}

/// What the GRU's forward pass keeps for its backward pass (see src/ops/recurrent.rs).
pub(crate) struct GruTape {
    /// Products on TF32 tensor cores, as in the forward pass.
    tf32: bool,
    batch: usize,
    steps: usize,
    hidden: usize,
    vocab: usize,
    ids: CudaSlice<u32>,
    /// The ids are 0, 1, 2, … (a layer above the first): the table's gradient is dx itself.
    identity: bool,
    /// h_{t−1} for every step t, then h_T: [T + 1, B, H], slot 0 the initial state.
    hs: CudaSlice<f32>,
    gates: CudaSlice<f32>,
}

/// The GRU forward pass on the GPU: per step one product h·W_hhᵀ and one gate kernel. `table`
/// [V, 3H], `w_hh` [3H, H], `b_hh` [3H], `h0` [B, H] are device addresses. Returns the outputs
/// [B, T, H] and, with `keep`, the tape.
///
/// # Safety
/// `table`, `w_hh`, `b_hh` and `h0` must be addresses of f32 device memory on `dev` with at
/// least the elements their shapes above describe, alive until the queued work has run; every
/// id must be below `vocab`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gru_forward(
    dev: &CudaDevice,
    tf32: bool,
    (batch, steps, hidden, vocab): (usize, usize, usize, usize),
    table: u64,
    ids: &[u32],
    w_hh: u64,
    b_hh: u64,
    h0: Option<u64>,
    keep: bool,
) -> Result<(CudaSlice<f32>, Option<GruTape>)> {
    let (bh, bh3) = (batch * hidden, batch * 3 * hidden);
    let ids_dev = dev.clone_htod(ids)?;
    let hs = dev.alloc_zeros::<f32>((steps + 1) * bh)?;
    if let Some(h0) = h0 {
        launch!(kernel(dev, "copy")?, per_element(bh); bh as i32, h0, addr(&hs, 0));
    }
    let gates = if keep { Some(uninit(dev, steps * batch * 4 * hidden)?) } else { None };
    let gh = uninit(dev, bh3)?;
    let out = uninit(dev, batch * steps * hidden)?;
    let gate_kernel = kernel(dev, "gru_gates_forward")?;
    for t in 0..steps {
        // SAFETY: slot t of hs [B, H] and gh [B, 3H] are this function's buffers; w_hh is [3H, H] by its contract.
        unsafe {
            gemm(
                dev,
                tf32,
                batch,
                3 * hidden,
                hidden,
                addr(&hs, t * bh),
                false,
                w_hh,
                true,
                0.0,
                addr(&gh, 0),
            )
        }?;
        let gates_now = gates.as_ref().map_or(0, |g| addr(g, t * batch * 4 * hidden));
        launch!(gate_kernel, per_element(bh);
            batch as i32, steps as i32, hidden as i32, t as i32,
            table, addr(&ids_dev, 0), addr(&gh, 0), b_hh,
            addr(&hs, t * bh), addr(&hs, (t + 1) * bh), gates_now, addr(&out, 0));
    }
    let identity = vocab == ids.len() && ids.iter().enumerate().all(|(i, &id)| id as usize == i);
    let tape =
        gates.map(|gates| GruTape { tf32, batch, steps, hidden, vocab, ids: ids_dev, identity, hs, gates });
    Ok((out, tape))
}

impl GruTape {
    /// Backpropagation through time: `grad_out` [B, T, H] and `w_hh` are device addresses.
    /// Returns the gradients of the table [V, 3H], W_hh [3H, H] and b_hh [3H].
    ///
    /// # Safety
    /// `grad_out` and `w_hh` must be addresses of f32 device memory on `dev` with at least
    /// B·T·H and 3H·H elements, alive until the queued work has run.
    pub(crate) unsafe fn backward(
        &self,
        dev: &CudaDevice,
        grad_out: u64,
        w_hh: u64,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)> {
        let (batch, steps, h) = (self.batch, self.steps, self.hidden);
        let (bh, bh3, rows) = (batch * h, batch * 3 * h, batch * steps);
        let dh = dev.alloc_zeros::<f32>(bh)?;
        let dgh = uninit(dev, steps * bh3)?; // time-major [T, B, 3H]
        let dx = uninit(dev, rows * 3 * h)?; // batch-major [B·T, 3H]
        let gate_kernel = kernel(dev, "gru_gates_backward")?;
        for t in (0..steps).rev() {
            launch!(gate_kernel, per_element(bh);
                batch as i32, steps as i32, h as i32, t as i32,
                grad_out, addr(&self.gates, t * batch * 4 * h), addr(&self.hs, t * bh),
                addr(&dh, 0), addr(&dgh, t * bh3), addr(&dx, 0));
            if t > 0 {
                // dL/dh_{t−1} += dgh_t · W_hh
                // SAFETY: step t of dgh [B, 3H] and dh [B, H] are this function's buffers; w_hh is [3H, H] by its contract.
                unsafe {
                    gemm(
                        dev,
                        self.tf32,
                        batch,
                        h,
                        3 * h,
                        addr(&dgh, t * bh3),
                        false,
                        w_hh,
                        false,
                        1.0,
                        addr(&dh, 0),
                    )
                }?;
            }
        }
        // dW_hh = Σ_t dgh_tᵀ · h_{t−1}: slots 0..T of hs line up with the steps of dgh.
        let d_w = uninit(dev, 3 * h * h)?;
        // SAFETY: dgh [T·B, 3H] and d_w [3H, H] are this function's buffers, hs's first T slots [T·B, H] the tape's.
        unsafe {
            gemm(
                dev,
                self.tf32,
                3 * h,
                h,
                rows,
                addr(&dgh, 0),
                true,
                addr(&self.hs, 0),
                false,
                0.0,
                addr(&d_w, 0),
            )
        }?;
        let ones = filled(dev, rows, 1.0)?;
        let d_b = uninit(dev, 3 * h)?;
        // SAFETY: ones [T·B], dgh [T·B, 3H] and d_b [3H] are this function's buffers.
        unsafe {
            gemm(
                dev,
                self.tf32,
                1,
                3 * h,
                rows,
                addr(&ones, 0),
                false,
                addr(&dgh, 0),
                false,
                0.0,
                addr(&d_b, 0),
            )
        }?;
        if self.identity {
            return Ok((dx, d_w, d_b));
        }
        // Rows sharing a token id add up: d_table = onehot(ids) · dx, one product, same result
        // on every run (atomic adds would sum in a different order each time).
        let one_hot = uninit(dev, self.vocab * rows)?;
        launch!(kernel(dev, "one_hot")?, per_element(self.vocab * rows);
            rows as i32, self.vocab as i32, addr(&self.ids, 0), addr(&one_hot, 0));
        let d_table = uninit(dev, self.vocab * 3 * h)?;
        // SAFETY: one_hot [V, T·B], dx [T·B, 3H] and d_table [V, 3H] are this function's.
        unsafe {
            gemm(
                dev,
                self.tf32,
                self.vocab,
                3 * h,
                rows,
                addr(&one_hot, 0),
                false,
                addr(&dx, 0),
                false,
                0.0,
                addr(&d_table, 0),
            )
        }?;
        Ok((d_table, d_w, d_b))
    }
}

/// What the output layer's forward pass keeps: softmax probabilities [N, V] and the targets.
pub(crate) struct HeadTape {
    /// Products on TF32 tensor cores, as in the forward pass.
    tf32: bool,
    probs: CudaSlice<f32>,
    targets: CudaSlice<u32>,
}

/// Mean cross-entropy of softmax(hs·Wᵀ + b) against `targets`: hs [N, H], W [V, H], b [V] as
/// device addresses. Returns the one-element loss and the tape.
///
/// # Safety
/// `hs`, `w` and `b` must be addresses of f32 device memory on `dev` with at least N·H, V·H
/// and V elements, alive until the queued work has run; every target must be below V.
pub(crate) unsafe fn head_forward(
    dev: &CudaDevice,
    tf32: bool,
    (n, h, v): (usize, usize, usize),
    hs: u64,
    w: u64,
    b: u64,
    targets: &[u32],
) -> Result<(CudaSlice<f32>, HeadTape)> {
    let targets = dev.clone_htod(targets)?;
    let probs = uninit(dev, n * v)?;
    // SAFETY: hs [N, H] and w [V, H] by this function's contract; probs [N, V] is allocated here.
    unsafe { gemm(dev, tf32, n, v, h, hs, false, w, true, 0.0, addr(&probs, 0)) }?;
    let row_loss = uninit(dev, n)?;
    launch!(kernel(dev, "softmax_cross_entropy")?, per_warp(n);
        n as i32, v as i32, b, addr(&targets, 0), addr(&probs, 0), addr(&row_loss, 0));
    let loss = uninit(dev, 1)?;
    let one_block = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
    launch!(kernel(dev, "sum_scaled")?, one_block; n as i32, addr(&row_loss, 0), 1.0 / n as f32, addr(&loss, 0));
    Ok((loss, HeadTape { tf32, probs, targets }))
}

impl HeadTape {
    /// Gradients of hs [N, H], W [V, H] and b [V], given the gradient `g` of the loss (a
    /// one-element device buffer).
    ///
    /// # Safety
    /// `hs`, `w` and `g` must be addresses of f32 device memory on `dev` with at least N·H,
    /// V·H and 1 elements, alive until the queued work has run.
    pub(crate) unsafe fn backward(
        self,
        dev: &CudaDevice,
        (n, h, v): (usize, usize, usize),
        hs: u64,
        w: u64,
        g: u64,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)> {
        let (d, tf32) = (self.probs, self.tf32);
        launch!(kernel(dev, "cross_entropy_grad")?, per_element(n * v);
            n as i32, v as i32, addr(&self.targets, 0), g, addr(&d, 0));
        let d_hs = uninit(dev, n * h)?;
        // SAFETY: d [N, V] is the tape's, w [V, H] by this function's contract, d_hs [N, H] allocated here.
        unsafe { gemm(dev, tf32, n, h, v, addr(&d, 0), false, w, false, 0.0, addr(&d_hs, 0)) }?;
        let d_w = uninit(dev, v * h)?;
        // SAFETY: d [N, V] is the tape's, hs [N, H] by this function's contract, d_w [V, H] allocated here.
        unsafe { gemm(dev, tf32, v, h, n, addr(&d, 0), true, hs, false, 0.0, addr(&d_w, 0)) }?;
        let ones = filled(dev, n, 1.0)?;
        let d_b = uninit(dev, v)?;
        // SAFETY: ones [N], d [N, V] and d_b [V] are this function's or the tape's buffers.
        unsafe { gemm(dev, tf32, 1, v, n, addr(&ones, 0), false, addr(&d, 0), false, 0.0, addr(&d_b, 0)) }?;
        Ok((d_hs, d_w, d_b))
    }
}

/// Adam's moment update in place (see src/optim.rs).
///
/// # Safety
/// `m` and `g` must be addresses of f32 device memory on `dev` with at least `n` elements each,
/// alive until the queued update has run.
pub(crate) unsafe fn adam_moment(
    dev: &CudaDevice,
    n: usize,
    beta: f32,
    scale: f32,
    square: bool,
    m: u64,
    g: u64,
) -> Result<()> {
    launch!(kernel(dev, "adam_moment")?, per_element(n); n as i32, beta, scale, square as i32, m, g);
    Ok(())
}

/// Adam's weight update in place (see src/optim.rs).
///
/// # Safety
/// `w`, `m` and `v` must be addresses of f32 device memory on `dev` with at least `n` elements
/// each, alive until the queued update has run.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn adam_step(
    dev: &CudaDevice,
    n: usize,
    alpha: f32,
    decay: f32,
    eps: f32,
    w: u64,
    m: u64,
    v: u64,
) -> Result<()> {
    launch!(kernel(dev, "adam_step")?, per_element(n); n as i32, alpha, decay, eps, w, m, v);
    Ok(())
}
