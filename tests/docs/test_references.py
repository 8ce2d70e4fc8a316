"""Every file the sources and the docs refer to is in the repository, and none cites a text that
is not.

Docstrings and pages cite the method pages (``docs/methods/*.md``, by section) or the papers; a
reference to a repository file that does not exist, or to the specification the project was
once written from (which its users never see), fails here. Plain text only: nothing is imported,
so this runs in well under a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("reverso", "passes", "benchmarks", "examples", "tests")
THIS = Path(__file__).resolve()


def _sources() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    return [p for p in files if p.resolve() != THIS and "__pycache__" not in p.parts]


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


SOURCES = _sources()
PAGES = _pages()
FILES = [*PAGES, *SOURCES]

#: a repository path: ``docs/methods/topdown.md``, ``reverso/nn/pyramid.py``, ``examples/x.py``
REPO_PATH = re.compile(
    r"(?<![\w./-])((?:docs|reverso|passes|benchmarks|examples|tests)/[\w./-]*\w)"
)
#: a bare page name such as ``evaluation.md`` (no folder in front of it)
BARE_PAGE = re.compile(r"(?<![\w./-])([\w-]+\.md)\b")
#: a markdown link or image: ``[text](target)``, ``![alt](target "title")``
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")

#: ways the outside specification used to be cited; none may come back
SPEC_CITATIONS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\bspec\b\W{0,4}[\w-]+\.md\b",  # spec dsb.md, Spec: ``irevnet.md``, spec/topdown.md
        r"\bspecs?\s+(?:sections?|§|eqs?\b|eq\.|equations?|invariants?|\d)",  # spec section 3
        r"\(spec\s",  # (spec 2.3), (spec dsb.md ...)
        r"\(spec:\s*\d",  # (spec: 840 MB ...)
        r"\b(?:of|in)\s+the\s+spec\b",  # section 6 of the spec, restated in the spec
        r"\b(?:top-down|antialias|n-jet|njet|i-revnet|irevnet|dsb|hcnn|evaluation)\s+spec\b",
        r"(?:\.\./)+shared\b|\bshared/spec\b|/work/shared\b",
    )
]
#: in the pages, where no variable is named ``spec``, any mention of "the spec" is a citation
PAGE_SPEC_CITATIONS = [re.compile(p, re.IGNORECASE) for p in (r"\bspec's\b", r"\bthe\s+spec\b")]


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _line(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def _exists(target: str, *bases: Path) -> bool:
    return any((base / target).exists() for base in bases)


def missing_files(path: Path) -> list[str]:
    """``file:line: reference`` for every reference in ``path`` to a file that does not exist."""
    text = path.read_text(encoding="utf-8")
    page = path.suffix == ".md"
    found = []
    for match in REPO_PATH.finditer(text):
        if not _exists(match.group(1), ROOT):
            found.append((match.start(), match.group(1)))
    # a bare name (a link's text, say): a page beside this one, in docs/ or at the top
    # (README.md); in a source only a page at the top, so "evaluation.md section 4" fails
    bases = (path.parent, ROOT / "docs", ROOT) if page else (ROOT,)
    for match in BARE_PAGE.finditer(text):
        if not _exists(match.group(1), *bases):
            found.append((match.start(), match.group(1)))
    if page:
        for match in LINK.finditer(text):
            target = match.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                continue  # http(s):, mailto:, ... and anchors on the same page
            target = target.split("#", 1)[0]
            if target and not (path.parent / target).exists():
                found.append((match.start(), target))
    return [f"{_name(path)}:{_line(text, at)}: {ref}" for at, ref in sorted(set(found))]


def spec_citations(path: Path) -> list[str]:
    """``file:line: text`` for every citation of the outside specification in ``path``."""
    text = path.read_text(encoding="utf-8")
    patterns = SPEC_CITATIONS + (PAGE_SPEC_CITATIONS if path.suffix == ".md" else [])
    found = {(m.start(), m.group(0)) for p in patterns for m in p.finditer(text)}
    return [f"{_name(path)}:{_line(text, at)}: {hit!r}" for at, hit in sorted(found)]


def test_the_scan_sees_the_sources_and_the_method_pages():
    names = {_name(p) for p in FILES}
    assert {"README.md", "reverso/nn/pyramid.py", "passes/reversible.py"} <= names
    methods = {n for n in names if n.startswith("docs/methods/")}
    assert {
        f"docs/methods/{page}.md"
        for page in ("topdown", "njet", "antialias", "irevnet", "structured", "hcnn", "evaluation")
    } <= methods


def test_the_patterns_catch_the_old_citations_and_nothing_else():
    cited = [
        '"""Rotation steering (spec dsb.md section 3)."""',
        "F of a coupling block (spec 2.3)",
        "Spec: ``irevnet.md`` sections 2, 3 and 6.",
        "the models of the top-down paper (section 6 of the spec)",
        "a pre-blurred image (spec invariant 6)",
        "the marginal over the oldest attribute (spec eq. 35)",
        "Shift consistency (antialias spec, section 4)",
        "the authors' code (`../shared/spec`, evaluation.md sections 2-4)",
    ]
    for line in cited:
        assert any(p.search(line) for p in SPEC_CITATIONS), line
    clean = [
        "spec = ATTACKS[name]; module_from_spec(spec); spec.loader.exec_module(module)",
        "def _converts_and_trains(spec: CNNSpec) -> None: check_factory_name(spec, where)",
        "spectral norms, inspect.signature, CNNSpec(...), specs that print as a readable spec",
        "(docs/methods/irevnet.md, section 2.3)",
    ]
    for line in clean:
        assert not any(p.search(line) for p in SPEC_CITATIONS), line
    assert BARE_PAGE.findall("(evaluation.md section 4), docs/evaluation.md") == ["evaluation.md"]


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_every_referenced_file_exists(path):
    missing = missing_files(path)
    assert not missing, "references to files that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_nothing_cites_the_outside_specification(path):
    hits = spec_citations(path)
    assert not hits, (
        "cite docs/methods/*.md (by section) or the paper instead of the specification:\n"
        + "\n".join(hits)
    )
