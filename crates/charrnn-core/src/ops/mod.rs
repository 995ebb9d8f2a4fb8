//! candle operations with their own forward and backward: the recurrent sweep over a sequence
//! (generic over the cells), the fused output layer and loss, and Adam's in-place updates.

pub(crate) mod adam;
pub mod cells;
pub(crate) mod head;
pub(crate) mod linear;
pub mod recurrent;
