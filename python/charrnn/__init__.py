"""charrnn: train character-level recurrent language models on any UTF-8 text and sample
from them, from Python.

    import charrnn
    path = charrnn.download()                      # the tutorial's Shakespeare, checksum-verified
    model = charrnn.train(path, "checkpoints", epochs=10)
    print(model.generate(start="ROMEO: ", length=500, temperature=0.8, seed=1))

The work is done by charrnn's Rust core, with the GIL released; every keyword is the command
line's flag of the same name (snake case) and is checked by the same rule.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, Iterable, Optional, Union

from . import _native
from ._native import CheckpointError, Model, Stream, __version__, load
from ._progress import Report

__all__ = ["CheckpointError", "Model", "Stream", "download", "load", "train", "__version__"]

PathLike = Union[str, "os.PathLike[str]"]


def train(
    data: Union[PathLike, Iterable[PathLike]],
    checkpoint_dir: PathLike = "checkpoints",
    *,
    epochs: int = 10,
    preset: str = "tutorial",
    resume: Union[bool, PathLike] = False,
    init_from: Optional[PathLike] = None,
    on_epoch: Optional[Callable[[Dict[str, Any]], Any]] = None,
    progress: bool = True,
    **settings: Any,
) -> Model:
    """Trains a model on `data` (a text file or folder, or a list of them) as `charrnn train`
    does, writing its checkpoints, metrics and samples to `checkpoint_dir`, and returns the
    trained model (the newest checkpoint there).

    Every other training flag is a keyword with the flag's name in snake case (`rnn_units=512`,
    `batch_size=32`, `seed=1`, `max_steps=100`, ...), checked by the flag's rule; a bad value
    raises `ValueError` with the command line's message. `resume=True` continues the run saved
    in `checkpoint_dir` exactly where it stopped (or give the checkpoint to continue from);
    `init_from` fine-tunes another run's weights. `on_epoch` is called after each epoch with a
    dict of `epoch`, `train_loss`, `val_loss` (nats per character) and `seconds`.

    A progress bar (tqdm's, in a notebook too, when tqdm is installed) and the epoch summaries go
    to stderr unless `progress=False`. Ctrl-C saves the resumable checkpoint and raises
    `KeyboardInterrupt`; `train(..., resume=True)` then continues bit for bit.
    """
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    flags: Dict[str, Any] = dict(settings)
    flags.update(
        data=[os.fspath(d) for d in data],
        checkpoint_dir=os.fspath(checkpoint_dir),
        epochs=epochs,
        preset=preset,
        resume=resume,
        init_from=init_from,
    )
    report = Report(progress, on_epoch)
    try:
        _native.train(flags, report)
    except ValueError as e:
        if " --" not in str(e) and not str(e).startswith("--"):
            raise
        # The message names the command line's flags; say what they are called here.
        hint = "(in Python each flag is the keyword of its name: --overwrite is overwrite=True, --rnn-units 512 is rnn_units=512)"
        raise type(e)(f"{e}\n{hint}") from None
    finally:
        report.close()
    return load(checkpoint_dir)


def download(
    url: Optional[str] = None,
    output: PathLike = os.path.join("data", "shakespeare.txt"),
    sha256: Optional[str] = None,
    **settings: Any,
) -> str:
    """Downloads a corpus as `charrnn download` does and returns its path: by default the
    tutorial's Shakespeare, verified against its known SHA-256. An existing file with the right
    checksum is kept; the file appears whole or not at all. Other keywords are the command's
    flags (`force`, `timeout`, `max_bytes`, `follow_redirects`)."""
    flags: Dict[str, Any] = dict(settings, url=url, output=os.fspath(output), sha256=sha256)
    return _native.download(flags)


if sys.version_info < (3, 9):  # pragma: no cover
    raise ImportError("charrnn needs Python 3.9 or newer")
