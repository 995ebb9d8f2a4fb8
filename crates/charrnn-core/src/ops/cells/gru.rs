//! The GRU: PyTorch's and cuDNN's formulation (Keras `reset_after=True`), gate order r, z, n:
//!
//! ```text
//! r = σ(x_r + W_hr h + b_hr)        z = σ(x_z + W_hz h + b_hz)
//! n = tanh(x_n + r ⊙ (W_hn h + b_hn))
//! h' = (1 − z) ⊙ n + z ⊙ h
//! ```
//!
//! The tape keeps r, z, n and the recurrent n-term W_hn h + b_hn.

use super::{RecurrentCell, StepBackward, StepForward};
use crate::kernels::cpu::float::Float;
use crate::kernels::cpu::{per_kernel, Kernel};

pub(crate) struct Gru;

impl RecurrentCell for Gru {
    const NAME: &'static str = "gru";
    const GATES: usize = 3;
    const EXTRA_STATE: usize = 0;
    const TAPE: usize = 4;
    const GPU: bool = true;

    // The passes take each slice as its own argument: references inside a struct do not tell
    // the compiler that they do not overlap, and the loops vectorise less well.
    fn forward<T: Float>(kernel: Kernel, s: StepForward<'_, T>) {
        forward(kernel, s.h, s.tape, s.x, s.gh, s.b_hh, s.h_prev)
    }

    fn backward<T: Float>(kernel: Kernel, s: StepBackward<'_, T>) {
        backward(kernel, s.dx, s.dgh, s.dh, s.dh_out, s.tape, s.h_prev)
    }
}

per_kernel! {
fn forward<T: Float, I: Isa>(h_out: &mut [T], tape: &mut [T], x: &[T], gh: &[T], b_hh: &[T], h_prev: &[T]) {
    let h = h_out.len();
    let (xr, xz, xn) = (&x[..h], &x[h..2 * h], &x[2 * h..3 * h]);
    let (gr, gz, gn) = (&gh[..h], &gh[h..2 * h], &gh[2 * h..3 * h]);
    let (br, bz, bn) = (&b_hh[..h], &b_hh[h..2 * h], &b_hh[2 * h..3 * h]);
    let h_prev = &h_prev[..h];
    let (r_out, rest) = tape[..4 * h].split_at_mut(h);
    let (z_out, rest) = rest.split_at_mut(h);
    let (n_out, ghn_out) = rest.split_at_mut(h);
    for j in 0..h {
        let r = T::sigmoid::<I>(xr[j] + gr[j] + br[j]);
        let z = T::sigmoid::<I>(xz[j] + gz[j] + bz[j]);
        let ghn = gn[j] + bn[j];
        let n = T::tanh_::<I>(xn[j] + r * ghn);
        h_out[j] = n + z * (h_prev[j] - n);
        r_out[j] = r;
        z_out[j] = z;
        n_out[j] = n;
        ghn_out[j] = ghn;
    }
}
}

per_kernel! {
fn backward<T: Float, I: Isa>(dx: &mut [T], dgh: &mut [T], dh: &mut [T], dh_out: &[T], tape: &[T], h_prev: &[T]) {
    let h = dh.len();
    let one = T::one();
    let (r, z, n, ghn) = (&tape[..h], &tape[h..2 * h], &tape[2 * h..3 * h], &tape[3 * h..4 * h]);
    let (dxr, rest) = dx[..3 * h].split_at_mut(h);
    let (dxz, dxn) = rest.split_at_mut(h);
    let (dgr, rest) = dgh[..3 * h].split_at_mut(h);
    let (dgz, dgn) = rest.split_at_mut(h);
    let (dh_out, h_prev) = (&dh_out[..h], &h_prev[..h]);
    for j in 0..h {
        let d = dh[j] + dh_out[j];
        let dn_pre = d * (one - z[j]) * (one - n[j] * n[j]);
        let dz_pre = d * (h_prev[j] - n[j]) * z[j] * (one - z[j]);
        let dr_pre = dn_pre * ghn[j] * r[j] * (one - r[j]);
        dxr[j] = dr_pre;
        dxz[j] = dz_pre;
        dxn[j] = dn_pre;
        dgr[j] = dr_pre;
        dgz[j] = dz_pre;
        dgn[j] = dn_pre * r[j];
        dh[j] = d * z[j];
    }
}
}
