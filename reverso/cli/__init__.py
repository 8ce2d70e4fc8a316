"""The ``reverso`` command line: ``reverso COMMAND --help`` explains each command.

MODEL arguments accept a reference model of the papers (``lenet_fc``, ``nin_light``, ``nin``,
``resnet32_preact``, ``resnet18_imagenette``), a timm model name (built untrained), a file written
by ``reverso convert`` / ``reverso train`` (``*.safetensors``) or ``package.module:factory``.
"""

from __future__ import annotations

import re
import sys

from reverso.cli.parser import _parser  # torch-free: --help never imports torch


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from reverso.cli.checks import check_arguments
    from reverso.errors import ReversoError

    try:
        check_arguments(args)
        return args.run(args)
    except ReversoError as err:
        print(f"reverso {args.command}: {in_flags(str(err))}", file=sys.stderr)
        return 1


#: Python keyword arguments named in error messages -> the command line's flags
_FLAGS = {
    "trust": "--trust",
    "layer": "--layer",
    "node": "--node",
    "num_classes": "--num-classes",
    "root": "--root",
}
_SIZE_WORDS = {"channels": "C", "height": "H", "width": "W"}


def in_flags(message: str) -> str:
    """An error message's Python advice in command-line words: ``input_size=(3, 64, 64)`` becomes
    ``--input-size 3 64 64``, ``trust=['pkg'] to reverso.load`` becomes ``--trust pkg``."""

    def size(match: re.Match) -> str:
        parts = [p.strip() for p in match.group(1).split(",")]
        return "--input-size " + " ".join(_SIZE_WORDS.get(p, p) for p in parts)

    def listed(match: re.Match) -> str:
        names = [n.strip().strip("'\"") for n in match.group(2).split(",")]
        return f"{_FLAGS[match.group(1)]} {' '.join(names)}"

    message = re.sub(r"input_size=\(([^)]*)\)", size, message)
    message = re.sub(r"\b(trust)=\[([^\]]*)\](?: to reverso\.load)?", listed, message)
    message = re.sub(r"\broot=(?=[^\s.,;]+)", "--root ", message)
    return re.sub(
        r"\b(layer|node|num_classes)=(?=[\s'\"]|$)", lambda m: _FLAGS[m.group(1)], message
    )


if __name__ == "__main__":
    sys.exit(main())
