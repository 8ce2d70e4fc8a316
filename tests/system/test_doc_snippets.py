"""Every Python code block of README.md and docs/*.md runs as written.

Each block runs on its own (snippets define what they use) in a fresh namespace, in a temporary
working folder, with ``REVERSO_SMOKE=1`` (the variable the README names: long blocks, such as the
paper's training protocol, run with tiny settings) and ``HOME`` pointing at a folder holding a
small CIFAR-10 copy in ``~/data``, where the README's dataset block looks for one.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def code_blocks() -> list:
    blocks = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 2  # the block's first line on the page
            name = f"{page.relative_to(ROOT)}:{line}"
            blocks.append(pytest.param(name, line, match.group(1), id=name))
    return blocks


BLOCKS = code_blocks()


def test_the_pages_have_code_blocks():
    names = [b.values[0] for b in BLOCKS]
    assert sum(n.startswith("README.md") for n in names) >= 7
    assert {n.split(":")[0] for n in names} >= {
        "README.md",
        "docs/custom_passes.md",
        "docs/evaluation.md",
        "docs/njet_antialias.md",
    }


@pytest.mark.parametrize(("name", "line", "code"), BLOCKS)
def test_code_block_runs_as_written(name, line, code, tmp_path, monkeypatch, dataset_files):
    monkeypatch.setenv("REVERSO_SMOKE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "data").mkdir()
    dataset_files.cifar_binary(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    # pad so that a traceback's line numbers are the page's
    compiled = compile("\n" * (line - 1) + code, name, "exec")
    exec(compiled, {"__name__": "__main__"})
