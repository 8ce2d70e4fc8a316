"""The README's option table and signature of reverso.topdown are the record's: same names,
same values, same defaults."""

import dataclasses
import inspect
import re
from pathlib import Path

import reverso
from reverso.options import TopDownOptions

README = (Path(__file__).parents[2] / "README.md").read_text()


def table_rows() -> dict[str, str]:
    """option -> its 'values' cell, from the table that follows topdown's signature."""
    start = README.index("`reverso.topdown(model, *")
    rows = {}
    for line in README[start:].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def test_the_table_lists_every_argument_of_topdown():
    params = [p for p in inspect.signature(reverso.topdown).parameters if p != "model"]
    assert sorted(table_rows()) == sorted(p for p in params if p != "input_size")


def test_the_tables_values_are_the_records_choices():
    rows = table_rows()
    for field in dataclasses.fields(TopDownOptions):
        choices = field.metadata["choices"]
        if choices is None or field.name not in rows:
            continue
        shown = set(re.findall(r'`"?([^`"]+)"?`', rows[field.name])) - {"an int"}
        wanted = {"None" if c is None else c for c in choices}
        assert shown == wanted, field.name


def test_the_signature_line_is_the_functions():
    line = re.search(r"`(reverso\.topdown\(model, \*,[^`]+)`", README).group(1)
    assert line == f"reverso.topdown{_shown_signature(reverso.topdown)}"


def _shown_signature(fn) -> str:
    parts = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.KEYWORD_ONLY and "*" not in parts:
            parts.append("*")
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return "(" + ", ".join(parts).replace("'", '"') + ")"
