"""The catalogue sweep: convert a model in a process of its own and classify what happened.

Each model is built untrained (``num_classes=10``), converted with the default options (by
``reverso.topdown``, or any other of :data:`TRANSFORMS`), then run forward and backward on a batch
of 4 and given one SGD step. The outcome is one of
:data:`OUTCOMES`; a refusal that wraps a torch error is checked against the model itself: if the
bottom-up model runs eagerly at that size, the refusal hides a bug and counts as an internal
error. The child process watches its own memory (``memory_gb``) and time (``timeout_s``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass

from reverso.errors import OptionError

OUTCOMES = ("converts", "refused", "internal error", "out of memory", "timeout")
#: the conversions a sweep runs: ``reverso.<name>(model, input_size=...)`` with its defaults
TRANSFORMS = (
    "topdown",
    "njet",
    "antialias",
    "frames",
    "steerable",
    "hierarchical",
    "reversible",
    "checkpoint",
)


@dataclass
class Outcome:
    source: str  # "timm" | "torchvision"
    model: str
    outcome: str = "internal error"
    message: str = ""
    size: int = 0
    bu_params: int = 0
    td_params: int = 0
    convert_s: float = 0.0
    #: building the network by hand: a trace and a batch-1 forward of the model, initialisation
    construction_s: float = 0.0
    convert_peak_mb: float = 0.0  # resident memory the conversion added at its peak
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    #: what reverso warned while converting (module: first line), if anything
    warned: tuple[str, ...] = ()

    @property
    def param_mb(self) -> float:
        """Parameter bytes of the bottom-up and the emitted network (float32)."""
        return 4 * (self.bu_params + self.td_params) / 2**20


def smallest_timm_models(jobs: int = 1) -> list[str]:
    """The smallest model (by parameters, built on the meta device) of every timm module."""
    from concurrent.futures import ProcessPoolExecutor

    import timm

    with ProcessPoolExecutor(jobs) as pool:
        chosen = pool.map(smallest_of_module, timm.list_modules())
    return [name for name in chosen if name is not None]


def smallest_of_module(module: str) -> str | None:
    import timm
    import torch

    sizes = {}
    for name in timm.list_models(module=module):
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, num_classes=10)
        except Exception:  # a model timm itself cannot build is not ours to judge
            continue
        sizes[name] = sum(p.numel() for p in model.parameters())
    return min(sizes, key=sizes.get) if sizes else None


def torchvision_models() -> list[str]:
    """Every torchvision classification model."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def build(source: str, name: str):
    import torch

    torch.manual_seed(0)
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10)
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=10)


def input_side(model, default: int) -> int:
    """``default``, or the size a model that takes one fixed size was built for."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg["input_size"][-1] if cfg.get("fixed_input_size") else default


def check(source: str, name: str, side: int, transform: str = "topdown") -> Outcome:
    """Convert one model in this process (``reverso.<transform>``) and classify the outcome."""
    import torch
    import torch.nn.functional as F

    import reverso

    if transform not in TRANSFORMS:
        raise OptionError(f"transform must be one of {TRANSFORMS}, got {transform!r}")

    result = Outcome(source, name)
    model = build(source, name)
    result.size = input_side(model, side)
    result.bu_params = sum(p.numel() for p in model.parameters())
    size = (3, result.size, result.size)
    memory = _Memory()
    start = time.perf_counter()
    try:
        with memory, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            td = getattr(reverso, transform)(model, input_size=size)
        result.warned = tuple(
            f"{w.filename.rpartition('/')[2]}: {str(w.message).splitlines()[0][:200]}"
            for w in caught
            if _from_reverso(w.filename)
        )
    except Exception as err:
        result.outcome, result.message = classify(err, model, size), _first_line(err)
        return result
    result.convert_s, result.convert_peak_mb = time.perf_counter() - start, memory.peak_mb
    result.td_params = sum(p.numel() for p in td.parameters())
    if transform == "topdown":
        result.construction_s = construction_s(model, td, size)
    del model  # the training step needs the top-down network only (the largest are GBs)
    gc.collect()
    x, y = torch.rand(4, *size, generator=torch.Generator().manual_seed(0)), torch.arange(4) % 10
    try:
        td.train()
        loss = F.cross_entropy(td(x), y)
        loss.backward()
        untrained = [n for n, p in td.named_parameters() if p.requires_grad and p.grad is None]
        if untrained:  # a branch computed and thrown away: DDP would need find_unused_parameters
            result.outcome = "internal error"
            result.message = f"parameters without a gradient: {', '.join(untrained[:3])}"
            return result
        torch.nn.utils.clip_grad_norm_(td.parameters(), 1.0)
        torch.optim.SGD(td.parameters(), lr=0.003).step()
        with torch.no_grad():
            after = F.cross_entropy(td(x), y)
    except Exception as err:
        result.message = f"the converted network fails: {_first_line(err)}"
        return result
    result.loss_before, result.loss_after = float(loss), float(after)
    finite = all(torch.isfinite(torch.tensor(v)) for v in (result.loss_before, result.loss_after))
    result.outcome = "converts" if finite else "internal error"
    result.message = "" if finite else "non-finite loss"
    return result


def _from_reverso(filename: str) -> bool:
    """Whether a warning was raised by reverso's own code (its package or built-in passes)."""
    parts = filename.replace("\\", "/").split("/")
    return "reverso" in parts or "passes" in parts


def construction_s(model, td, size, *, fresh: bool = True) -> float:
    """Seconds that building ``td`` by hand would take, conversion's yardstick: one torch.fx
    trace and one batch-1 forward (eval mode, no gradients) of the bottom-up ``model``, plus
    creating ``td``'s parameters as its layers' constructors do: fresh memory for each, filled
    by the layer's ``reset_parameters`` (``td`` is re-drawn). Filling memory that was already
    written costs less than a constructor pays (the first write of fresh pages): re-drawing in
    place (``fresh=False``, the yardstick until December 2026) understates it."""
    import torch

    from reverso.frontend.tracing import ReversoTracer
    from reverso.ir.modes import evaluating

    x = torch.rand(1, *size)
    start = time.perf_counter()
    ReversoTracer().trace(model)
    with evaluating(model), torch.no_grad():
        model(x)
    for m in td.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset) and not isinstance(m, type(td)):
            for p in m.parameters(recurse=False) if fresh else ():
                p.data = torch.empty_like(p)
            reset()
    return time.perf_counter() - start


def classify(err: BaseException, model, size) -> str:
    """``refused`` for a diagnosis, ``internal error`` for a bug (see the module's docstring).

    Topology, width and tracing errors are raised by rules that name the construct; a
    ``PassError`` or ``InputSizeError`` around a torch error is checked against the model
    itself: if it runs eagerly at that size, the failure is reverso's."""
    from reverso.errors import InputSizeError, PassError, ReversoError

    if not isinstance(err, ReversoError):
        return "internal error"
    cause = err.__cause__
    wrapped = cause is not None and not isinstance(cause, ReversoError)
    if not (wrapped and isinstance(err, (PassError, InputSizeError))):
        return "refused"
    import torch

    try:  # a wrapped torch error: does the model itself run at this size?
        with torch.no_grad():
            model.eval()(torch.rand(2, *size))
    except Exception:  # the model cannot take this input: a fair refusal
        return "refused"
    return "internal error"


def check_isolated(
    source: str,
    name: str,
    side: int,
    *,
    memory_gb: float = 12.0,
    timeout_s: float = 600.0,
    transform: str = "topdown",
) -> Outcome:
    """:func:`check` in a child process that stops itself past ``memory_gb`` of resident memory."""
    command = [
        sys.executable,
        "-m",
        "reverso.sweep",
        source,
        name,
        str(side),
        str(memory_gb),
        transform,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Outcome(source, name, "timeout", f"no result within {timeout_s:.0f} s", side)
    lines = done.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Outcome(source, name, "internal error", f"the process died: {tail}", side)
    return Outcome(**json.loads(lines[-1]))


class _Memory:
    """Peak resident memory added while the block runs, polled every 20 ms."""

    def __init__(self):
        self.peak_mb = 0.0

    def __enter__(self):
        self.base, self._stop = _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, _rss_mb() - self.base)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb() - self.base)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _watch(limit_mb: float, report: Outcome) -> None:
    """Stop this process with an ``out of memory`` outcome once it holds ``limit_mb``."""
    while True:
        if _rss_mb() > limit_mb:
            report.outcome, report.message = "out of memory", f"over {limit_mb / 1024:.0f} GB"
            print(json.dumps(dataclasses.asdict(report)), flush=True)
            os._exit(0)
        time.sleep(0.05)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


if __name__ == "__main__":  # the child of check_isolated: SOURCE NAME SIDE MEMORY_GB TRANSFORM
    source, name, side, memory_gb = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    pending = Outcome(source, name, size=side)
    threading.Thread(target=_watch, args=(memory_gb * 1024, pending), daemon=True).start()
    print(json.dumps(dataclasses.asdict(check(source, name, side, sys.argv[5]))), flush=True)
