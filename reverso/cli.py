"""The ``reverso`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reverso",
        description="Compile bottom-up CNNs into top-down (coarse-to-fine) networks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="convert LeNetFC and timm's resnet18, print them side by side and check the properties",
        description="Convert the paper's LeNetFC and timm's resnet18, print bottom-up and top-down "
        "side by side (level, resolution, channels, parameters per stage) and check the top-down "
        "properties. Runs on the CPU in well under two minutes.",
    )
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


def _demo(args) -> int:
    from .demo import run_demo

    results = run_demo()
    return 0 if all(r["checked"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
