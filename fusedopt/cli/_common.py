"""Helpers the `python -m fusedopt` commands share: errors, tables, progress, plotting."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TextIO

import torch

import fusedopt

from .. import _dispatch


class CLIError(Exception):
    """A problem the user can fix (missing file, unavailable backend): printed without a traceback."""


def run(prog: str, body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command's body, turning a CLIError into ``prog: error: ...`` on stderr and exit 1."""
    try:
        return body(args)
    except CLIError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def choose(
    parser: argparse.ArgumentParser, text: str | None, known: Sequence[str], what: str
) -> list[str]:
    """Parse a comma-separated subset of ``known`` (case-insensitive); all of them when None."""
    if text is None:
        return list(known)
    picked = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in picked if t not in known]
    if bad or not picked:
        parser.error(
            f"unknown {what} {', '.join(map(repr, bad)) or repr(text)} "
            f"(choose from {', '.join(known)})"
        )
    return [k for k in known if k in picked]


def check_backend(parser: argparse.ArgumentParser, backend: str) -> str:
    """The concrete backend ``backend`` runs CPU tensors on; a usage error if it can't run here."""
    if backend != "auto":
        info = fusedopt.backends()[backend]
        if not info.available:
            parser.error(f"backend {backend!r} is not available here: {info.reason}")
    try:
        return _dispatch.resolve(backend, torch.device("cpu"))
    except RuntimeError as e:  # e.g. backend "cuda" for the CPU tensors these commands train
        parser.error(str(e))


def optimizer_class(name: str) -> type | None:
    """``fusedopt.<name>`` if this version of fusedopt has it (Lion, LAMB and Sophia are newer)."""
    return getattr(fusedopt, name, None)


def out_dir(path: str) -> Path:
    """The output directory, created if needed."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CLIError(f"--out {path}: not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--out {path}: cannot create it ({e.strerror})") from None
    return p


PLOT_HINT = "pip install matplotlib (or pip install 'fusedopt[demo]')"


def have_matplotlib() -> bool:
    """Whether plots can be drawn. Without matplotlib a command still prints its table (its
    main output) and says which plot it skipped, instead of failing after the run."""
    return importlib.util.find_spec("matplotlib") is not None


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the non-interactive Agg backend (plots are written to files)."""
    try:
        import matplotlib
    except ImportError:
        raise CLIError(f"plots need matplotlib: {PLOT_HINT}") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """A plain-text table; columns whose index is in ``right`` are right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        out = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


class Progress:
    """Progress on stderr: one line rewritten in place on a terminal, finished lines otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._width = 0

    def update(self, text: str) -> None:
        """A transient status line (shown on a terminal only)."""
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self.stream.flush()

    def clear(self) -> None:
        """Erase the status line."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
            self.stream.flush()

    def done(self, text: str) -> None:
        """A line that stays."""
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width) + "\n")
            self._width = 0
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
