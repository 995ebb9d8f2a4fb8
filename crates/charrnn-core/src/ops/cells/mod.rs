//! The recurrent cells. Each cell is one file: its gate arithmetic for one batch row, forward
//! and backward, and the few facts the rest of the program needs (gate count, state, what the
//! backward pass keeps). The recurrent sweep (`crate::ops::recurrent`), the sampler and the parameter
//! layout are written once, generic over `RecurrentCell`.
//!
//! To add a cell: write its file, then add one arm to [`Cell`] and to `with_cell!` below.

mod gru;
mod lstm;
mod rnn;

pub(crate) use gru::Gru;
pub(crate) use lstm::Lstm;
pub(crate) use rnn::Elman;

use crate::kernels::cpu::float::Float;
use crate::kernels::cpu::Kernel;

/// The cell a model uses; its lowercase name is the `--cell` value and the PyTorch module name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cell {
    /// The tutorial's GRU (PyTorch's and cuDNN's formulation).
    #[default]
    Gru,
    /// PyTorch's LSTM, forget-gate bias 1.
    Lstm,
    /// Elman's RNN with tanh (PyTorch's nn.RNN, char-rnn's rnn).
    Rnn,
}

impl crate::choice::Choice for Cell {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (Cell::Gru, "gru", "The tutorial's GRU (PyTorch's and cuDNN's formulation)"),
        (Cell::Lstm, "lstm", "PyTorch's LSTM, forget-gate bias 1"),
        (Cell::Rnn, "rnn", "Elman's RNN with tanh (PyTorch's nn.RNN, char-rnn's rnn)"),
    ];
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A cell without GPU kernels, asked to run on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoGpuKernels(pub Cell);

impl std::fmt::Display for NoGpuKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--cell {} has no GPU kernels yet; train it with --device cpu", self.0.name())
    }
}

impl std::error::Error for NoGpuKernels {}

/// Runs `$body` with `$C` naming the type of `$cell`'s [`RecurrentCell`].
macro_rules! with_cell {
    ($cell:expr, $C:ident => $body:expr) => {
        match $cell {
            $crate::ops::cells::Cell::Gru => {
                type $C = $crate::ops::cells::Gru;
                $body
            }
            $crate::ops::cells::Cell::Lstm => {
                type $C = $crate::ops::cells::Lstm;
                $body
            }
            $crate::ops::cells::Cell::Rnn => {
                type $C = $crate::ops::cells::Elman;
                $body
            }
        }
    };
}
pub(crate) use with_cell;

impl Cell {
    /// Gates per unit: W_ih and W_hh have this many blocks of H rows.
    pub fn gates(self) -> usize {
        with_cell!(self, C => C::GATES)
    }

    /// Vectors of H per sequence in the state: h, then any others (an LSTM's c).
    pub fn state_parts(self) -> usize {
        with_cell!(self, C => 1 + C::EXTRA_STATE)
    }

    /// The prefix of the parameter names, as PyTorch's module would have it (`gru`, `lstm`).
    pub fn name(self) -> &'static str {
        with_cell!(self, C => C::NAME)
    }

    /// Whether the GPU has kernels for this cell.
    pub fn on_gpu(self) -> bool {
        with_cell!(self, C => C::GPU)
    }

    /// Refuses to train or score a cell without GPU kernels on a GPU, saying what to do.
    pub fn require_gpu_kernels(self) -> Result<(), NoGpuKernels> {
        match self.on_gpu() {
            true => Ok(()),
            false => Err(NoGpuKernels(self)),
        }
    }

    /// Sets the initial values of a layer's input bias b_ih ([G·H], zero on entry).
    pub fn init_bias_ih(self, bias: &mut [f32], hidden: usize) {
        with_cell!(self, C => C::init_bias_ih(bias, hidden))
    }
}

/// One step of one batch row, forward. `x` is the input projection W_ih·x + b_ih and `gh`
/// the recurrent product W_hh·h_prev without its bias, [G·H] each; the previous state comes in
/// `h_prev` (and `extra_prev`), the new one goes to `h` (and `extra`), and what the backward
/// pass needs to `tape`.
pub(crate) struct StepForward<'a, T> {
    pub x: &'a [T],
    pub gh: &'a [T],
    pub b_hh: &'a [T],
    pub h_prev: &'a [T],
    /// The rest of the previous state, [EXTRA_STATE·H] (empty when the cell has none).
    pub extra_prev: &'a [T],
    pub h: &'a mut [T],
    pub extra: &'a mut [T],
    /// [TAPE·H]
    pub tape: &'a mut [T],
}

/// One step of one batch row, backward. On entry `dh` (and `d_extra`) hold the gradient
/// reaching this step's state through the recurrence, and `dh_out` the gradient from the
/// layer's output. Writes the pre-activation gradients for the input projection (`dx`) and for
/// W_hh·h_prev + b_hh (`dgh`); leaves in `dh` the part of dL/dh_prev that bypasses W_hh (the
/// caller adds dgh·W_hh) and in `d_extra` the gradient of the rest of the previous state.
pub(crate) struct StepBackward<'a, T> {
    pub dh_out: &'a [T],
    pub tape: &'a [T],
    pub h_prev: &'a [T],
    pub extra_prev: &'a [T],
    /// This step's own extra state (an LSTM's c_t).
    pub extra: &'a [T],
    pub dx: &'a mut [T],
    pub dgh: &'a mut [T],
    pub dh: &'a mut [T],
    pub d_extra: &'a mut [T],
}

/// A recurrent cell's arithmetic and shape.
pub(crate) trait RecurrentCell {
    /// PyTorch's module name, the prefix of the parameter names.
    const NAME: &'static str;
    /// Gates per unit: W_ih and W_hh are [GATES·H, ·].
    const GATES: usize;
    /// Vectors of H in the state besides h.
    const EXTRA_STATE: usize;
    /// Values per unit the forward pass keeps for the backward pass.
    const TAPE: usize;
    /// Whether the GPU has kernels for this cell.
    const GPU: bool = false;

    /// Initial values of the input bias b_ih ([G·H], zero on entry); zero unless the cell
    /// says otherwise.
    fn init_bias_ih(_bias: &mut [f32], _hidden: usize) {}

    fn forward<T: Float>(kernel: Kernel, step: StepForward<'_, T>);

    fn backward<T: Float>(kernel: Kernel, step: StepBackward<'_, T>);
}
