"""The benchmark scripts run (tiny settings; the figures themselves live in docs/benchmarks.md)."""

import pytest


def test_conversion_benchmark_runs(load_script):
    result = load_script("benchmarks", "conversion").main(
        ["--model", "resnet18", "--size", "64", "--repeats", "1", "--merge", "add"]
    )
    assert result["convert_s"] > 0 and result["baseline_s"] > 0


@pytest.mark.slow  # the conversion benchmark's timing mode runs by default
def test_conversion_memory_is_reported_beside_the_parameter_bytes(load_script):
    (row,) = load_script("benchmarks", "conversion").main(["--memory", "resnet18", "--size", "64"])
    assert row["outcome"] == "converts" and row["param_mb"] > 100  # 11M + 20M float32 parameters
    assert (
        row["peak_mb"] > 0 and row["ratio"] > 0
    )  # the target (a small multiple) is the script's to report


@pytest.mark.slow  # six fresh processes
def test_loading_memory_is_reported_beside_the_file_size(load_script):
    rows = load_script("benchmarks", "loading").main(["--models", "resnet18", "--size", "32"])
    crafted, td = rows
    assert crafted["outcome"] == "FileFormatError" and crafted["load_mb"] < 50
    assert td["outcome"] == "loaded" and td["load_mb"] < 4 * td["file_mb"] + 50


def test_hand_written_td_resnet32_is_the_emitted_network(load_script):
    # main() asserts that the hand-written network reproduces the emitted one's outputs
    result = load_script("benchmarks", "td_resnet32").main(["--batch", "2", "--iters", "1"])
    assert result["ratio"] > 0


@pytest.mark.parametrize(
    "argv", [["--device", "cpu", "--batch", "2", "--size", "32", "--iters", "1", "--no-compile"]]
)
def test_gpu_throughput_script_runs_on_cpu(argv, load_script):
    rows = load_script("benchmarks", "gpu_throughput").main(argv)
    assert {r["model"] for r in rows} == {"bottom-up", "top-down"}


def test_gpu_training_script_runs_on_cpu(load_script):
    rows = load_script("benchmarks", "gpu_training").main(
        ["--device", "cpu", "--epochs", "1", "--models", "lenet_fc", "--train-limit", "256"]
    )
    assert [r["net"] for r in rows] == ["bottom-up", "top-down"]
    assert all(r["s_per_epoch"] > 0 and 0 <= r["test_accuracy"] <= 1 for r in rows)


def test_cli_help_benchmark_runs(load_script):
    result = load_script("benchmarks", "cli_help").main(["--repeats", "1"])
    assert result["help_s"] > 0 and result["ratio"] > 0


def test_memory_benchmark_runs(load_script):
    rows = load_script("benchmarks", "memory").main(
        ["--device", "cpu", "--batch", "2", "--iters", "1", "--models", "ref:resnet32_preact@32"]
    )
    by = {r["config"]: r for r in rows}
    assert set(by) == {"BU", "TD", "TD+checkpoint", "TD+reversible"}
    assert by["TD+checkpoint"]["saved_mb"] < by["TD"]["saved_mb"]
    assert by["TD+reversible"]["saved_mb"] < by["TD"]["saved_mb"]


def test_njet_benchmark_runs(load_script):
    rows = load_script("benchmarks", "njet").main(
        [
            "--iters",
            "1",
            "--channels",
            "4",
            "--size",
            "12",
            "--batch",
            "1",
            "--network-size",
            "32",
            "--network-batch",
            "2",
        ]
    )
    by = {r["layer"]: r for r in rows}
    assert by["Conv2d 3x3"]["ratio"] == 1.0
    assert by["N-Jet sigma=1 learnable"]["detail"].startswith(
        "5x5 grid"
    )  # the support, not 2 sigma
    assert by["N-Jet resnet18 train step"]["ratio"] > 0


def test_structured_layers_benchmark_runs(load_script):
    rows = load_script("benchmarks", "structured").main(
        ["--iters", "1", "--channels", "4", "--size", "8", "--batch", "2"]
    )
    by = {(r["workload"], r["layer"]): r for r in rows}
    assert by[("train step (fwd+bwd)", "Conv2d 3x3")]["ratio"] == 1.0
    assert all(0 < r["best_ms"] <= r["ms"] for r in rows)  # the best step, next to the median
    assert {"DynamicSteerableConv2d", "collapsed FrameConv2d", "HConv2d K=16 Q=32"} <= {
        r["layer"] for r in rows
    }
