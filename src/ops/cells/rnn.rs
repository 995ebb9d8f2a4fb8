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

pub struct Elman;

impl RecurrentCell for Elman {
    const NAME: &'static str = "rnn";
    const GATES: usize = 1;
    const EXTRA_STATE: usize = 0;
    const TAPE: usize = 1;

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
    let (x, gh, b_hh, tape) = (&s.x[..h], &s.gh[..h], &s.b_hh[..h], &mut s.tape[..h]);
    for (j, out) in s.h.iter_mut().enumerate() {
        let y = T::tanh_::<I>(x[j] + gh[j] + b_hh[j]);
        *out = y;
        tape[j] = y;
    }
}
}

per_kernel! {
/// The pre-activation gradient is the same for the input projection and the recurrent term;
/// all of dL/dh_prev goes through W_hh, so `dh` is left zero.
fn backward<T: Float, I: Isa>(s: StepBackward<'_, T>) {
    let h = s.dh.len();
    let (y, dh_out) = (&s.tape[..h], &s.dh_out[..h]);
    let (dx, dgh) = (&mut s.dx[..h], &mut s.dgh[..h]);
    for (j, dh) in s.dh.iter_mut().enumerate() {
        let pre = (*dh + dh_out[j]) * (T::one() - y[j] * y[j]);
        dx[j] = pre;
        dgh[j] = pre;
        *dh = T::zero();
    }
}
}
