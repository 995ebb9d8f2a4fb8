//! The LSTM: PyTorch's, gate order i, f, g, o, with a pre-activation a = x + W_hh h + b_hh:
//!
//! ```text
//! i = σ(a_i)   f = σ(a_f)   g = tanh(a_g)   o = σ(a_o)
//! c' = f ⊙ c + i ⊙ g        h' = o ⊙ tanh(c')
//! ```
//!
//! The state is h and c; the tape keeps the activations i, f, g, o. The input bias of the
//! forget gate starts at 1 (Keras' `unit_forget_bias`: the cell remembers by default until it
//! learns otherwise).

use super::{RecurrentCell, StepBackward, StepForward};
use crate::kernels::cpu::float::Float;
use crate::kernels::cpu::{per_kernel, Kernel};

pub(crate) struct Lstm;

impl RecurrentCell for Lstm {
    const NAME: &'static str = "lstm";
    const GATES: usize = 4;
    const EXTRA_STATE: usize = 1;
    const TAPE: usize = 4;

    fn init_bias_ih(bias: &mut [f32], hidden: usize) {
        bias[hidden..2 * hidden].fill(1.0);
    }

    // Each slice its own argument, so that the compiler knows they do not overlap.
    fn forward<T: Float>(kernel: Kernel, s: StepForward<'_, T>) {
        forward(kernel, s.h, s.extra, s.tape, s.x, s.gh, s.b_hh, s.extra_prev)
    }

    fn backward<T: Float>(kernel: Kernel, s: StepBackward<'_, T>) {
        backward(kernel, s.dx, s.dgh, s.dh, s.d_extra, s.dh_out, s.tape, s.extra_prev, s.extra)
    }
}

per_kernel! {
fn forward<T: Float, I: Isa>(
    h_out: &mut [T],
    c_out: &mut [T],
    gates: &mut [T],
    x: &[T],
    gh: &[T],
    b_hh: &[T],
    c_prev: &[T],
) {
    let h = h_out.len();
    let (c_out, c_prev) = (&mut c_out[..h], &c_prev[..h]);
    let (x, gh, b_hh, gates) = (&x[..4 * h], &gh[..4 * h], &b_hh[..4 * h], &mut gates[..4 * h]);
    for j in 0..h {
        let pre = |k: usize| x[k * h + j] + gh[k * h + j] + b_hh[k * h + j];
        let (i, f, g, o) = (T::sigmoid::<I>(pre(0)), T::sigmoid::<I>(pre(1)), T::tanh_::<I>(pre(2)), T::sigmoid::<I>(pre(3)));
        let c = f * c_prev[j] + i * g;
        c_out[j] = c;
        h_out[j] = o * T::tanh_::<I>(c);
        gates[j] = i;
        gates[h + j] = f;
        gates[2 * h + j] = g;
        gates[3 * h + j] = o;
    }
}
}

per_kernel! {
/// The pre-activation gradients are the same for the input projection and for the recurrent
/// term; all of dL/dh_prev goes through W_hh, so `dh` is left zero.
fn backward<T: Float, I: Isa>(
    dx: &mut [T],
    dgh: &mut [T],
    dh: &mut [T],
    dc: &mut [T],
    dh_out: &[T],
    gates: &[T],
    c_prev: &[T],
    c_now: &[T],
) {
    let h = dh.len();
    let one = T::one();
    let (dc, dh_out, c_prev, c_now) = (&mut dc[..h], &dh_out[..h], &c_prev[..h], &c_now[..h]);
    let (dx, dgh, gates) = (&mut dx[..4 * h], &mut dgh[..4 * h], &gates[..4 * h]);
    for j in 0..h {
        let (i, f, g, o) = (gates[j], gates[h + j], gates[2 * h + j], gates[3 * h + j]);
        let tc = T::tanh_::<I>(c_now[j]);
        let d = dh[j] + dh_out[j];
        let dct = dc[j] + d * o * (one - tc * tc);
        let pre = [
            dct * g * i * (one - i),
            dct * c_prev[j] * f * (one - f),
            dct * i * (one - g * g),
            d * tc * o * (one - o),
        ];
        for (k, v) in pre.into_iter().enumerate() {
            dx[k * h + j] = v;
            dgh[k * h + j] = v;
        }
        dc[j] = dct * f;
        dh[j] = T::zero();
    }
}
}
