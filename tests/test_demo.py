"""The README's main job: `reverso demo`."""

import subprocess
import sys

from reverso.cli import main
from reverso.demo import run_demo


def test_demo_converts_and_checks_both_models():
    lines = []
    results = run_demo(print_fn=lines.append)
    assert set(results) == {"lenet_fc", "resnet18"}
    assert all(r["checked"] for r in results.values())
    text = "\n".join(lines)
    assert "bottom-up lenet_fc" in text and "top-down lenet_fc (td)" in text
    assert "14,432" in text  # LeNetFC's top-down parameter count
    assert text.count("properties: all hold") == 2


def test_cli_help_and_unknown_command(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out
    out = subprocess.run(
        [sys.executable, "-m", "reverso", "demo", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "side by side" in out.stdout
