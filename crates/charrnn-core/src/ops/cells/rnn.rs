//! Elman's recurrent network, PyTorch's `nn.RNN` with its default tanh (char-rnn's `rnn`):
//!
//! ```text
//! h' = tanh(x + W_hh h + b_hh)
//! ```
//!
//! One gate, no state besides h; the tape keeps h' for the derivative of tanh.

use super::{RecurrentCell, StepBackward, StepForward};
use crate::kernels::cpu::float::Float;
use crate::kernels::cpu::{per_kernel, Kernel};

pub(crate) struct Elman;

impl RecurrentCell for Elman {
    const NAME: &'static str = "rnn";
    const GATES: usize = 1;
    const EXTRA_STATE: usize = 0;
    const TAPE: usize = 1;

    // Each slice its own argument, so that the compiler knows they do not overlap.
    fn forward<T: Float>(kernel: Kernel, s: StepForward<'_, T>) {
        forward(kernel, s.h, s.tape, s.x, s.gh, s.b_hh)
    }

    fn backward<T: Float>(kernel: Kernel, s: StepBackward<'_, T>) {
        backward(kernel, s.dx, s.dgh, s.dh, s.dh_out, s.tape)
    }
}

per_kernel! {
fn forward<T: Float, I: Isa>(h_out: &mut [T], tape: &mut [T], x: &[T], gh: &[T], b_hh: &[T]) {
    let h = h_out.len();
    let (x, gh, b_hh, tape) = (&x[..h], &gh[..h], &b_hh[..h], &mut tape[..h]);
    for (j, out) in h_out.iter_mut().enumerate() {
        let y = T::tanh_::<I>(x[j] + gh[j] + b_hh[j]);
        *out = y;
        tape[j] = y;
    }
}
}

per_kernel! {
/// The pre-activation gradient is the same for the input projection and the recurrent term;
/// all of dL/dh_prev goes through W_hh, so `dh` is left zero.
fn backward<T: Float, I: Isa>(dx: &mut [T], dgh: &mut [T], dh: &mut [T], dh_out: &[T], tape: &[T]) {
    let h = dh.len();
    let (y, dh_out) = (&tape[..h], &dh_out[..h]);
    let (dx, dgh) = (&mut dx[..h], &mut dgh[..h]);
    for (j, dh) in dh.iter_mut().enumerate() {
        let pre = (*dh + dh_out[j]) * (T::one() - y[j] * y[j]);
        dx[j] = pre;
        dgh[j] = pre;
        *dh = T::zero();
    }
}
}
