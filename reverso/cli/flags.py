"""Command-line flags read from the option records (:mod:`reverso.options`): a flag's choices,
default, range and help text are the record field's, so the command line cannot drift from the
Python API. Imports no torch."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from reverso.cli.checks import count, number
from reverso.options import Options


def add_option_flags(parser, record: type[Options], names: tuple[str, ...], what: str = "") -> None:
    """One ``--name`` flag per field ``names`` of ``record`` (underscores become dashes); ``what``
    prefixes the help (``"antialias: "``)."""
    fields = {f.name: f for f in dataclasses.fields(record)}
    hints = typing.get_type_hints(record)
    for name in names:
        field = fields[name]
        kwargs = _flag_kwargs(field, hints[name])
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=field.default,
            help=f"{what}{field.metadata['help']} ({_default_text(field.default)})",
            **kwargs,
        )


def field_default(record: type[Options], name: str):
    """The default of ``record``'s field ``name``."""
    return next(f.default for f in dataclasses.fields(record) if f.name == name)


def _flag_kwargs(field: dataclasses.Field, kind) -> dict:
    meta = field.metadata
    if meta.get("choices") is not None:
        return {"choices": [c for c in meta["choices"] if c is not None]}
    kinds = set(typing.get_args(kind)) - {type(None)} or {kind}
    if kinds == {bool}:
        return {"action": argparse.BooleanOptionalAction}
    low, high, above = meta.get("low"), meta.get("high"), meta.get("above")
    if kinds == {int}:
        return {"type": count(1 if low is None else int(low), None if high is None else int(high))}
    if kinds == {float}:
        return {"type": number(above if above is not None else (low or 0.0), high)}
    return {}


def _default_text(default) -> str:
    return "default: none" if default is None else f"default {default}"
