"""Every signature and call of reverso's API shown in the README and docs/ agrees with the code.

An inline code span ``reverso.name(...)`` that holds a bare ``*`` (the keyword-only marker) is a
signature: it must list the function's parameters in order (all of them, unless it shows ``...``),
with the code's defaults (the first of ``"a" | "b"`` alternatives), and mark as required only the
parameters without one. Any other span
or code block line is a call: every keyword it passes must be one the function takes.
"""

import ast
import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SPAN = re.compile(r"`(reverso(?:\.\w+)+)\(([^`]*)\)`", re.S)
CALL = re.compile(r"\b(reverso(?:\.\w+)+)\(")


def resolve(dotted: str):
    """The object a dotted name names (``reverso.nn.BlurPool2d``), or None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part, None)
        return obj
    return None


def split_top(text: str) -> list[str]:
    """Comma-separated parts outside brackets and quotes."""
    parts, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def shown(page: Path):
    """(name, inside the parentheses, is a signature, line) for every API call on the page."""
    text = page.read_text()
    for m in SPAN.finditer(text):
        inner = " ".join(m.group(2).split())
        yield m.group(1), inner, "*" in split_top(inner), text[: m.start()].count("\n") + 1
    for i, line in enumerate(text.splitlines(), 1):
        for m in CALL.finditer(line):
            rest, depth = line[m.end() :], 1
            for j, ch in enumerate(rest):
                depth += ch == "("
                depth -= ch == ")"
                if depth == 0:
                    yield m.group(1), rest[:j], False, i
                    break


CASES = [
    pytest.param(page, *case, id=f"{page.name}:{case[3]}:{case[0]}")
    for page in PAGES
    for case in shown(page)
    if callable(resolve(case[0]))
]


def literal(text: str):
    first = text.split("|")[0].strip()
    try:
        return ast.literal_eval(first)
    except (ValueError, SyntaxError):
        return ...  # not a literal: a description ("all ten")


@pytest.mark.parametrize(("page", "name", "inner", "is_signature", "line"), CASES)
def test_shown_signatures_and_keywords_match_the_code(page, name, inner, is_signature, line):
    sig = inspect.signature(resolve(name))
    params = sig.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    where = f"{page.relative_to(ROOT)}:{line} {name}"
    everything = split_top(inner)
    parts = [p for p in everything if p and p not in ("...", "/")]
    if not is_signature:
        for part in parts:
            key = re.match(r"^(\w+)\s*=(?!=)", part)
            if key and not takes_any:
                assert key.group(1) in params, f"{where}: no keyword {key.group(1)!r} in {sig}"
        return
    listed = [p.split("=")[0].strip() for p in parts if p != "*" and not p.startswith("**")]
    real = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if "..." in everything:  # some parameters left out: the rest in the code's order
        rest = iter(real)
        assert all(n in rest for n in listed), f"{where}: shows {listed}, the code takes {real}"
    else:
        assert listed == real, f"{where}: shows {listed}, the code takes {real}"
    for part in parts:
        if part == "*" or part.startswith("**"):
            continue
        key, _, default = part.partition("=")
        p = params[key.strip()]
        if not default:
            assert p.default is p.empty, (
                f"{where}: {key} is shown as required; it defaults to {p.default!r}"
            )
        else:
            value = literal(default)
            assert value is ... or value == p.default, (
                f"{where}: {key} shown with default {default.strip()}, the code has {p.default!r}"
            )


NAMED = re.compile(r"`(reverso(?:\.\w+)+)")
REFERENCES = sorted(
    {(page, m.group(1)) for page in PAGES for m in NAMED.finditer(page.read_text())},
    key=lambda pair: (str(pair[0]), pair[1]),
)


@pytest.mark.parametrize(("page", "name"), REFERENCES, ids=[f"{p.name}:{n}" for p, n in REFERENCES])
def test_every_named_api_exists(page, name):
    """``reverso.x.y`` named in a code span is a module or an object there (not a name that was
    renamed, moved or never exported)."""
    parts = name.split(".")
    obj = resolve(name)
    try:
        found = obj is not None or importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a name under a module that is no package
        found = False
    if not found and len(parts) > 2:  # an instance attribute of a class (TopDownNet.plan)
        found = inspect.isclass(resolve(".".join(parts[:-1])))
    assert found, f"{page.relative_to(ROOT)} names {name}, which does not exist"
