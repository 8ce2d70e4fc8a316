"""The schema of an option: a typed dataclass field with its default, its allowed values or range
and its help text (:func:`option`), and :class:`Options`, the base of the records that check
values against their fields. Imports no torch."""

from __future__ import annotations

import dataclasses
import math
import operator
import types
import typing
from collections.abc import Mapping

from reverso.errors import OptionError

#: the largest input side (pixels), input channels and classes reverso converts or loads
MAX_SIDE = 8192
MAX_CHANNELS = 4096
MAX_CLASSES = 1_000_000
#: the largest Gaussian scale (pixels) of an N-Jet, frame or steerable layer
MAX_SIGMA = 64.0
#: the longest string an option or a recipe field may hold
MAX_TEXT = 200


def option(
    default,
    help: str,
    *,
    choices: tuple | None = None,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    parity: str | None = None,
):
    """A field of an option record: ``default``, the ``help`` text, and what values it takes:
    one of ``choices``, or a number in ``[low, high]`` (``above``: strictly greater), an int of
    ``parity`` ``"even"`` or ``"odd"``."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "above": above}
    meta["parity"] = parity
    return dataclasses.field(default=default, metadata=meta)


class Options:
    """The base of the option records (frozen dataclasses of :func:`option` fields)."""

    #: how the record is named in messages (``njet``, ``antialias``, ...)
    label: typing.ClassVar[str] = ""

    @classmethod
    def from_dict(
        cls, values: Mapping | None = None, *, where: str | None = None, error=OptionError
    ):
        """The record of ``values`` (missing fields take their defaults), each value checked.

        ``where`` names the values in messages (default: the record's label; ``""``: the fields'
        bare names, for a function's keyword arguments); ``error`` is the class raised (an unknown
        name, a wrong type, a value out of range or not a choice).
        """
        where = cls.label if where is None else where
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise error(
                f"{where}: expected a mapping of option names to values, got {shown(values)}"
            )
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        checked = {}
        for name, value in values.items():
            if name not in known:
                prefix = f"{where}: " if where else ""
                raise error(f"{prefix}unknown option {shown(name)}{_did_you_mean(name, known)}")
            f = known[name]
            path = f"{where}.{name}" if where else str(name)
            checked[name] = check_value(value, hints[name], f.metadata, path, error)
        try:
            return cls(**checked)
        except OptionError as err:  # a rule between fields (__post_init__)
            raise error(f"{where}: {err}" if where else str(err)) from None

    def to_json(self) -> dict:
        """The values as JSON (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    def replace(self, **values):
        """A copy with ``values`` changed, each checked."""
        return type(self).from_dict({**self.to_json(), **values})


def check_value(value, kind, meta: Mapping, where: str, error=OptionError):
    """``value`` as a field of type ``kind`` with ``meta``'s constraints takes it, or ``error``."""
    meta = meta or {}
    choices = meta.get("choices")
    if choices is not None:
        if not any(value == c and type(value) is type(c) for c in choices):
            allowed = ", ".join(map(repr, choices))
            raise error(f"{where}={shown(value)} is not supported; choose one of {allowed}")
        return value
    options = typing.get_args(kind) if _is_union(kind) else (kind,)
    if value is None:
        if type(None) in options:
            return None
        raise error(f"{where} must not be null ({_expected(kind, meta)})")
    for t in options:
        if t is type(None):
            continue
        converted = _convert(value, t)
        if converted is not _NO:
            _check_range(converted, meta, where, kind, error, value)
            return converted
    raise error(f"{where} must be {_expected(kind, meta)}, got {shown(value)}")


_NO = object()


def _convert(value, t):
    """``value`` as type ``t`` (bool, int, float, str, a tuple of them), or _NO."""
    origin = typing.get_origin(t)
    if origin is tuple:
        args = typing.get_args(t)
        if not isinstance(value, (list, tuple)) or len(value) > 64:
            return _NO
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            return _NO
        converted = tuple(_convert(v, a) for v, a in zip(value, items, strict=True))
        return _NO if _NO in converted else converted
    if t is bool:
        return value if isinstance(value, bool) else _NO
    if t is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _NO
        try:
            value = float(value)
        except OverflowError:  # an int of hundreds of digits
            return _NO
        return value if math.isfinite(value) else _NO
    if t is str:
        return value if isinstance(value, str) and len(value) <= MAX_TEXT else _NO
    return _NO


def _check_range(value, meta, where, kind, error, given) -> None:
    numbers = value if isinstance(value, tuple) else (value,)
    for v in numbers:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        low, high, above = meta.get("low"), meta.get("high"), meta.get("above")
        parity = meta.get("parity")
        if (
            (low is not None and v < low)
            or (high is not None and v > high)
            or (above is not None and v <= above)
            or (parity == "even" and v % 2)
            or (parity == "odd" and not v % 2)
        ):
            raise error(f"{where} must be {_expected(kind, meta)}, got {shown(given)}")


def _is_union(kind) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType)


def _expected(kind, meta) -> str:
    """What a field takes, in words: ``an even int in [2, 256]``."""
    options = list(typing.get_args(kind)) if _is_union(kind) else [kind]
    words = [_in_words(t, meta) for t in options if t is not type(None)]
    return " or ".join(words) + (", or null" if type(None) in options else "")


def _in_words(t, meta) -> str:
    if typing.get_origin(t) is tuple:
        args = typing.get_args(t)
        n = "any number of" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)}"
        return f"a list of {n} values, each {_in_words(args[0], meta)}"
    names = {bool: "true or false", int: "an int", float: "a finite number"}
    text = names.get(t, f"a string of at most {MAX_TEXT} characters" if t is str else str(t))
    if t not in (int, float):
        return text
    if meta.get("parity"):
        text = text.replace("an int", f"an {meta['parity']} int")
    low, high, above = meta.get("low"), meta.get("high"), meta.get("above")
    most = f" of at most {high:g}" if high is not None else ""
    if above == 0 or (low == 1 and not meta.get("parity")):
        return text.replace("an int", "a positive int").replace("a finite", "a positive") + most
    if above is not None:
        return text + f" above {above:g}" + most.replace(" of", " and")
    if low is not None or high is not None:
        lower, upper = "-inf" if low is None else f"{low:g}", "inf" if high is None else f"{high:g}"
        return text + f" in [{lower}, {upper}]"
    return text


def shown(value) -> str:
    """``value`` for a message: its repr cut short, non-ASCII escaped (a look-alike name shows
    as what it is)."""
    text = ascii(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(name, known) -> str:
    from reverso.names import close_matches

    if not isinstance(name, str) or not name.isascii() or len(name) > 64:
        return f"; known: {', '.join(known)}"
    close = close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"


def check_size(size, where: str = "input_size", error=OptionError, *, batch: bool = False):
    """``size`` as a tuple ``(C, H, W)`` of positive ints (``(N, C, H, W)`` with ``batch``),
    channels at most :data:`MAX_CHANNELS` and sides at most :data:`MAX_SIDE`; ``error`` otherwise
    (a float, even 64.0, is no size)."""
    wanted = "(N, C, H, W)" if batch else "(C, H, W)"
    limits = f"C at most {MAX_CHANNELS}, H and W at most {MAX_SIDE}"
    message = (
        f"{where} must be {wanted}: positive ints ({limits}), got {shown(size)}; for example "
        f"{where}={(2, 3, 224, 224) if batch else (3, 224, 224)}"
    )
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__"):
        raise error(message)
    if not (len(size) == 3 or (batch and len(size) == 4)):
        raise error(message)
    highs = [1 << 20] * (len(size) - 3) + [MAX_CHANNELS, MAX_SIDE, MAX_SIDE]
    values = []
    for value, high in zip(size, highs, strict=True):
        try:
            value = operator.index(value) if not isinstance(value, bool) else 0
        except TypeError:
            value = 0
        if not 1 <= value <= high:
            raise error(message)
        values.append(value)
    return tuple(values)
