"""The network ``reverso.topdown`` returns: a plain nn.Module that answers what a timm model answers.

``features`` is a GraphModule from the image to the last top-down feature map (its code is
readable: ``print(net.code)``), ``head`` holds the bottom-up head (pooling and classifier).
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from reverso import ir
from reverso.convert.recipe import Recipe
from reverso.convert.timm_api import TimmFeatures
from reverso.errors import InputSizeError, OptionError, UnsupportedTopologyError
from reverso.rewrite.classifier import classifier_node


class ClassifierHead(nn.Module):
    """The bottom-up head: ``pre_logits`` (pooling, norms, ...) then ``fc`` (the classifier on)."""

    def __init__(self, pre_logits: fx.GraphModule, fc: fx.GraphModule):
        super().__init__()
        self.pre_logits = pre_logits
        self.fc = fc
        self.unpooled = False  # reset_classifier(0, ""): the head passes its input through

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.unpooled:
            return x
        x = self.pre_logits(x)
        return x if pre_logits else self.fc(x)


class TopDownNet(TimmFeatures, nn.Module):
    """A top-down (coarse-to-fine) network compiled from a bottom-up CNN by reverso.

    It answers what a timm model answers: ``forward_features``, ``forward_head``,
    ``num_classes``, ``num_features``, ``head_hidden_size``, ``feature_info`` (finest first),
    ``forward_intermediates``, ``prune_intermediate_layers``, ``group_matcher``,
    ``set_grad_checkpointing``, ``reset_classifier``, ``get_classifier`` and ``pretrained_cfg``.
    """

    def __init__(
        self,
        features: fx.GraphModule,
        head: ClassifierHead,
        *,
        num_classes: int,
        in_chans: int,
        min_size: int,
        feature_info: list[dict],
        pretrained_cfg: dict,
        recipe: Recipe,
        report=None,
        plan=None,
    ):
        super().__init__()
        self.features = features
        self.head = head
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.min_size = min_size
        self.feature_info = feature_info  # finest first, as timm lists features
        self.num_features = feature_info[0]["num_chs"] if feature_info else 0
        self.head_hidden_size = self.num_features  # the width the classifier reads
        self.grad_checkpointing = False
        self.pretrained_cfg = pretrained_cfg
        self.default_cfg = pretrained_cfg
        self.reverso_recipe = recipe  # how reverso.load rebuilds it
        self.report = report  # the bottom-up StageReport this network was compiled from
        self.plan = plan  # where each bottom-up unit went (TopDownPlan)

    @property
    def recipe(self) -> dict:
        """How this network was compiled, as JSON (a copy of ``reverso_recipe.to_json()``): the
        source model, ``input_size``, the top-down ``options``, the ``pipeline`` and ``passes``."""
        return self.reverso_recipe.to_json()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not (is_fx_symbolic_tracing() or torch.jit.is_scripting()):
            self._check_input(x)
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise InputSizeError(
                f"expected a batch of images (N, {self.in_chans}, H, W), got a tensor of shape {tuple(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0) for a single image"
            )
        if x.shape[1] != self.in_chans:
            raise InputSizeError(
                f"expected {self.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        if x.shape[-2] < self.min_size or x.shape[-1] < self.min_size:
            raise InputSizeError(
                f"input {x.shape[-2]}x{x.shape[-1]} is too small for this network: its pyramid "
                f"needs inputs of at least {self.min_size}x{self.min_size}"
            )

    def __str__(self) -> str:
        return f"{super().__repr__()}\n\n{self.code}"

    @property
    def code(self) -> str:
        """The generated Python code of the features and the head."""
        return "\n".join(
            f"# {name}\n{module.code.strip()}\n"
            for name, module in (
                ("features", self.features),
                ("head.pre_logits", self.head.pre_logits),
                ("head.fc", self.head.fc),
            )
        )

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    @property
    def global_pool(self) -> str | None:
        """The head's global pooling in timm's names (``"avg"``, ``"max"``, ``"avgmax"``,
        ``"catavgmax"``), read from its graph; ``""`` when bypassed, None when unnamed."""
        return "" if self.head.unpooled else pooling_of(self.head.pre_logits)

    def classifier_path(self) -> str | None:
        """The path of the classifier layer (``head.fc.<name>``), None without one."""
        layer = classifier_node(self.head.fc, self.head.fc.graph.nodes, self.num_classes)
        return None if layer is None else f"head.fc.{layer.target}"

    def rewrite_features(self, step, batch: int = 1) -> None:
        """Run the graph pass ``step`` on ``features``, in place (at the compiled input size)."""
        from reverso.compiler.pipeline import Pipeline
        from reverso.ir.shapes import propagate
        from reverso.planner.context import Context

        ctx = Context(self, tuple(self.reverso_recipe.input_size))
        ctx.batch = batch
        propagate(self.features, ctx.example_input())
        self.features = Pipeline([step]).run(self.features, ctx)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Give the classifier a new number of classes (fresh weights), like timm models;
        ``num_classes=0`` removes it (the network then outputs its pre-logit features) until a
        later call puts one back. ``global_pool=""`` also bypasses the pooling (and whatever else
        the head does before its classifier): the network outputs its last feature map, as
        ``forward_features`` does. ``None`` keeps the head's pooling as compiled, and so does the
        name of a pooling: it cannot be changed."""
        from reverso.rewrite.widths import REGISTRY

        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise OptionError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if global_pool == "" and num_classes:
            raise OptionError(
                "global_pool='' gives the unpooled feature map: it takes num_classes=0 (a "
                "classifier reads pooled features)"
            )
        if global_pool is not None and not isinstance(global_pool, str):
            raise OptionError(f"global_pool must be a string or None, got {global_pool!r}")
        compiled = self.global_pool
        if global_pool and global_pool != compiled:
            raise OptionError(
                f"global_pool={global_pool!r}: this network's pooling is compiled from its "
                f"bottom-up model's head ({compiled or 'a pooling reverso cannot name'}) and "
                "cannot be changed on the top-down net; build the bottom-up model with "
                f"global_pool={global_pool!r} and convert that (timm.create_model("
                f"'topdown_<name>', global_pool={global_pool!r}) does), or pass "
                "global_pool=None to keep it"
            )
        if global_pool is not None or num_classes:  # a classifier reads pooled features
            self.head.unpooled = global_pool == ""
        fc = self.head.fc
        removed = getattr(self, "_removed_classifier", None)  # (target, module) after a reset to 0
        if removed is not None:
            target, module = removed
        else:
            layer = classifier_node(fc, fc.graph.nodes, self.num_classes)
            if layer is None:
                raise UnsupportedTopologyError(
                    "this network's head (head.fc) has no classifier layer reverso can resize; "
                    "replace head.fc yourself, or use forward_head(x, pre_logits=True)"
                )
            target = layer.target
            module = fc.get_submodule(target)
        if num_classes == 0:
            self._removed_classifier = (target, module)
            ir.set_module(fc, target, nn.Identity())
        else:
            self._removed_classifier = None
            rule = REGISTRY.lookup(module)
            ir.set_module(fc, target, REGISTRY.rebuild(module, rule.in_width(module), num_classes))
        self.num_classes = num_classes


#: how a head pools over the whole map: modules, functions and tensor methods
_AVERAGES = (nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d, "mean")
_MAXIMA = (nn.AdaptiveMaxPool2d, F.adaptive_max_pool2d, "amax", "max")


def pooling_of(head: fx.GraphModule) -> str | None:
    """The global pooling a head's graph applies, in timm's names, or None (none, or unnamed)."""
    kinds = set()
    for n in head.graph.nodes:
        what = type(head.get_submodule(n.target)) if n.op == "call_module" else n.target
        if n.op == "call_method" and not _over_the_map(n):
            continue
        if what in _AVERAGES:
            kinds.add("avg")
        elif what in _MAXIMA:
            kinds.add("max")
    if kinds == {"avg", "max"}:
        cat = any(n.op == "call_function" and n.target is torch.cat for n in head.graph.nodes)
        return "catavgmax" if cat else "avgmax"
    return kinds.pop() if len(kinds) == 1 else None


def _over_the_map(n: fx.Node) -> bool:
    """Whether a ``mean``/``amax``/``max`` method reduces both spatial dimensions."""
    dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    dims = (dims,) if isinstance(dims, int) else dims
    return isinstance(dims, (tuple, list)) and {d % 4 for d in dims if isinstance(d, int)} >= {2, 3}
