"""The one walk that re-widths a graph: a shape propagation on meta tensors that makes every
layer, constant and split agree with the width it now receives, in place.

Each layer whose input width changed is rebuilt through the width registry (fresh weights, same
type and configuration), at the output width ``width_of`` gives it (by default its own). A
parameter or buffer that an op combines with a feature map (a layer-scale gain, a fixed depthwise
filter) takes the map's new width; a number that is a channel count (the ``groups`` of a
functional conv, a size of ``view``, ``reshape``, ``expand``, ``repeat`` or ``new_zeros``) follows
the width it counts, scaled where it is a multiple or a fraction of it; and a split with constant
sizes cuts the new width in the same proportions. A number that could count either of two sizes
is refused by name.

Top-down width repair (:mod:`reverso.rewrite.repair`) extends the walk with what joins and rigid
units need; the ``reversible`` pass runs it as it is, with its own output widths, over each
residual function it halves.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from reverso import ir
from reverso.errors import ReversoError, WidthError
from reverso.ir.shapes import ShapeProp
from reverso.rewrite.rigid import channel_dim
from reverso.rewrite.widths import REGISTRY, WidthRegistry, unknown_layer_error


class WidthFitting(ShapeProp):
    """A shape propagation that fits layers, constants and split sizes to the widths it meets,
    in place; ``changed`` says whether it changed anything.

    ``width_of(target, rule, module)`` gives a rebuilt layer's output width (default: its own);
    with ``strict``, a layer with parameters and no width rule raises a WidthError when it meets
    its first input, else only when it fails to run."""

    def __init__(
        self,
        gm: fx.GraphModule,
        registry: WidthRegistry = REGISTRY,
        *,
        width_of=None,
        strict: bool = False,
    ):
        super().__init__(gm)
        self.registry = registry
        self.width_of = width_of or (lambda target, rule, module: rule.out_width(module))
        self.strict = strict
        self.changed = False
        # the width of every map before this walk (the shapes of the last propagation)
        self.widths_before = {n: _map_width(n.meta.get("val")) for n in gm.graph.nodes}

    def run_node(self, n: fx.Node):
        if n.op == "call_module":
            self._fit_module(n)
        elif ir.is_split(n):
            sizes = self._split_sizes(n)
            if sizes is not None:
                n.args = (n.args[0], sizes, *n.args[2:])
                self.changed = True
        return self._run_fitting_constants(n)

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
        """Rebuild the layer of ``n`` when the width it receives (or the one ``width_of`` asks
        it to give) is not its own."""
        module = self.fetch_attr(n.target)
        rule = self.registry.lookup(module)
        x = self._first_tensor(n)
        if rule is None or x is None or x.dim() < 2:
            if rule is None and self.strict and any(True for _ in module.parameters()):
                raise unknown_layer_error(module, n.target)
            return
        actual = int(x.shape[rule.channel_dim])
        if actual == 0:
            raise WidthError(
                f"layer {ir.describe(self.module, n)} now receives no channels at all (it read "
                f"{rule.in_width(module)}); the value feeding it, '{n.args[0]}', is cut from a "
                "narrower input than the model was built for"
            )
        if rule.preserves_width(module):
            if actual == rule.in_width(module):
                return
            out = None
        else:
            out = self.width_of(n.target, rule, module)
            if (actual, out) == (rule.in_width(module), rule.out_width(module)):
                return
        try:
            new = self.registry.rebuild(module, actual, out, where=n.target)
        except WidthError:  # a grouped conv that cannot take that width
            self._cannot_take(n)
            raise
        ir.set_module(self.module, n.target, new)
        self.changed = True

    def _cannot_take(self, n: fx.Node) -> None:
        """Called when the layer of ``n`` cannot be rebuilt for the width it receives, before
        the WidthError goes up (width repair keeps the unit's width then)."""

    def _first_tensor(self, n: fx.Node):
        for a in n.args:
            if isinstance(a, fx.Node):
                v = self.env.get(a)
                if isinstance(v, torch.Tensor):
                    return v
        return None

    def _run_fitting_constants(self, n: fx.Node):
        """Run ``n``; when it fails on a per-channel constant of another width than its map's,
        or on a channel count written as a number, fit them (:meth:`_fit_constants`,
        :meth:`_fit_channel_counts`) and run it again."""
        try:
            return super().run_node(n)
        except RuntimeError:
            if n.op not in ("call_function", "call_method"):
                raise
            fitted = self._fit_constants(n)
            fitted = self._fit_channel_counts(n) or fitted
            if not fitted:
                raise
            return super().run_node(n)

    def _fit_channel_counts(self, n: fx.Node, old: int | None = None, new: int | None = None):
        """Rewrite the numbers of ``n`` that count channels (see the module) from the width its
        map had before this walk (``old``) to the one it has now (``new``); returns whether any
        changed. A number that several of the op's sizes could be is refused by name."""
        positions = _count_positions(n)
        if not positions:
            return False
        if old is None:
            maps = [a for a in n.all_input_nodes if self.widths_before.get(a) is not None]
            widths = [(self.widths_before[a], _map_width(self.env.get(a))) for a in maps]
            old, new = next(((b, a) for b, a in widths if a is not None and a != b), (None, None))
        if old is None or old == new:
            return False
        hits = [(where, v) for where, v in positions if _scaled(v, old, new) is not None]
        if len(hits) > 1 and not _is_groups(n):
            raise WidthError(
                f"{ir.describe(self.module, n)} writes the sizes {[v for _, v in positions]} as "
                f"numbers, and {len(hits)} of them could count the {old} channels that are now "
                f"{new}; reverso cannot tell which to change. Write the channel count as "
                "x.shape[1] (or the parameter's own size) in the model"
            )
        for where, value in hits[:1]:
            _set_argument(n, where, _scaled(value, old, new))
            self.changed = True
        return bool(hits)

    def _fit_constants(self, n: fx.Node) -> bool:
        """A parameter or buffer the op combines with a feature map of another width (a fixed
        depthwise filter, a layer-scale gain) takes the map's width: a per-channel tensor whose
        channels are all equal is repeated (exact for fixed filters), any other one gets the mean
        of its channels (a neutral start, as fresh weights elsewhere). Returns whether it did."""
        maps = [
            v
            for a in n.all_input_nodes
            if (v := self.env.get(a)) is not None
            and isinstance(v, torch.Tensor)
            and v.dim() == 4
            and a.op != "get_attr"
        ]
        if not maps:
            return False
        fitted = False
        for a in n.all_input_nodes:
            chain = self._constant_chain(a)
            if not chain:
                continue
            value = self.fetch_attr(chain[0].target)
            dim = channel_dim(value)
            width = _width_against(maps[0], self.env.get(chain[-1]))
            if dim is None or value.shape[dim] == width:
                continue
            old = value.shape[dim]
            self._resize_attr(chain[0].target, value, dim, width)
            self.env[chain[0]] = self.fetch_attr(chain[0].target).detach().to("meta")
            for step in chain[1:]:  # the reshapes between the tensor and the op, again
                try:
                    self.env[step] = super().run_node(step)
                except RuntimeError:  # a reshape that writes the channel count as a number
                    if not self._fit_channel_counts(step, old, width):
                        raise
                    self.env[step] = super().run_node(step)
            fitted = True
        return fitted

    def _constant_chain(self, a: fx.Node) -> list[fx.Node]:
        """``[get_attr, reshape, ...]`` from a parameter or buffer to ``a`` through single-input
        ops (``gamma.reshape(1, -1, 1, 1)``), or [] when ``a`` does not come from one."""
        chain = [a]
        while chain[0].op != "get_attr":
            inputs = chain[0].all_input_nodes
            if chain[0].op not in ("call_function", "call_method") or len(inputs) != 1:
                return []
            chain.insert(0, inputs[0])
        return chain

    def _resize_attr(self, target: str, value: torch.Tensor, dim: int, width: int) -> None:
        first = value.narrow(dim, 0, 1)
        same = bool((value == first).all()) if value.device.type != "meta" else False
        fill = first if same else value.mean(dim, keepdim=True)
        new = fill.expand(*[width if d == dim else s for d, s in enumerate(value.shape)]).clone()
        if isinstance(value, torch.nn.Parameter):
            new = torch.nn.Parameter(new, value.requires_grad)
        owner_path, _, name = target.rpartition(".")
        owner = self.module.get_submodule(owner_path) if owner_path else self.module
        if name in owner._buffers:
            owner._buffers[name] = new
        else:
            setattr(owner, name, new)
        self.changed = True

    def _split_sizes(self, n: fx.Node) -> list[int] | None:
        """Constant channel split sizes scaled to the width the split now receives (None if they
        still add up or are no constants); refuses a split that would leave a part empty."""
        x, sizes = self.env.get(n.args[0]), n.args[1] if len(n.args) > 1 else None
        dim = n.kwargs.get("dim", n.args[2] if len(n.args) > 2 else 0)
        constant = isinstance(sizes, (list, tuple)) and all(isinstance(s, int) for s in sizes)
        if not constant or not isinstance(x, torch.Tensor) or dim not in (1, 1 - x.dim()):
            return None
        width, total = int(x.shape[1]), sum(sizes)
        if width == total:
            return None
        scaled = [round(s * width / total) for s in sizes[:-1]]
        scaled.append(width - sum(scaled))
        if min(scaled) < 1:
            raise WidthError(
                f"the channel split {ir.describe(self.module, n)} cuts {total} channels into "
                f"{list(sizes)}; it now receives {width}, too few to keep every part. Convert with "
                "wider layers (arrangement=<int>) or make the split sizes follow x.shape[1]"
            )
        return scaled


#: ops whose numbers may count channels: their size arguments (all of them), or ``groups``
_SIZED = {
    "view",
    "reshape",
    "expand",
    "repeat",
    "new_zeros",
    "new_ones",
    "new_empty",
    "new_full",
    "tile",
    "broadcast_to",
}
_CONVS = {"conv1d", "conv2d", "conv3d", "conv_transpose2d"}


def _count_positions(n: fx.Node) -> list[tuple[tuple, int]]:
    """``(where, value)`` of every int argument of ``n`` that may be a channel count: a conv's
    ``groups`` (positional or keyword), every size of a reshape-like op."""
    name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
    if name in _CONVS:
        if isinstance(n.kwargs.get("groups"), int):
            return [(("kwargs", "groups"), n.kwargs["groups"])]
        if len(n.args) > 6 and isinstance(n.args[6], int):
            return [(("args", 6), n.args[6])]
        return []
    if name not in _SIZED:
        return []
    found = []
    first = 1  # the tensor, then its sizes
    for i, a in enumerate(n.args[first:], start=first):
        if isinstance(a, int) and not isinstance(a, bool):
            found.append((("args", i), a))
        elif isinstance(a, (tuple, list)):
            found += [(("args", i, j), v) for j, v in enumerate(a) if type(v) is int]
    size = n.kwargs.get("size")
    if isinstance(size, (tuple, list)):
        found += [(("kwargs", "size", j), v) for j, v in enumerate(size) if type(v) is int]
    return found


def _is_groups(n: fx.Node) -> bool:
    name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
    return name in _CONVS


def _scaled(value: int, old: int, new: int) -> int | None:
    """``value`` for a width ``new`` when it counted (a multiple or a fraction of) ``old``."""
    if value <= 1:
        return None
    if value % old == 0 or old % value == 0:
        scaled = value * new / old
        return int(scaled) if scaled == int(scaled) and scaled >= 1 else None
    return None


def _set_argument(n: fx.Node, where: tuple, value: int) -> None:
    kind, key, *inner = where
    if kind == "kwargs":
        kwargs = dict(n.kwargs)
        kwargs[key] = value if not inner else _replaced(kwargs[key], inner[0], value)
        n.kwargs = kwargs
    else:
        args = list(n.args)
        args[key] = value if not inner else _replaced(args[key], inner[0], value)
        n.args = tuple(args)


def _replaced(sequence, index: int, value: int):
    items = list(sequence)
    items[index] = value
    return type(sequence)(items) if isinstance(sequence, tuple) else items


def _map_width(value) -> int | None:
    """The channels of a feature map (an NCHW value), else None."""
    if isinstance(value, torch.Tensor) and value.dim() == 4:
        return int(value.shape[1])
    return None


def _width_against(x: torch.Tensor, constant) -> int:
    """The width of map ``x`` that a per-channel ``constant`` (as the op reads it) lines up with:
    dim 1 (NCHW, ``gamma.view(1, -1, 1, 1)``, a depthwise filter), or, for a shorter constant
    broadcast from the right (``gamma`` of shape (C,) on a channels-last map), the dim it meets."""
    dim = channel_dim(constant)
    if isinstance(constant, torch.Tensor) and dim is not None and constant.dim() < x.dim():
        return int(x.shape[x.dim() - constant.dim() + dim])
    return int(x.shape[1])
