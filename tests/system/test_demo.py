"""The README's main job: `reverso demo`."""

import subprocess
import sys

from reverso.cli import main
from reverso.demo import run_demo


def test_quick_demo_converts_trains_attacks_and_explains(tmp_path):
    lines = []
    results = run_demo(tmp_path / "out", quick=True, print_fn=lines.append)
    text = "\n".join(lines)
    assert results["checked"] and "properties: all hold" in text
    assert "bottom-up lenet_fc" in text and "top-down lenet_fc (td)" in text
    assert "14,452" in text  # LeNetFC's top-down parameter count
    assert set(results["accuracy"]) == {"BU", "TD"}
    assert all(0.3 < a <= 1 for a in results["accuracy"].values())  # 2 epochs learn something
    for loc in results["localization"].values():
        assert 0 <= loc.precision <= 1 and 0 <= loc.recall <= 1
    names = sorted(p.name for p in results["pictures"])
    assert names == ["erf.png", "gradcam.png", "robustness.png", "training.png"]
    for p in results["pictures"]:
        assert p.read_bytes()[:4] == b"\x89PNG"
    assert f"pictures in {(tmp_path / 'out').resolve()}" in text


def test_cli_help_and_unknown_command(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out
    out = subprocess.run(
        [sys.executable, "-m", "reverso", "demo", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--out" in out.stdout
