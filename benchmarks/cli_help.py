"""How long `reverso COMMAND --help` takes, side by side with starting Python itself.

The goal (issue 8): help is instant, under 1 s and a small multiple of `python -c pass`, because
the command line imports torch only when a command runs.

    python benchmarks/cli_help.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def seconds(args: list[str], repeats: int) -> float:
    """The best of ``repeats`` wall-clock runs of a command."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (best kept)")
    parser.add_argument("--command", default="train", help="the subcommand whose help is timed")
    args = parser.parse_args(argv)
    bare = seconds([sys.executable, "-c", "pass"], args.repeats)
    help_ = seconds([sys.executable, "-m", "reverso", args.command, "--help"], args.repeats)
    result = {"python_s": bare, "help_s": help_, "ratio": help_ / bare}
    print(
        f"python -c pass {bare:.3f}s | reverso {args.command} --help {help_:.3f}s | "
        f"ratio {result['ratio']:.1f}x (goal: under 1 s)"
    )
    return result


if __name__ == "__main__":
    main()
