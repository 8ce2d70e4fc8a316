"""Model resolution: what ``reverso.topdown`` accepts as a model and its input size.

A model is an nn.Module or a timm model name (built untrained, ``pretrained=False``); wrappers
that only carry the model (DataParallel, ``torch.compile``), TorchScript modules and models with
uninitialised lazy parameters are refused with what to pass instead.
"""

from __future__ import annotations

import torch
from torch import nn

from reverso.errors import OptionError, TraceError
from reverso.ir.shapes import check_input_size


def resolve_model(model) -> nn.Module:
    """An nn.Module, or a timm model name created with ``pretrained=False``."""
    if isinstance(model, nn.Module):
        check_convertible(model)
        return model
    if isinstance(model, str):
        import timm

        if not timm.is_model(model):
            raise OptionError(f"'{model}' is not a timm model name.{did_you_mean(model)}")
        return timm.create_model(model, pretrained=False)
    raise OptionError(
        f"model must be an nn.Module or a timm model name, got {type(model).__name__}"
    )


def check_convertible(model: nn.Module) -> None:
    """Refuse, with what to pass instead, the modules that only wrap the model to convert
    (DataParallel, DistributedDataParallel, ``torch.compile``), TorchScript modules (no Python
    forward to trace) and models whose lazy modules have not run yet (no shapes to read)."""
    kind = type(model).__name__
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        raise OptionError(
            f"{kind} wraps the model to convert: pass model.module, then wrap the converted model again"
        )
    if kind == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        raise OptionError(
            "this model was compiled with torch.compile: convert the model it wraps "
            "(model._orig_mod), then compile the converted model"
        )
    if isinstance(model, torch.jit.ScriptModule):
        raise TraceError(
            f"{kind} is a TorchScript module, which has no Python forward for torch.fx to trace: "
            "convert the nn.Module it was scripted from"
        )
    lazy = [
        name or kind
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params()
    ]
    if lazy:
        raise OptionError(
            f"module(s) {', '.join(repr(n) for n in lazy)} have lazy parameters that are not "
            "initialised yet: run the model once on a batch of the input size, "
            "e.g. model(torch.zeros(1, 3, 224, 224)), then convert it"
        )


def did_you_mean(name: str, extra=()) -> str:
    """The hint ' Did you mean: a, b?' naming the timm models (and ``extra``) closest to ``name``."""
    import timm

    from reverso.names import close_matches

    close = close_matches(name, [*extra, *timm.list_models()])
    return f" Did you mean: {', '.join(close)}?" if close else ""


def resolve_input_size(model: nn.Module, input_size) -> tuple[int, int, int]:
    """``input_size`` if given, else timm's ``pretrained_cfg["input_size"]``."""
    if input_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        input_size = cfg.get("input_size")
        if input_size is None:
            raise OptionError(
                f"input_size is required for {type(model).__name__}: it has no timm pretrained_cfg "
                "to read it from. Pass input_size=(channels, height, width), e.g. input_size=(3, 224, 224)."
            )
        # timm keeps the pretrained config's 3 channels when built with another in_chans
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None and first.groups == 1 and first.in_channels != input_size[0]:
            input_size = (first.in_channels, *input_size[1:])
    return check_input_size(input_size)
