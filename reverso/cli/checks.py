"""Argument checks the command line makes before it works: counts and sizes by name (argparse
types), and the output file (:func:`check_output`). Imports no torch."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from reverso.errors import OptionError
from reverso.options import MAX_CLASSES, MAX_SIDE, check_size


def count(least: int = 1, most: int | None = None):
    """An argparse type: an int in ``[least, most]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least or (most is not None and value > most):
            span = f"at least {least}" if most is None else f"between {least} and {most}"
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {text!r}")
        return value

    parse.__name__ = "count"  # argparse names the type in its own messages
    return parse


def number(above: float = 0.0, most: float | None = None):
    """An argparse type: a finite number above ``above`` (and at most ``most``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value > above and (most is None or value <= most)):
            span = f"above {above:g}" + (f" and at most {most:g}" if most is not None else "")
            raise argparse.ArgumentTypeError(f"must be a number {span}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


SIDE = count(1, MAX_SIDE)
CLASSES = count(1, MAX_CLASSES)


def check_arguments(args: argparse.Namespace) -> None:
    """What argparse cannot check alone, before anything runs: the input size as a whole and
    the output file."""
    if getattr(args, "input_size", None):
        check_size(tuple(args.input_size), "--input-size")
    output = getattr(args, "output", None)
    if output is not None:
        check_output(Path(output), force=getattr(args, "force", False))


def check_output(path: Path, *, force: bool = False) -> None:
    """``path`` can be written: not a folder, not an existing file unless ``force``, in a folder
    that exists (or can be made) and is writable."""
    if path.is_dir():
        raise OptionError(f"-o {path} is a folder; name a file to write")
    if path.exists() and not force:
        raise OptionError(f"-o {path} exists; pass --force to overwrite it")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise OptionError(f"-o {path}: cannot write in {folder}")
