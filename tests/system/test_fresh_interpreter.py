"""What a fresh interpreter imports: reverso loads torch, timm and the study tools only when
they are used, so ``import reverso`` and ``reverso --help`` stay instant."""

import subprocess
import sys


def test_the_package_imports_its_names_on_first_use():
    # a fresh interpreter: `import reverso` alone loads no torch; the functions named like the
    # study modules (reverso.gradcam, reverso.train, ...) stay functions once those are imported;
    # the IR, the layers and training import neither timm nor torch._dynamo (2-3 s each)
    check = (
        "import sys, reverso\n"
        "assert 'torch' not in sys.modules\n"
        "from reverso.study.gradcam import save_overlays\n"
        "import reverso.study.train, reverso.ir, reverso.nn\n"
        "assert 'timm' not in sys.modules and 'torch._dynamo' not in sys.modules\n"
        "assert 'DropPath' in {t.__name__ for t in reverso.ir.DROPOUTS}  # timm's, on first use\n"
        "import reverso.study.erf\n"
        "assert all(callable(f) and f.__name__ == n for n, f in [('gradcam', reverso.gradcam), "
        "('train', reverso.train), ('erf', reverso.erf), ('topdown', reverso.topdown)])\n"
        "assert isinstance(reverso.data, type(sys)) and sorted(reverso.__all__) == reverso.__all__\n"
        "assert {'topdown', 'plot_erfs', 'ReversoError'} <= set(dir(reverso))\n"
    )
    subprocess.run([sys.executable, "-c", check], check=True)


def test_help_does_not_import_torch():
    # what keeps help instant; benchmarks/cli_help.py measures it against `python -c pass`
    check = (
        "import sys\nfrom reverso.cli import main\ntry:\n    main(['train', '--help'])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'timm', 'foolbox', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("[]")
