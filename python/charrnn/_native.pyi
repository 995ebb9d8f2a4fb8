"""Type stubs of charrnn's extension module (re-exported by `charrnn`)."""

from os import PathLike
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy

__version__: str

class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated, corrupted, foreign or inconsistent."""

class Model:
    """A trained model: a checkpoint's weights and vocabulary."""

    @property
    def path(self) -> str:
        """The checkpoint file."""
    @property
    def info(self) -> Dict[str, Any]:
        """What `charrnn info --json` shows for the checkpoint."""
    @property
    def vocab(self) -> List[str]:
        """The characters the model knows, in id order."""
    @property
    def config(self) -> Dict[str, Any]:
        """The model's shape (cell, layers, sizes)."""
    def generate(
        self,
        start: str = "ROMEO: ",
        length: int = 1000,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        num_samples: int = 1,
        stop: Union[str, Sequence[str], None] = None,
        include_stop: bool = False,
        precision: str = "f32",
    ) -> Union[str, List[str]]:
        """Samples as `charrnn generate` does; the text, its start first (a list of
        `num_samples` texts when that is above 1)."""
    def stream(
        self,
        start: str = "ROMEO: ",
        length: int = 1000,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        include_stop: bool = False,
        precision: str = "f32",
    ) -> "Stream":
        """One sample in pieces as they are produced; they join to `generate`'s text."""
    def score(
        self,
        text: str,
        *,
        seq_len: Optional[int] = None,
        batch_size: Optional[int] = None,
        precision: str = "f32",
    ) -> Dict[str, Any]:
        """`charrnn eval --json`'s report for `text`: characters, skipped,
        unknown_characters, nats_per_char, bits_per_char, perplexity."""
    def probabilities(self, text: str) -> "numpy.ndarray":
        """float32 array (len(text), len(vocab)): row i is the distribution of the character
        after text[: i + 1]. Needs NumPy."""
    def logits(self, text: str) -> "numpy.ndarray":
        """The logits behind `probabilities`: the same shape, before the softmax."""

class Stream(Iterator[str]):
    """The pieces of one sample (`Model.stream`)."""

    def __iter__(self) -> "Stream": ...
    def __next__(self) -> str: ...

def load(path: Union[str, "PathLike[str]"]) -> Model:
    """A checkpoint file, or a folder's newest ckpt_N.safetensors."""

def train(settings: Dict[str, Any], on_event: Callable[[str, Dict[str, Any]], Any]) -> None: ...
def download(settings: Dict[str, Any]) -> str: ...
def main(argv: List[str]) -> int: ...
