"""Width repair: make every layer agree with the width it now receives.

After a pass moves units or changes a layer's output width, the graph is walked in order on
meta tensors. A layer whose input width no longer matches is re-instantiated through the width
registry (fresh weights, same type and configuration). An elementwise join whose two inputs now
disagree (an identity shortcut next to a main path of another width) gets a 1x1 projection on
its shortcut, in the model's own style (conv-norm, or a bare conv of the pre-activation in
pre-activation nets). Anything else that breaks is reported with the node and the remedy.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from . import graph as g
from .blocks import LayerFactory
from .errors import ReversoError, UnsupportedTopologyError
from .shapes import ShapeProp, channels, fingerprint
from .tracing import evaluating
from .units import module_prefix, unit_nodes
from .widths import unknown_layer_error


def repair_widths(gm: fx.GraphModule, ctx) -> bool:
    """Re-widths layers and shortcuts in place; returns whether anything changed."""
    fixer = _Repair(gm, ctx)
    with evaluating(gm), torch.no_grad():
        fixer.run(ctx.example_input())
    if fixer.changed:
        gm.graph.lint()
        gm.recompile()
    gm.meta["shapes_of"] = fingerprint(gm)  # every node's shape is now up to date
    return fixer.changed


class _Repair(ShapeProp):
    def __init__(self, gm: fx.GraphModule, ctx):
        super().__init__(gm)
        self.ctx = ctx
        self.registry = ctx.registry
        self.factory = LayerFactory(ctx.prototypes, ctx.report.preact, ctx.registry)
        self.changed = False

    def run_node(self, n: fx.Node):
        if n.op == "call_module":
            self._fit_module(n)
        elif g.is_join(n):
            self._fit_join(n)
        return super().run_node(n)

    def call_module(self, target, args, kwargs):
        try:
            return super().call_module(target, args, kwargs)
        except ReversoError:
            raise
        except Exception as err:
            module = self.fetch_attr(target)
            if self.registry.lookup(module) is None and any(True for _ in module.parameters()):
                raise unknown_layer_error(module, target) from err
            raise

    # -- layers ------------------------------------------------------------------------------
    def _fit_module(self, n: fx.Node) -> None:
        module = self.module.get_submodule(n.target)
        rule = self.registry.lookup(module)
        x = self._first_tensor(n)
        if rule is None or x is None or x.dim() < 2:
            return
        actual = int(x.shape[rule.channel_dim])
        if actual != rule.in_width(module):
            g.set_module(
                self.module, n.target, self.registry.rebuild(module, actual, where=n.target)
            )
            self.changed = True

    def _first_tensor(self, n: fx.Node):
        for a in n.args:
            if isinstance(a, fx.Node):
                v = self.env.get(a)
                if isinstance(v, torch.Tensor):
                    return v
        return None

    # -- joins -------------------------------------------------------------------------------
    def _fit_join(self, n: fx.Node) -> None:
        a, b = n.args[0], n.args[1]
        va, vb = self.env[a], self.env[b]
        if (
            va.dim() != 4
            or vb.dim() != 4
            or va.shape[1] == vb.shape[1]
            or 1 in (va.shape[1], vb.shape[1])
        ):
            return
        shortcut, main = self._pick_shortcut(n, a, b)
        width = int(self.env[main].shape[1])
        source = self._projection_source(shortcut, n)
        cin = int(self.env[source].shape[1])
        nodes = unit_nodes(self.module, g.tag(n).get("unit", -1)) or [n]
        prefix = module_prefix(self.module, nodes)
        current = source
        # one graph node per layer, so that later repairs can re-width each of them
        for i, layer in enumerate(self.factory.projection(cin, width)):
            current = g.add_module_node(
                self.module,
                f"{prefix}.shortcut" + (f"_{i}" if i else ""),
                layer,
                (current,),
                before=n,
                meta_from=n,
            )
            g.tag(current)["role"] = "projection"
            self.env[current] = self.meta_module(layer)(self.env[current.args[0]])
            current.meta["val"] = self.env[current]
        n.replace_input_with(shortcut, current)
        self.changed = True

    def _pick_shortcut(self, n: fx.Node, a: fx.Node, b: fx.Node) -> tuple[fx.Node, fx.Node]:
        """The input to adapt: the one that lost the join's previous width, else the one without convs."""
        before = channels(n)  # shape from the last propagation, before this repair
        wa, wb = self.env[a].shape[1], self.env[b].shape[1]
        if before is not None and (wa == before) != (wb == before):
            return (b, a) if wa == before else (a, b)
        conv_a, conv_b = self._has_spatial_conv(a, n), self._has_spatial_conv(b, n)
        if conv_a != conv_b:
            return (b, a) if conv_a else (a, b)
        raise UnsupportedTopologyError(
            f"join {g.describe(self.module, n)} now adds tensors of {wa} and {wb} channels and neither is a "
            "plain shortcut that a projection could adapt"
        )

    def _has_spatial_conv(self, node: fx.Node, join: fx.Node) -> bool:
        """Whether a spatial conv lies on the branch between the join's unit entry and ``node``."""
        unit = g.tag(join).get("unit")
        stack, seen = [node], set()
        while stack:
            x = stack.pop()
            if x in seen or g.tag(x).get("unit") != unit:
                continue
            seen.add(x)
            if g.is_spatial_conv(self.module, x):
                return True
            stack.extend(x.all_input_nodes)
        return False

    def _projection_source(self, shortcut: fx.Node, join: fx.Node) -> fx.Node:
        """Pre-activation nets project the block's pre-activation (norm-act of its input)."""
        if not self.ctx.report.preact:
            return shortcut
        unit = g.tag(join).get("unit")
        current = None
        for user in shortcut.users:
            if g.tag(user).get("unit") == unit and g.is_norm(self.module, user):
                current = user
                break
        while current is not None:
            nxt = [
                u
                for u in current.users
                if g.tag(u).get("unit") == unit and g.is_activation(self.module, u)
            ]
            if not nxt:
                break
            current = nxt[0]
        return current if current is not None and self.env.get(current) is not None else shortcut
