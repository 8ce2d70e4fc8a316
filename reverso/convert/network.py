"""The network ``reverso.topdown`` returns: a plain nn.Module that answers what a timm model answers.

``features`` is a GraphModule from the image to the last top-down feature map (its code is
readable: ``print(net.code)``), ``head`` holds the bottom-up head (pooling and classifier).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from reverso import ir
from reverso.convert.recipe import Recipe
from reverso.errors import InputSizeError, OptionError, UnsupportedTopologyError
from reverso.ir.shapes import channels
from reverso.rewrite.units import unit_view


class ClassifierHead(nn.Module):
    """The bottom-up head: ``pre_logits`` (pooling, norms, ...) then ``fc`` (the classifier on)."""

    def __init__(self, pre_logits: fx.GraphModule, fc: fx.GraphModule):
        super().__init__()
        self.pre_logits = pre_logits
        self.fc = fc

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(x)
        return x if pre_logits else self.fc(x)


class TopDownNet(nn.Module):
    """A top-down (coarse-to-fine) network compiled from a bottom-up CNN by reverso."""

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
        self.feature_info = feature_info
        self.num_features = feature_info[-1]["num_chs"] if feature_info else 0
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

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        """Give the classifier a new number of classes (fresh weights), like timm models;
        ``num_classes=0`` removes it (the network then outputs its pre-logit features) until a
        later call puts one back. ``global_pool`` is accepted for timm's signature; the pooling
        stays as compiled."""
        from reverso.rewrite.widths import REGISTRY

        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise OptionError(f"num_classes must be an int >= 0, got {num_classes!r}")
        fc = self.head.fc
        removed = getattr(self, "_removed_classifier", None)  # (target, module) after a reset to 0
        if removed is not None:
            target, module = removed
        else:
            layers = [
                n
                for n in fc.graph.nodes
                if n.op == "call_module" and REGISTRY.lookup(fc.get_submodule(n.target))
            ]
            if not layers:
                raise UnsupportedTopologyError(
                    "this network's head (head.fc) has no classifier layer reverso can resize; "
                    "replace head.fc yourself, or use forward_head(x, pre_logits=True)"
                )
            target = layers[-1].target
            module = fc.get_submodule(target)
        if num_classes == 0:
            self._removed_classifier = (target, module)
            ir.set_module(fc, target, nn.Identity())
        else:
            self._removed_classifier = None
            rule = REGISTRY.lookup(module)
            ir.set_module(fc, target, REGISTRY.rebuild(module, rule.in_width(module), num_classes))
        self.num_classes = num_classes


def emit(gm: fx.GraphModule, ctx, recipe: Recipe) -> TopDownNet:
    """Split the compiled graph into features and head and wrap it as a :class:`TopDownNet`."""
    plan = ctx.plan
    head_units = set(plan.head)
    head_view = unit_view(gm, plan.head[0])
    image = next(
        n
        for n in gm.graph.nodes
        if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor)
    )
    head_nodes = [n for n in gm.graph.nodes if ir.unit_of(n) in head_units]
    body_nodes = [
        n
        for n in gm.graph.nodes
        if n.op not in ("placeholder", "output") and n not in set(head_nodes)
    ]
    name = type(ctx.model).__name__
    features = _extract(gm, body_nodes, {image: "x"}, head_view.entry, f"TopDown{name}Features")
    head = _split_head(gm, head_nodes, head_view.entry, image, ctx.report.num_classes, name)
    features_info = _feature_info(gm, plan)
    cfg = dict(getattr(ctx.model, "pretrained_cfg", None) or {})
    cfg["input_size"] = tuple(ctx.input_size)
    net = TopDownNet(
        features,
        head,
        num_classes=ctx.report.num_classes,
        in_chans=ctx.input_size[0],
        # the total downsampling, or less where the net was compiled (and so checked) at a
        # smaller size: an input size the conversion accepted is one the network accepts
        min_size=min(2**plan.entry_level, *ctx.input_size[1:]),
        feature_info=features_info,
        pretrained_cfg=cfg,
        recipe=recipe,
        report=ctx.report,
        plan=dataclasses.replace(plan, laterals={}),
    )
    net = ir.own_copy(net, ctx.model)
    ref = next(ctx.model.parameters(), None)
    if ref is not None:
        net.to(device=ref.device, dtype=ref.dtype)
    return net


def _extract(
    gm: fx.GraphModule,
    nodes: list[fx.Node],
    inputs: dict[fx.Node, str],
    output: fx.Node,
    class_name: str,
):
    graph = fx.Graph()
    env = {old: graph.placeholder(name) for old, name in inputs.items()}
    for old, new in env.items():  # copied nodes keep their shapes; so do the new inputs
        new.meta["val"] = old.meta.get("val")
    for n in nodes:
        env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(env[output])
    return fx.GraphModule(gm, graph, class_name=class_name)


def _split_head(gm, head_nodes, entry, image, num_classes: int, name: str) -> ClassifierHead:
    """Split the head before its classifier (the last layer that outputs the class scores)."""
    from reverso.rewrite.widths import REGISTRY

    classifier = None
    for n in head_nodes:
        m = ir.module_of(gm, n)
        rule = REGISTRY.lookup(m) if m is not None else None
        if rule is not None and not rule.preserves_width(m) and rule.out_width(m) == num_classes:
            classifier = n
    result = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if classifier is not None:
        before = head_nodes[: head_nodes.index(classifier)]
        after = head_nodes[head_nodes.index(classifier) :]
        pre_input = classifier.args[0]
        if all(a in set(after) or a is pre_input for n in after for a in n.all_input_nodes):
            pre = _extract(
                gm,
                before,
                {entry: "x", image: "image"},
                pre_input if before else entry,
                f"{name}PreLogits",
            )
            fc = _extract(gm, after, {pre_input: "x"}, result, f"{name}Classifier")
            return ClassifierHead(_drop_unused_input(pre), fc)
    identity = fx.symbolic_trace(nn.Identity())
    return ClassifierHead(
        identity,
        _drop_unused_input(
            _extract(gm, head_nodes, {entry: "x", image: "image"}, result, f"{name}Head")
        ),
    )


def _drop_unused_input(gm: fx.GraphModule) -> fx.GraphModule:
    """Remove the 'image' placeholder when the head does not read the image (the usual case)."""
    for n in list(gm.graph.nodes):
        if n.op == "placeholder" and n.name == "image":
            if n.users:
                raise UnsupportedTopologyError(
                    "the head reads the input image; reverso converts a convolutional body "
                    "followed by a head that reads only the body's last feature map"
                )
            gm.graph.erase_node(n)
    gm.recompile()
    return gm


def _feature_info(gm: fx.GraphModule, plan) -> list[dict]:
    """timm-style feature_info: one entry per top-down stage (stem, then each slot)."""
    info = []
    stages = ([plan.stem] if plan.stem else []) + [s.units for s in plan.slots]
    levels = ([plan.entry_level] if plan.stem else []) + [s.level for s in plan.slots]
    for units, level in zip(stages, levels, strict=True):
        exit_ = unit_view(gm, units[-1]).exit
        # a merge that closes the stage is the stage's real output
        merges = [u for u in exit_.users if ir.role_of(u) is ir.Role.MERGE]
        exit_ = merges[0] if merges else exit_
        info.append({"num_chs": channels(exit_), "reduction": 2**level, "module": exit_.name})
    return info
