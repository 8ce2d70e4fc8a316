"""Grad-CAM and the top-down paper's weakly supervised localisation protocol (Exp 3).

Grad-CAM (Selvaraju et al., ICCV 2017) as the top-down authors' code computes it
(docs/methods/evaluation.md, section 4): on a conv layer's output ``A`` (default: the last conv
the model runs, after its BatchNorm and activation when modules right after it apply them, as the
plain nets' class map), weights ``w_k`` = spatial mean of the gradient of the top-1 class's
softmax probability with respect to ``A_k``; cam = sum_k w_k A_k, minus its mean, divided by its
L2 norm, upsampled bilinearly to the input size, ReLU, divided by its maximum, so it lies in
[0, 1]. ``formula="relu_max"`` is the original recipe (logit gradient, ReLU, upsample, divide by
the max).

Localisation (docs/methods/evaluation.md, section 4): the object mask is the set of pixels above
``t = 0.2``, the prediction the set of pixels where the CAM is above ``cam_threshold`` (default
also 0.2); precision and recall count true positive, false positive and false negative pixels over
all images that every compared model classifies correctly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reverso.errors import OptionError
from reverso.ir.modes import evaluating
from reverso.nn import NJetConv2d
from reverso.study.images import check_images, for_model
from reverso.study.plotting import TEXT_WIDTH, new_figure, save_figure, styled

CONVS = (nn.Conv2d, NJetConv2d)
#: Grad-CAM formulas: the top-down authors' code, and Selvaraju et al.'s ReLU-then-max
FORMULAS = ("reference", "relu_max")
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.ELU, nn.Hardswish)


@dataclass
class CAM:
    maps: torch.Tensor  # (N, H, W) in [0, 1], at the input's size
    layer: str
    predictions: torch.Tensor  # the class each map explains (top-1 unless given)
    where: str = ""  # the layer in words, for titles: "last conv (3x3), 64 ch at 7x7"


def last_conv(model: nn.Module, example: torch.Tensor) -> str:
    """The layer Grad-CAM explains by default: the last conv ``model`` runs on ``example``, or the
    norm and activation modules that run right after it on its output (the plain nets' class map
    after BN-ReLU, as the reference code reads it)."""
    return _default_layer(model, example)[0]


def _default_layer(model: nn.Module, example: torch.Tensor) -> tuple[str, str]:
    """(the layer :func:`last_conv` names, the conv it follows)."""
    leaves = {m: n for n, m in model.named_modules() if not list(m.children())}
    ran: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []  # (module, input, output)

    def record(m, inputs, output):
        if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
            ran.append((m, inputs[0], output))

    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    convs = [i for i, (m, _, _) in enumerate(ran) if isinstance(m, CONVS)]
    if not convs:
        raise OptionError(f"{type(model).__name__} runs no conv layer; pass layer= explicitly")
    chosen = convs[-1]
    for follower in (nn.modules.batchnorm._BatchNorm, ACTIVATIONS):
        step = chosen + 1
        if (
            step < len(ran)
            and isinstance(ran[step][0], follower)
            and _same_map(ran[step][1], ran[chosen][2])
        ):
            chosen = step
    return leaves[ran[chosen][0]], leaves[ran[convs[-1]][0]]


def _same_map(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` is ``b`` (or ``b`` changed in place by an in-place activation)."""
    return a is b or (a.shape == b.shape and a.data_ptr() == b.data_ptr())


def _targets(target, logits: torch.Tensor) -> torch.Tensor:
    """One class index per image: ``target`` as given, or one int repeated."""
    n, classes = logits.shape
    chosen = torch.as_tensor(target, device=logits.device).long().flatten()
    chosen = chosen.expand(n) if chosen.numel() == 1 else chosen
    if chosen.numel() != n or chosen.min() < 0 or chosen.max() >= classes:
        raise OptionError(
            f"target must be one class in [0, {classes}) per image ({n}) or one for all, got "
            f"{target!r}"
        )
    return chosen


def gradcam(
    model: nn.Module,
    images: torch.Tensor,
    *,
    layer: str | nn.Module | None = None,
    target: torch.Tensor | int | None = None,
    normalize=None,
    formula: str = "reference",
) -> CAM:
    """Grad-CAM maps of ``images`` (N, C, H, W) on ``layer`` (a module name or module; default
    the last conv, after its BN-ReLU), for the ``target`` classes (default: the predicted ones;
    one class per image, or one int for all).

    ``formula="reference"`` (the top-down authors' code): the gradient of the class's softmax
    probability; cam = sum_k w_k A_k, minus its mean, divided by its L2 norm, resized
    bilinearly, ReLU, divided by its max. ``"relu_max"`` (Selvaraju et al., reverso's earlier
    default): the gradient of the logit; ReLU, resized, divided by its max."""
    check_images(images)
    images = for_model(images, model)
    if formula not in FORMULAS:
        raise OptionError(f"formula must be one of {FORMULAS}, got {formula!r}")
    prepare = normalize or (lambda x: x)
    with evaluating(model):
        name, module, conv = _layer(model, layer, prepare(images[:1]))
        store: dict[str, torch.Tensor] = {}

        def keep(_module, _inputs, output):
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                raise OptionError(f"layer {name!r} does not output a feature map (N, C, H, W)")
            store["a"] = output
            return output.clone()  # later in-place ops (ReLU(inplace=True)) leave A untouched

        handle = module.register_forward_hook(keep)
        try:
            with torch.enable_grad():
                x = prepare(images).detach().requires_grad_(True)  # a graph even if frozen
                logits = model(x)
                chosen = logits.argmax(1) if target is None else _targets(target, logits)
                if "a" not in store:
                    raise OptionError(f"layer {name!r} did not run in the forward pass")
                if formula == "reference":
                    logits = logits.softmax(1)  # the probability, not the logit
                score = logits.gather(1, chosen.view(-1, 1)).sum()
                (grad,) = torch.autograd.grad(score, store["a"])
        finally:
            handle.remove()
        activations = store["a"].detach()
        if activations.shape[-2:] == (1, 1):
            raise OptionError(
                f"layer {name!r} outputs a 1x1 map (it runs after global pooling): a CAM needs "
                "space; pass layer= an earlier conv"
            )
        where = _in_words(conv, activations, "last conv" if layer is None else f"layer {name}")
        if conv is not module:  # the class map after its norm and activation
            where = where.replace(",", f" after {type(module).__name__},", 1)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = (weights * activations).sum(1, keepdim=True)
        size = images.shape[-2:]
        if formula == "reference":
            cam = cam - cam.mean(dim=(2, 3), keepdim=True)
            cam = cam / cam.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            cam = F.relu(F.interpolate(cam, size=size, mode="bilinear", align_corners=False))
        else:
            cam = F.interpolate(F.relu(cam), size=size, mode="bilinear", align_corners=False)
        cam = cam[:, 0]
        peak = cam.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
        return CAM((cam / peak).clamp(0, 1).cpu(), name, chosen.detach().cpu(), where)


def _in_words(module: nn.Module, activations: torch.Tensor, role: str) -> str:
    kernel = getattr(module, "kernel_size", None)
    if isinstance(kernel, (tuple, list)):
        kernel = "x".join(str(k) for k in kernel)
    kind = f" ({kernel})" if isinstance(kernel, str) else f" ({type(module).__name__})"
    c, h, w = activations.shape[1:]
    return f"{role}{kind}, {c} ch at {h}x{w}"


def _layer(model: nn.Module, layer, example) -> tuple[str, nn.Module, nn.Module]:
    """(name, module, the conv it is or follows, for words)."""
    modules = dict(model.named_modules())
    if layer is None:
        name, conv = _default_layer(model, example)
        return name, modules[name], modules[conv]
    if isinstance(layer, nn.Module):
        name = next((n for n, m in modules.items() if m is layer), None)
        if name is None:
            raise OptionError(f"the given layer {type(layer).__name__} is not part of the model")
        return name, layer, layer
    if layer not in modules:
        convs = [n for n, m in modules.items() if isinstance(m, CONVS)]
        raise OptionError(f"no layer {layer!r} in the model; its conv layers are {convs[-6:]} ...")
    return layer, modules[layer], modules[layer]


@dataclass
class Localization:
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int
    images: int

    def __str__(self) -> str:
        return (
            f"precision {self.precision:.3f}, recall {self.recall:.3f} over {self.images} images "
            f"(TP {self.tp}, FP {self.fp}, FN {self.fn} pixels)"
        )


def localization(
    maps: torch.Tensor, images: torch.Tensor, *, t: float = 0.2, cam_threshold: float = 0.2
) -> Localization:
    """Pixel precision and recall of CAMs (N, H, W) against object masks ``images > t``."""
    if images.dim() == 4:
        images = images.max(1).values  # an object pixel is bright in any channel
    if maps.shape != images.shape:
        raise OptionError(
            f"maps {tuple(maps.shape)} and images {tuple(images.shape)} differ in size"
        )
    target, predicted = images > t, maps > cam_threshold
    tp = int((predicted & target).sum())
    fp = int((predicted & ~target).sum())
    fn = int((~predicted & target).sum())
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    return Localization(precision, recall, tp, fp, fn, len(maps))


def compare_localization(
    models: dict[str, nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    layers: dict[str, str] | None = None,
    t: float = 0.2,
    cam_threshold: float = 0.2,
    normalize=None,
    formula: str = "reference",
) -> tuple[dict[str, Localization], dict[str, CAM], torch.Tensor]:
    """Localisation of several models on the images that all of them classify correctly.

    Returns (localisation per model, CAMs per model on those images, their indices).
    """
    layers = layers or {}
    cams = {
        name: gradcam(m, images, layer=layers.get(name), normalize=normalize, formula=formula)
        for name, m in models.items()
    }
    both = torch.ones(len(labels), dtype=torch.bool)
    for cam in cams.values():
        both &= cam.predictions == labels.cpu()
    index = both.nonzero().flatten()
    if len(index) == 0:
        raise OptionError("no image is classified correctly by every model; train them first")
    picked = {
        name: dataclasses.replace(cam, maps=cam.maps[index], predictions=cam.predictions[index])
        for name, cam in cams.items()
    }
    results = {
        name: localization(cam.maps, images[index].cpu(), t=t, cam_threshold=cam_threshold)
        for name, cam in picked.items()
    }
    return results, picked, index


@styled
def save_overlays(
    images: torch.Tensor,
    cams: dict[str, CAM],
    path: str | Path,
    *,
    count: int = 6,
    labels: torch.Tensor | None = None,
    classes: list[str] | None = None,
    title: str | None = None,
) -> Path:
    """A grid: one row per image, the input then each model's CAM over it, with the true class
    (``labels``) and each model's prediction; .png, .pdf or .svg by the suffix of ``path``."""

    def name_of(k: int) -> str:
        return classes[k] if classes is not None and 0 <= k < len(classes) else str(k)

    count = min(count, len(images))
    cols = 1 + len(cams)
    side = min(1.6, (TEXT_WIDTH - 0.9) / cols)
    fig, axes = new_figure(count, cols, size=(side * cols + 0.8, side * count + 0.9))
    overlay = None
    for row in range(count):
        image = images[row].detach().cpu()
        grey = image.shape[0] == 1
        shown = (image[0] if grey else image.permute(1, 2, 0)).numpy()
        cmap = "gray" if grey else None
        axes[row, 0].imshow(shown, cmap=cmap)
        if labels is not None:
            axes[row, 0].set_ylabel(f"true: {name_of(int(labels[row]))}")
        for col, (name, cam) in enumerate(cams.items(), start=1):
            ax = axes[row, col]
            ax.imshow(shown, cmap=cmap)
            overlay = ax.imshow(cam.maps[row].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            predicted = int(cam.predictions[row])
            right = labels is None or predicted == int(labels[row])
            ax.set_xlabel(
                f"predicted: {name_of(predicted)}", color="black" if right else "firebrick"
            )
            if row == 0:
                where = (cam.where or cam.layer).replace(", ", "\n")
                ax.set_title(f"{name}\n{where}")
        if row == 0:
            axes[row, 0].set_title("input")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    if overlay is not None:
        bar = fig.colorbar(overlay, ax=list(axes[:, -1]), shrink=min(1.0, 3 / count), pad=0.02)
        bar.solids.set(alpha=1)
        bar.set_label("Grad-CAM (1 = the map's maximum)")
    fig.suptitle(title or "Grad-CAM: where each model looks for the class it predicts")
    return save_figure(fig, path)
