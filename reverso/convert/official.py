"""Checkpoints of the official antialiased-cnns models (github.com/adobe/antialiased-cnns) loaded
into ``reverso.antialias(model, variant="official")``.

The official code builds each model by hand from torchvision's: it wraps a conv in
``nn.Sequential(BlurPool, conv)`` (``layer2.0.conv2.weight`` becomes ``layer2.0.conv2.1.weight``)
or inserts a BlurPool into an existing Sequential (``downsample.0`` becomes ``downsample.1``), and
each BlurPool keeps its filter in the state_dict (``*.filt``). reverso keeps torchvision's names.
So the mapping is by name, with the Sequential indices left free:

* a key's *skeleton* is its path without the purely numeric parts (``layer2.conv2.weight``); a
  wrap or an insertion changes numbers only, never the skeleton;
* within one skeleton, the official keys and the model's keys pair up in natural order (numbers
  compared as numbers), and every pair must agree in shape;
* the ``filt`` buffers are not loaded (reverso builds its filters) but checked: as many as the
  model has blurs, each the binomial filter of the model's ``filter_size``.

Old torchvision DenseNet keys (``norm.1.weight`` for ``norm1.weight``) are renamed first, as the
official loader does, and a ``module.`` prefix (a DataParallel checkpoint) is dropped.
"""

from __future__ import annotations

import re
from os import PathLike

import torch
from torch import nn

from reverso.errors import FileFormatError
from reverso.nn.blurpool import BlurPool2d

_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)


def official_state_dict(
    model: nn.Module, checkpoint: dict | str | PathLike
) -> dict[str, torch.Tensor]:
    """The official checkpoint ``checkpoint`` (a state_dict, a ``{"state_dict": ...}`` dict or the
    path of either) under the names of ``model``, a ``reverso.antialias(..., variant="official")``
    result: ``model.load_state_dict(official_state_dict(model, checkpoint))`` loads it.

    Raises :class:`~reverso.errors.FileFormatError` naming the first key that does not fit (an
    unreadable file, a different architecture, a different ``filter_size`` or ``stem``)."""
    source = checkpoint if isinstance(checkpoint, dict) else _read(checkpoint)
    state = _unwrap(source)
    filters = {k: v for k, v in state.items() if k.split(".")[-1] == "filt"}
    _check_filters(model, filters)
    theirs = [k for k in state if k not in filters]
    mine = model.state_dict()
    mapping = _pair_by_skeleton(theirs, list(mine))
    for their_key, our_key in mapping.items():
        if state[their_key].shape != mine[our_key].shape:
            raise FileFormatError(
                f"checkpoint key {their_key!r} has shape {tuple(state[their_key].shape)}, but the "
                f"model's {our_key!r} has {tuple(mine[our_key].shape)}: the checkpoint is of "
                "another architecture or width; build the model it was trained from"
            )
    return {our_key: state[their_key] for their_key, our_key in mapping.items()}


def _read(path: str | PathLike) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise FileFormatError(f"no checkpoint file at {path}") from err
    except Exception as err:  # torch raises many kinds for a corrupt or foreign file
        raise FileFormatError(
            f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}); "
            "pass the official .pth file or its state_dict"
        ) from err


def _unwrap(source: dict) -> dict[str, torch.Tensor]:
    state = source.get("state_dict", source)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise FileFormatError(
            "the checkpoint is not a state_dict (names -> tensors) nor a dict with one under "
            "'state_dict'"
        )
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        old = _OLD_DENSENET_KEY.match(key)
        renamed[f"{old[1]}{old[2]}.{old[3]}" if old else key] = value
    return renamed


def _check_filters(model: nn.Module, filters: dict[str, torch.Tensor]) -> None:
    blurs = [m for m in model.modules() if isinstance(m, BlurPool2d)]
    if len(filters) != len(blurs):
        raise FileFormatError(
            f"the checkpoint has {len(filters)} blur filters, the model {len(blurs)}: build it with "
            "the checkpoint's settings (stem=True for an official model with pool_only=False)"
        )
    if not blurs:
        return
    expected = blurs[0].filt[0, 0].to(torch.float64)
    for key, filt in filters.items():
        got = filt.reshape(-1, *filt.shape[-2:])[0].to(torch.float64)
        if got.shape != expected.shape or not torch.allclose(got, expected):
            raise FileFormatError(
                f"checkpoint filter {key!r} is {got.shape[-1]}x{got.shape[-1]}, not the model's "
                f"binomial filter_size={blurs[0].filter_size}: build the model with "
                f"filter_size={got.shape[-1]}"
            )


def _pair_by_skeleton(theirs: list[str], ours: list[str]) -> dict[str, str]:
    """Their keys -> our keys: the same skeleton, paired in natural order."""
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for side, keys in ((0, theirs), (1, ours)):
        for key in keys:
            groups.setdefault(_skeleton(key), ([], []))[side].append(key)
    mapping = {}
    for skeleton, (their_keys, our_keys) in groups.items():
        if len(their_keys) != len(our_keys):
            extra = their_keys[len(our_keys) :] or our_keys[len(their_keys) :]
            where, other = (
                ("checkpoint", "model")
                if len(their_keys) > len(our_keys)
                else ("model", "checkpoint")
            )
            raise FileFormatError(
                f"the {where} has {extra[0]!r}, which the {other} lacks ({skeleton!r}: "
                f"{len(their_keys)} in the checkpoint, {len(our_keys)} in the model): the "
                "checkpoint is of another architecture; build the model it was trained from"
            )
        mapping.update(
            zip(sorted(their_keys, key=_natural), sorted(our_keys, key=_natural), strict=True)
        )
    return mapping


def _skeleton(key: str) -> str:
    return ".".join(part for part in key.split(".") if not part.isdigit())


def _natural(key: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split("."))
