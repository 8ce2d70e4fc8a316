"""Shift consistency and equivariance of any model (docs/methods/antialias.md, section 4).

* :func:`consistency`: how often two random shifts of the same image get the same class.
* :func:`feature_equivariance`: cosine distance between features of a shifted input and the
  input's features shifted by the same amount (circular shifts; a shift by a fraction of a
  feature pixel is applied exactly with the Fourier shift theorem).
* :func:`shift_adversary_accuracy`: an image counts as correct only if every shift within
  +-``max_shift`` pixels is classified correctly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from reverso.errors import OptionError, check_count
from reverso.frontend.tracing import trace
from reverso.study.images import check_images, for_model


@torch.no_grad()
def consistency(
    model: nn.Module,
    images: torch.Tensor,
    *,
    max_shift: int = 32,
    pairs: int = 5,
    seed: int = 0,
    soft: bool = False,
) -> float:
    """Share of random crop pairs (offsets in [0, max_shift) on each axis, crop size = image size
    minus ``max_shift``) whose predicted classes agree: the BlurPool paper's consistency.

    ``soft=True`` returns the mean cosine similarity of the two output vectors instead, which also
    tells apart models whose top class does not move (an untrained net predicts one class for all)."""
    check_images(images)
    check_count("max_shift", max_shift)
    check_count("pairs", pairs)
    images = for_model(images, model)
    n, _, h, w = images.shape
    size = (h - max_shift, w - max_shift)
    if min(size) < 1:
        raise OptionError(f"max_shift={max_shift} leaves no image of {h}x{w} to crop")
    gen = torch.Generator().manual_seed(seed)
    agree = 0
    for _ in range(pairs):
        offsets = torch.randint(0, max_shift, (2, n, 2), generator=gen)
        outputs = [model(_crop(images, offsets[k], size)) for k in range(2)]
        if soft:
            agree += (
                F.cosine_similarity(outputs[0].flatten(1), outputs[1].flatten(1), dim=1)
                .sum()
                .item()
            )
        else:
            agree += (outputs[0].argmax(-1) == outputs[1].argmax(-1)).sum().item()
    return agree / (pairs * n)


@torch.no_grad()
def feature_equivariance(
    features: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    *,
    shifts: Sequence[int] = (1, 2, 3, 4),
) -> float:
    """Mean cosine distance between ``features(shift(x, d))`` and ``shift(features(x), d / stride)``
    over the given circular shifts d (pixels, both axes); 0 is perfect equivariance."""
    check_images(images)
    base = features(images)
    stride = images.shape[-1] / base.shape[-1]
    distances = []
    for d in shifts:
        moved = features(torch.roll(images, shifts=(d, d), dims=(-2, -1)))
        expected = fourier_shift(base, d / stride, d / stride)
        cos = F.cosine_similarity(moved.flatten(1), expected.flatten(1), dim=1)
        distances.append((1 - cos).mean().item())
    return sum(distances) / len(distances)


@torch.no_grad()
def shift_adversary_accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, max_shift: int = 4
) -> float:
    """Accuracy when an image counts only if every circular shift within +-max_shift is right."""
    check_images(images)
    check_count("max_shift", max_shift, 0)
    images, labels = for_model(images, model), for_model(labels, model)
    correct = torch.ones(images.shape[0], dtype=torch.bool)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            pred = model(torch.roll(images, shifts=(dy, dx), dims=(-2, -1))).argmax(-1)
            correct &= pred == labels
    return correct.float().mean().item()


def fourier_shift(x: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
    """Circularly shift the last two dimensions by (possibly fractional) amounts."""
    h, w = x.shape[-2:]
    ky = torch.fft.fftfreq(h, dtype=torch.float64, device=x.device)[:, None]
    kx = torch.fft.fftfreq(w, dtype=torch.float64, device=x.device)[None, :]
    phase = torch.exp(-2j * math.pi * (ky * dy + kx * dx))
    return torch.fft.ifft2(torch.fft.fft2(x.double()) * phase).real.to(x.dtype)


def features_at(model: nn.Module, node: str, input_size=None) -> fx.GraphModule:
    """A GraphModule computing the value of one node of ``model``'s graph (e.g. 'layer2_1_act2')."""
    gm = model if isinstance(model, fx.GraphModule) else trace(model, input_size)
    named = {n.name: n for n in gm.graph.nodes}
    if node not in named:
        raise OptionError(
            f"no node {node!r} in the model's graph; nodes include {list(named)[:8]} ..."
        )
    graph, env = fx.Graph(), {}
    for n in gm.graph.nodes:
        env[n] = graph.node_copy(n, lambda a: env[a])
        if n.name == node:
            break
    graph.output(env[named[node]])
    return fx.GraphModule(gm, graph)


def _crop(images: torch.Tensor, offsets: torch.Tensor, size) -> torch.Tensor:
    return torch.stack(
        [
            img[:, y : y + size[0], x : x + size[1]]
            for img, (y, x) in zip(images, offsets.tolist(), strict=True)
        ]
    )
