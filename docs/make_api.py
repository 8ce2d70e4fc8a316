"""Write the API reference pages (docs/api/*.md) from the package's public names.

    python docs/make_api.py

One page per public namespace: ``reverso`` (what ``import reverso`` offers), ``reverso.nn`` (the
layers passes emit), ``reverso.ir`` (the graph helpers pass authors use), ``reverso.testing`` and
``reverso.passes``. Each entry points mkdocstrings at the module that defines the name, so the
reference is the docstrings themselves. ``tests/docs/test_api_reference.py`` checks that the pages
are up to date.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

API = Path(__file__).resolve().parent / "api"

PAGES = {
    "reverso": "What `import reverso` offers: the conversions, saving and loading, the study tools "
    "and the errors.",
    "reverso.nn": "The layers the passes emit (pyramids, merges, upsamplings, N-Jet, blur pools, "
    "frame, steerable and hierarchical convolutions, reversible blocks).",
    "reverso.ir": "The graph helpers for pass authors: node facts, tags, windows, shapes and edits.",
    "reverso.testing": "Checks and hypothesis strategies to test your own models and passes.",
    "reverso.passes": "The built-in passes and the default pipeline.",
}


def public_names(namespace: str) -> list[str]:
    module = importlib.import_module(namespace)
    names = list(getattr(module, "__all__", []))
    if namespace == "reverso":  # its submodules have pages or are internal
        names = [n for n in names if not inspect.ismodule(getattr(module, n))]
    return sorted(names, key=str.lower)


def defined_in(namespace: str, name: str) -> str | None:
    """The dotted path of the definition, or None for a value without one (a constant)."""
    obj = getattr(importlib.import_module(namespace), name)
    module = getattr(obj, "__module__", None)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)) or module is None:
        return None
    # the built-in passes, installed as reverso.passes, are read from their source folder passes/
    module = module.removeprefix("reverso.") if module.startswith("reverso.passes") else module
    qualname = obj.__qualname__
    if "<locals>" in qualname:  # made by a decorator (a hypothesis strategy): its module's name
        qualname = name
    return f"{module}.{qualname}"


def page(namespace: str) -> str:
    lines = [f"# `{namespace}`", "", PAGES[namespace], ""]
    for name in public_names(namespace):
        target = defined_in(namespace, name)
        lines.append(f"## `{namespace}.{name}`")
        lines.append("")
        if target is None:
            value = getattr(importlib.import_module(namespace), name)
            lines.append(f"A constant: `{value!r}`." if len(repr(value)) < 200 else "A constant.")
        else:
            lines += [f"::: {target}", "    options:", "      show_root_heading: false", ""]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    API.mkdir(exist_ok=True)
    for namespace in PAGES:
        (API / f"{namespace}.md").write_text(page(namespace))


if __name__ == "__main__":
    main()
