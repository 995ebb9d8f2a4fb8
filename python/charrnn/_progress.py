"""What `charrnn.train` shows while it runs: the command line's log lines, and a progress bar of
the batches left (tqdm's where tqdm is installed, which also draws in notebooks; else a line of
its own on a terminal)."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Dict, Optional


class Report:
    """Receives a run's events from the core (`kind`, `fields`) and shows them."""

    def __init__(self, show: bool, on_epoch: Optional[Callable[[Dict[str, Any]], Any]]) -> None:
        self.show = show
        self.on_epoch = on_epoch
        self.bar: Any = None
        self.plain: Optional[_PlainBar] = None

    def __call__(self, kind: str, fields: Dict[str, Any]) -> None:
        if self.show:
            for line in fields.get("lines", ()):
                self._line(line)
        if kind == "started" and self.show:
            self._start_bar(fields["batches_left"])
        elif kind == "planned":
            self._resize(fields["batches_left"])
        elif kind == "step":
            self._advance(fields)
        elif kind == "epoch" and self.on_epoch is not None:
            self.on_epoch({k: fields[k] for k in ("epoch", "train_loss", "val_loss", "seconds")})
        elif kind == "already_trained":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.plain is not None:
            self.plain.close()
            self.plain = None

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            if self.plain is not None:
                self.plain.clear()
            print(text, file=sys.stderr, flush=True)

    def _start_bar(self, total: int) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            if sys.stderr.isatty():
                self.plain = _PlainBar(total)
            return
        self.bar = tqdm(total=total, unit="batch", file=sys.stderr, dynamic_ncols=True)

    def _resize(self, left: int) -> None:
        """A plan changed the run's length: `left` batches from here."""
        if self.bar is not None:
            self.bar.total = self.bar.n + left
            self.bar.refresh()
        elif self.plain is not None:
            self.plain.total = max(self.plain.done + left, 1)

    def _advance(self, fields: Dict[str, Any]) -> None:
        message = f"loss {fields['loss']:.4f}  {fields['chars_per_s']:.0f} chars/s"
        if self.bar is not None:
            self.bar.set_postfix_str(message, refresh=False)
            self.bar.update(1)
        elif self.plain is not None:
            self.plain.advance(message)


class _PlainBar:
    """A one-line bar on a terminal, redrawn at most ten times a second."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.drawn = 0.0

    def advance(self, message: str) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.drawn < 0.1 and self.done < self.total:
            return
        self.drawn = now
        filled = 30 * self.done // self.total
        bar = "#" * filled + "-" * (30 - filled)
        sys.stderr.write(f"\r{bar} {self.done}/{self.total} batches  {message}")
        sys.stderr.flush()

    def clear(self) -> None:
        sys.stderr.write("\r\x1b[2K")

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()
