"""The API reference (docs/api/, written by docs/make_api.py) lists every public name of
``reverso``, ``reverso.nn``, ``reverso.ir``, ``reverso.testing`` and ``reverso.passes``, and every
class and function among them has a docstring to show. ``mkdocs build --strict`` (tests/system)
checks that each entry resolves."""

import importlib
import importlib.util
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def make_api():
    spec = importlib.util.spec_from_file_location("make_api", ROOT / "docs" / "make_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


API = make_api()


@pytest.mark.parametrize("namespace", list(API.PAGES))
def test_the_reference_pages_are_up_to_date(namespace):
    written = (ROOT / "docs" / "api" / f"{namespace}.md").read_text()
    assert written == API.page(namespace), "run: python docs/make_api.py"


NAMES = [(ns, name) for ns in API.PAGES for name in API.public_names(ns)]


@pytest.mark.parametrize(("namespace", "name"), NAMES, ids=[f"{ns}.{n}" for ns, n in NAMES])
def test_every_public_class_and_function_has_a_docstring(namespace, name):
    obj = getattr(importlib.import_module(namespace), name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        assert inspect.getdoc(obj), f"{namespace}.{name} has no docstring for the API reference"
