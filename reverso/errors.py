"""Every error reverso raises on purpose derives from :class:`ReversoError`.

Messages follow one rule: say *where* (the module or graph node), *what* went wrong and
*what to do about it*.
"""

from __future__ import annotations


class ReversoError(Exception):
    """Base class of every error the library raises on purpose."""


class OptionError(ReversoError, ValueError):
    """An argument has a wrong value (unknown option string, bad size, ...)."""


def check_choice(name: str, value, allowed) -> None:
    """An :class:`OptionError` naming the argument and its choices unless ``value`` is one."""
    if value not in allowed:
        raise OptionError(
            f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, allowed))}"
        )


def check_count(name: str, value, least: int = 1) -> None:
    """An :class:`OptionError` naming the argument unless ``value`` is an int >= ``least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        wanted = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise OptionError(f"{name} must be {wanted}, got {value!r}")


class TraceError(ReversoError):
    """The model could not be traced with torch.fx."""


class InputSizeError(ReversoError, ValueError):
    """The input size does not fit the model (too small for its depth, wrong rank, ...)."""


class UnsupportedTopologyError(ReversoError):
    """The model's graph cannot be turned into a top-down network."""


class NoDownsamplingError(UnsupportedTopologyError):
    """The model has no spatial downsampling to mirror."""


class WidthError(ReversoError):
    """A layer must change width and reverso does not know how to rebuild it."""


class DatasetError(ReversoError):
    """A dataset is missing, incomplete or corrupt where it was looked for."""


class FileFormatError(ReversoError):
    """A file reverso saved (or is asked to load) is not what it claims to be."""


class PassError(ReversoError):
    """A pass failed or left the graph in a broken state."""

    def __init__(self, message: str, *, pass_name: str | None = None, node: str | None = None):
        super().__init__(message)
        self.pass_name = pass_name
        self.node = node


def failed_node(err: BaseException) -> str | None:
    """The graph node shape propagation was running when ``err`` was raised (see ShapeProp)."""
    return getattr(err, "_reverso_node", None)


def failure(err: BaseException) -> str:
    """`` at node 'x': RuntimeError: first line`` for messages about a torch failure."""
    node = failed_node(err)
    lines = str(err).strip().splitlines()
    return (
        (f" at node '{node}'" if node else "")
        + f": {type(err).__name__}: "
        + (lines[0] if lines else "")
    )


def without_trace_note(message: str) -> str:
    """``message`` without the ``While executing %node ...`` note torch.fx's Interpreter appends
    to an exception raised while it runs a node (the node is named by reverso's own message)."""
    return message.split("\n\nWhile executing ", 1)[0]
