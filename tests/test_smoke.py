import subprocess
import sys

import pytest
import torch

import reverso
from reverso import models


def test_lenet_fc_converts_and_runs():
    td = reverso.topdown(models.create("lenet_fc"))
    assert td(torch.rand(2, 1, 28, 28)).shape == (2, 10)


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
    with pytest.raises(AttributeError, match="no attribute 'tpodown'"):
        reverso.tpodown  # noqa: B018
