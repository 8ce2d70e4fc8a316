"""The documentation site builds without a warning: ``mkdocs build --strict`` (mkdocs-material
and mkdocstrings, the ``docs`` extra) fails on a broken link, a page missing from the navigation
or an API entry that does not resolve."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="the docs extra: pip install -e '.[docs]'"
)
def test_the_documentation_site_builds_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "api" / "reverso" / "index.html").read_text().count("doc-object") > 50
