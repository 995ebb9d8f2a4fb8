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

pub struct Gru;

impl RecurrentCell for Gru {
    const NAME: &'static str = "gru";
    const GATES: usize = 3;
    const EXTRA_STATE: usize = 0;
    const TAPE: usize = 4;
    const GPU: bool = true;

    fn forward<T: Float>(kernel: Kernel, step: StepForward<'_, T>) {
        forward(kernel, step)
    }

    fn backward<T: Float>(kernel: Kernel, step: StepBackward<'_, T>) {
        backward(kernel, step)
    }
}

per_kernel! {
fn forward<T: Float, I: Isa>(s: StepForward<'_, T>) {
    let h = s.h.len();
    let (xr, xz, xn) = (&s.x[..h], &s.x[h..2 * h], &s.x[2 * h..3 * h]);
    let (gr, gz, gn) = (&s.gh[..h], &s.gh[h..2 * h], &s.gh[2 * h..3 * h]);
    let (br, bz, bn) = (&s.b_hh[..h], &s.b_hh[h..2 * h], &s.b_hh[2 * h..3 * h]);
    let (h_prev, h_out) = (&s.h_prev[..h], s.h);
    let (r_out, rest) = s.tape[..4 * h].split_at_mut(h);
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
fn backward<T: Float, I: Isa>(s: StepBackward<'_, T>) {
    let h = s.dh.len();
    let one = T::one();
    let tape = s.tape;
    let (r, z, n, ghn) = (&tape[..h], &tape[h..2 * h], &tape[2 * h..3 * h], &tape[3 * h..4 * h]);
    let (dxr, rest) = s.dx[..3 * h].split_at_mut(h);
    let (dxz, dxn) = rest.split_at_mut(h);
    let (dgr, rest) = s.dgh[..3 * h].split_at_mut(h);
    let (dgz, dgn) = rest.split_at_mut(h);
    let (dh, dh_out, h_prev) = (s.dh, &s.dh_out[..h], &s.h_prev[..h]);
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
