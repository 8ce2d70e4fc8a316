"""What timm asks of a model beyond forward, for a :class:`~reverso.convert.network.TopDownNet`:
intermediate features (``forward_intermediates``, ``prune_intermediate_layers``), layer groups for
layer-wise learning-rate decay (``group_matcher``) and a run-time switch for activation
checkpointing (``set_grad_checkpointing``), as timm's own models define them."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from reverso import ir
from reverso.errors import OptionError


def take_indices(count: int, indices) -> list[int]:
    """timm's feature indices: None for all, an int ``n`` for the last n, or a list of indices
    (negative ones counted from the end)."""
    if indices is None:
        return list(range(count))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= count:
            raise OptionError(f"take the last n features, 1 <= n <= {count}; got {indices}")
        return list(range(count - indices, count))
    taken = []
    for i in indices:
        index = count + i if i < 0 else i
        if not 0 <= index < count:
            raise OptionError(f"feature index {i} is out of range for {count} features")
        taken.append(index)
    return taken


class TimmFeatures:
    """The mixin (see the module); the network's ``feature_info`` lists the stage taps, finest
    first (the network computes them coarse to fine)."""

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices=None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """The final feature map and the intermediate ones of ``indices`` (timm's
        ``forward_intermediates``). Every stage runs whatever ``stop_early`` says (the finest
        features come last); the net has no norm after its features, so ``norm`` changes
        nothing. ``output_fmt``: ``"NCHW"`` or ``"NHWC"``."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise OptionError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        taken = take_indices(len(self.feature_info), indices)
        found: dict[int, torch.Tensor] = {}
        hooks = [
            self.get_submodule(self.feature_info[i]["module"]).register_forward_hook(
                lambda module, args, out, i=i: found.__setitem__(i, out)
            )
            for i in taken
        ]
        try:
            x = self.forward_features(x)
        finally:
            for hook in hooks:
                hook.remove()
        intermediates = [found[i] for i in taken]
        if output_fmt == "NHWC":
            intermediates = [t.permute(0, 2, 3, 1) for t in intermediates]
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices=1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what only the features finer than those of ``indices`` need (the layers after the
        finest one taken) and, with ``prune_head`` or when layers were dropped (the head is
        sized for the last features), the pooling and classifier; returns the indices taken
        (timm's ``prune_intermediate_layers``)."""
        taken = take_indices(len(self.feature_info), indices)
        target = self.feature_info[min(taken)]["module"].removeprefix("features.")
        gm = self.features
        tap = next(
            (n for n in gm.graph.nodes if n.op == "call_module" and n.target == target), None
        )
        output = next(n for n in gm.graph.nodes if n.op == "output")
        pruned_end = tap is not None and output.args[0] is not tap
        if pruned_end:  # (a tap inside a checkpoint segment keeps the whole graph)
            output.args = (tap,)
            ir.remove_dead_code(gm)
            gm.recompile()
            # the features now end at that tap: the head, sized for the last ones, goes too
            self.num_features = self.head_hidden_size = self.feature_info[min(taken)]["num_chs"]
        if prune_head or pruned_end:
            self.reset_classifier(0, "")
        return taken

    def group_matcher(self, coarse: bool = False):
        """Parameter groups in top-down execution order, for timm's layer-wise learning-rate
        decay: the stem, each stage coarse to fine (each unit, unless ``coarse``), then the
        head. Returns a function from a parameter name to its group's ordinal."""
        names = {id(p): name for name, p in self.named_parameters()}
        taps = {id(self.get_submodule(info["module"])) for info in self.feature_info}
        order: dict[str, tuple] = {}
        stage, units = 0, {}
        for node, owner in _reads(self.features):
            unit = units.setdefault((stage, ir.unit_of(node)), len(units))
            if node.op == "get_attr":  # a parameter a function reads (a layer-scale gain)
                params = [_attribute(owner, node.target)]
            else:
                params = list(owner.get_submodule(node.target).parameters())
            for p in params:
                order.setdefault(names[id(p)], (stage,) if coarse else (stage, unit))
            if node.op == "call_module":
                stage += id(owner.get_submodule(node.target)) in taps
        head = (stage + 1,)
        for name, _ in self.head.named_parameters():
            order[f"head.{name}"] = head
        return lambda name: order.get(name, head)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Run the features with activation checkpointing (``enable``) or not, switchable at run
        time: the first call cuts the features into the segments of ``memory="checkpoint"``; the
        outputs and gradients are the same either way."""
        from reverso.nn import CheckpointSegment
        from reverso.passes.checkpoint import Checkpoint

        segments = [m for m in self.features.modules() if isinstance(m, CheckpointSegment)]
        if enable and not segments:
            self.rewrite_features(Checkpoint())
            segments = [m for m in self.features.modules() if isinstance(m, CheckpointSegment)]
        for segment in segments:
            segment.enabled = bool(enable)
        self.grad_checkpointing = bool(enable)


def _reads(gm: fx.GraphModule):
    """``(node, graph module)`` of every module call and every parameter read, in execution
    order, into checkpoint segments."""
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            if isinstance(_attribute(gm, n.target), nn.Parameter):
                yield n, gm
            continue
        if n.op != "call_module":
            continue
        module = gm.get_submodule(n.target)
        body = module.__dict__.get("body")
        if isinstance(body, fx.GraphModule):
            yield from _reads(body)
        else:
            yield n, gm


def _attribute(gm: nn.Module, target: str):
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name, None)
