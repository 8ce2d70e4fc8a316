"""The examples run (tiny settings); their full runs are documented in docs/."""

from scripts import load_script


def test_njet_multiscale_mnist_runs():
    rows = load_script("examples", "njet_multiscale_mnist").main(
        ["--epochs", "1", "--train", "64", "--scales", "1", "2", "--width", "4"]
    )
    assert [(r["size"], r["model"]) for r in rows] == [
        (28, "3x3 conv"),
        (28, "N-Jet"),
        (56, "3x3 conv"),
        (56, "N-Jet"),
    ]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert len(rows[1]["sigmas"]) == 2 and not rows[0]["sigmas"]


def test_antialias_timm_runs():
    result = load_script("examples", "antialias_timm").main(["--size", "64"])
    assert result["identity_max_abs_diff"] < 1e-5
    assert all(after < before for before, after in result["equivariance"].values())
