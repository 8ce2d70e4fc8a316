"""Every dotted name and source path README.md and docs/ show resolves as written.

A reader who types ``reverso.study.attacks.SinglePixelAttack`` after ``import reverso``, or
opens ``reverso/ir/tags.py``, must find it: the names are extracted from the pages (code blocks
and prose alike) and resolved attribute by attribute from the ``reverso`` package.
"""

import contextlib
import importlib
import re
from pathlib import Path

import pytest

import reverso

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOTTED = re.compile(r"(?<![\w./-])reverso(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(
    r"(?<![\w./-])((?:reverso|passes|examples|benchmarks|tests)/[\w/]*\w(?:\.(?:py|sh))?)"
)


def mentions(pattern) -> list:
    found = {}
    for page in PAGES:
        for match in pattern.finditer(page.read_text()):
            found.setdefault(match.group(0), page.relative_to(ROOT))
    return [pytest.param(name, page, id=name) for name, page in sorted(found.items())]


DOTTED_NAMES = mentions(DOTTED)


def test_the_pages_name_the_modules_users_need():
    names = {p.values[0] for p in DOTTED_NAMES}
    assert {
        "reverso.study.gradcam.compare_localization",
        "reverso.study.attacks.SinglePixelAttack",
        "reverso.ir.nodes_with_role",
    } <= names


@pytest.mark.parametrize(("name", "page"), DOTTED_NAMES)
def test_dotted_name_resolves(name, page):
    value, parts = reverso, name.split(".")
    for i, part in enumerate(parts[1:], start=2):
        if not hasattr(value, part):  # a submodule nothing imported yet (reverso.timm)
            with contextlib.suppress(ImportError):
                importlib.import_module(".".join(parts[:i]))
        assert hasattr(value, part), f"{page}: {name} does not resolve (no {part!r})"
        value = getattr(value, part)


@pytest.mark.parametrize(("path", "page"), mentions(PATH))
def test_source_path_exists(path, page):
    assert (ROOT / path).exists(), f"{page} names {path}, which does not exist"


def test_a_function_never_hides_a_module_of_the_same_name():
    """``reverso.gradcam(...)`` is a function; the module it comes from is reverso.study.gradcam,
    so importing that module does not replace the function (and the docs' paths stay valid)."""
    import reverso.study.gradcam as module

    assert callable(reverso.gradcam) and not isinstance(reverso.gradcam, type(module))
    assert module.compare_localization is reverso.study.gradcam.compare_localization
