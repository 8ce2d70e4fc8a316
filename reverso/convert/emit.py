"""From the compiled graph to the :class:`~reverso.convert.network.TopDownNet`: the split into
``features`` and ``head``, one feature tap per top-down stage, and a ``pretrained_cfg`` that
describes the top-down network (not the bottom-up one it came from)."""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx
from torch import nn

from reverso import ir
from reverso.convert.network import ClassifierHead, TopDownNet
from reverso.convert.recipe import Recipe
from reverso.errors import UnsupportedTopologyError
from reverso.ir.shapes import channels, spatial
from reverso.rewrite.unit_views import unit_view

#: timm's ImageNet defaults, for sources whose configuration says nothing (torchvision models)
IMAGENET = {
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bilinear",
    "crop_pct": 0.875,
    "crop_mode": "center",
}
#: what the top-down configuration keeps of the source's: how images are prepared
KEPT = ("mean", "std", "interpolation", "crop_pct", "crop_mode", "license")


def emit(gm: fx.GraphModule, ctx, recipe: Recipe) -> TopDownNet:
    """Split the compiled graph into features and head and wrap it as a :class:`TopDownNet`."""
    plan = ctx.plan
    taps = insert_feature_taps(gm, plan, ctx.report)
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
    net = TopDownNet(
        features,
        head,
        num_classes=ctx.report.num_classes,
        in_chans=ctx.input_size[0],
        min_size=min(ctx.input_size[1:]),  # until the conversion has measured it
        feature_info=feature_info(taps, ctx.input_size),
        pretrained_cfg={},
        recipe=recipe,
        report=ctx.report,
        plan=dataclasses.replace(plan, laterals={}),
    )
    classifier = _classifier_input(net)
    if classifier is not None:
        net.head_hidden_size = classifier
    net.pretrained_cfg = net.default_cfg = topdown_cfg(ctx.model, net, head_view.entry)
    net = ir.own_copy(net, ctx.model)
    ref = next(ctx.model.parameters(), None)
    if ref is not None:
        net.to(device=ref.device, dtype=ref.dtype)
    return net


def insert_feature_taps(gm: fx.GraphModule, plan, report) -> list[fx.Node]:
    """An ``nn.Identity`` named ``<stage>_out`` after the last node of every top-down stage (the
    stem, then each slot, named as :func:`reverso.summary` names them: ``t1``, ``g4``, ...),
    placed on the path so the graph reads its output through it: a module whose output timm's
    and torchvision's feature extractors can name. The taps, in execution order."""
    stages = [("stem", plan.stem)] if plan.stem else []
    transitions = 0
    for slot in plan.slots:
        if slot.kind == "group":
            stages.append((f"g{slot.bu_group + 1}", slot.units))
        else:
            transitions += 1
            stages.append((f"t{transitions}", slot.units))
    taps, seen = [], set()
    for stage, units in stages:
        exit_ = unit_view(gm, units[-1]).exit
        if exit_ in seen:  # two stages end at one node: one tap
            continue
        seen.add(exit_)
        tap = ir.add_module_node(
            gm, f"{stage}_out", nn.Identity(), (exit_,), after=exit_, meta_from=exit_
        )
        tap.meta["val"] = exit_.meta.get("val")
        exit_.replace_all_uses_with(tap, delete_user_cb=lambda user, tap=tap: user is not tap)
        taps.append(tap)
    gm.recompile()
    return taps


def feature_info(taps: list[fx.Node], input_size) -> list[dict]:
    """timm's ``feature_info`` of the taps: finest first (reduction non-decreasing, as timm's
    ``FeatureInfo`` and feature necks expect; the network computes them in the reverse order),
    each with the channels and reduction of its real tensor and its module's path."""
    info = []
    for tap in reversed(taps):
        height = spatial(tap)[0]
        info.append(
            {
                "num_chs": channels(tap),
                "reduction": round(input_size[1] / height),
                "module": f"features.{tap.target}",
            }
        )
    return info


def topdown_cfg(model: nn.Module, net: TopDownNet, head_entry: fx.Node) -> dict:
    """The top-down network's ``pretrained_cfg``: how its inputs are prepared (kept from the
    source's, ImageNet's defaults for a source without one), and what is true of it: its
    architecture name ``topdown_<name>``, the size it was compiled at, the size of its last map,
    its first convs (every conv that reads the image) and its classifier. No weights' url."""
    source = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg = {
        key: source.get(key, IMAGENET.get(key)) for key in KEPT if key in source or key in IMAGENET
    }
    arch = source.get("architecture") or _builder_name(model)
    size = tuple(net.recipe["input_size"])
    cfg.update(
        architecture=f"topdown_{arch}",
        input_size=size,
        fixed_input_size=False,
        pool_size=tuple(spatial(head_entry)),
        num_classes=net.num_classes,
        first_conv=first_convs(net),
        classifier=net.classifier_path(),
    )
    return cfg


def _classifier_input(net: TopDownNet) -> int | None:
    """The width the classifier reads (the head's hidden size), None without a classifier."""
    from reverso.rewrite.widths import REGISTRY

    path = net.classifier_path()
    if path is None:
        return None
    module = net.get_submodule(path)
    return REGISTRY.lookup(module).in_width(module)


def _builder_name(model: nn.Module) -> str:
    """A model's name when its configuration has none: its torchvision builder's (found from
    its structure), else its class name."""
    from reverso.frontend.provenance import SourceModel, torchvision_source

    found = torchvision_source(SourceModel.of(model))
    return found.name if found is not None else type(model).__name__.lower()


def first_convs(net: TopDownNet) -> list[str]:
    """The paths of the convs that read the image: those fed a pyramid level, and the first conv
    of every merge's lateral branch."""
    gm = net.features
    levels = set(ir.pyramid_levels(gm).values())
    found = []
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        module = gm.get_submodule(n.target)
        if ir.role_of(n) is ir.Role.MERGE:
            conv = next((k for k, m in module.lateral.named_modules() if _is_conv(m)), None)
            if conv is not None:
                found.append(f"features.{n.target}.lateral.{conv}".rstrip("."))
        elif _is_conv(module) and ir.feature_input(n) in levels:
            found.append(f"features.{n.target}")
    return found


def _is_conv(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 4


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
