"""antialias: blur before every subsampling (BlurPool, Zhang 2019), keeping every weight.

The rules, applied to the fx graph of any traceable model:

* ``MaxPool(k, s)`` -> ``MaxPool(k, stride 1)`` -> ``BlurPool(s)``;
* ``AvgPool(k, s)`` -> ``AvgPool(k, stride 1)`` -> ``BlurPool(s)`` (the box filter is kept, so that
  ``filter_size=1`` reproduces the model exactly; the reference code drops it);
* a strided spatial conv -> the conv at stride 1, its norm and activation, then ``BlurPool(s)``
  (the blur goes after the nonlinearity);
* a strided 1x1 conv (a shortcut projection) -> ``BlurPool(s)`` -> the 1x1 conv at stride 1;
* the model's first strided conv (the stem, costly to blur at full resolution) only with
  ``stem=True``.

Padding and stride arithmetic keep every output size exactly that of the original model for
every input size (``ceil_mode`` pools included; timm's 'SAME'-padded layers get a
:class:`~reverso.nn.SamePad2d` that pads as they did at their stride), and no weight changes:
only strides change and fixed blur filters are added, so a pretrained model stays usable.
``filter_size=1`` is the identity rewrite.

``variant="official"`` follows the official antialiased-cnns code (github.com/adobe/antialiased-cnns)
where it differs, so that its models and checkpoints are reproduced exactly:

* ``AvgPool(k, s)`` -> ``BlurPool(s)`` alone (the box filter is dropped; on odd maps the output
  has ``ceil(H / s)`` rows where the pool had ``floor``, as in that code);
* the official code writes each model family by hand, and its ResNets replace the stem's
  ``MaxPool(3, 2, padding 1)`` by ``MaxPool(2, stride 1)`` without padding, where its DenseNets,
  VGGs and AlexNet keep the kernel: :data:`OFFICIAL_MAX_POOL` holds that table, by model class name;
* a conv of an even stride above 2 keeps all but the last factor 2 (AlexNet's stride-4 stem runs
  at stride 2, then ``BlurPool(2)``).
"""

from __future__ import annotations

import copy

import torch.fx as fx
from torch import nn

from reverso import ir
from reverso.compiler.base import Pass, PassResult
from reverso.errors import UnsupportedTopologyError
from reverso.ir.shapes import channels
from reverso.ir.windows import pair
from reverso.nn.blurpool import BlurPool2d, CeilModePad, ValidAvgPool2d
from reverso.nn.padding import SamePad2d
from reverso.options import AntialiasOptions
from reverso.rewrite.convs import conv_at_stride_one, pads_same, unpadded_conv

#: the official code's max-pool replacement per model class name: (kernel, padding) of the
#: stride-1 max-pool before the blur (absent: the model's own kernel and padding)
OFFICIAL_MAX_POOL = {"ResNet": (2, 0)}


class Antialias(Pass):
    name = "antialias"

    Options = AntialiasOptions  # filter_size, stem, pad_mode, variant

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        official = self.settings.variant == "official"
        max_pool = OFFICIAL_MAX_POOL.get(type(ctx.model).__name__) if official else None
        strided = [n for n in gm.graph.nodes if _stride(gm, n) > 1]
        # the stem: the first downsampling, when it is a conv (not a pool)
        stem = strided[0] if strided and ir.is_conv(gm, strided[0]) else None
        changed = []
        for node in strided:
            if node is stem and not self.settings.stem:
                continue
            if ir.is_pool(gm, node):
                self.pool(gm, node, max_pool)
            elif ir.is_conv(gm, node):  # _stride > 1 only for pools and convs
                self.conv(gm, node)
            changed.append(node.name)
        gm.delete_all_unused_submodules()  # the replaced pools
        ctx.results.antialiased = changed
        return PassResult(gm, bool(changed))

    # -- rewrites --------------------------------------------------------------------------------
    def blur(
        self,
        gm,
        after: fx.Node,
        width: int,
        stride: int,
        source: fx.Node,
        *,
        before: fx.Node | None = None,
    ) -> fx.Node:
        """A BlurPool reading ``after``: placed after it, all of its users reading the blur instead;
        or, with ``before``, placed just before ``before``, only that node reading the blur instead."""
        users = list(after.users) if before is None else [before]
        name = f"{source.target if source.op == 'call_module' else source.name}_blurpool"
        node = ir.add_module_node(
            gm,
            name,
            BlurPool2d(width, self.settings.filter_size, stride, self.settings.pad_mode),
            (after,),
            after=after if before is None else None,
            before=before,
            meta_from=source,
        )
        for user in users:
            user.replace_input_with(after, node)
        return node

    def conv(self, gm: fx.GraphModule, node: fx.Node) -> None:
        conv = gm.get_submodule(node.target)
        stride = _stride(gm, node)
        if pads_same(conv) and ir.conv_kernel(gm, node) > 1:  # timm's Conv2dSame, StdConv2dSame
            self.same_pad(gm, node, conv, 0.0)
            dense = unpadded_conv(conv)
        else:
            dense = conv_at_stride_one(conv, padding="keep")
        if self.settings.variant == "official" and stride > 2 and stride % 2 == 0:
            # the official code keeps all but the last factor 2 of a large stride (AlexNet's 4)
            dense.stride, stride = (stride // 2, stride // 2), 2
        ir.set_module(gm, node.target, dense)
        if ir.conv_kernel(gm, node) == 1:  # a shortcut projection: blur first (cheaper, equivalent)
            source = node.args[0]
            self.blur(gm, source, channels(source), stride, node, before=node)
            return
        self.blur(gm, _after_norm_and_activation(gm, node), channels(node), stride, node)

    def pool(self, gm: fx.GraphModule, node: fx.Node, max_pool: tuple[int, int] | None) -> None:
        """``max_pool``: the official code's (kernel, padding) for this model's max-pools."""
        w = _pool_window(gm, node)
        x, fused = node.args[0], {}
        if not (
            self.settings.variant == "official" and w.kind == "avg"
        ):  # there the blur replaces the box
            x, fused = self.dense_pool(gm, node, w, x, max_pool)
        blur = BlurPool2d(
            channels(node), self.settings.filter_size, w.stride[0], self.settings.pad_mode, **fused
        )
        blurred = ir.add_module_node(
            gm, f"{node.name}_blurpool", blur, (x,), before=node, meta_from=node
        )
        node.replace_all_uses_with(blurred)
        gm.graph.erase_node(node)

    def same_pad(self, gm, node: fx.Node, layer: nn.Module, value: float) -> fx.Node:
        """A :class:`SamePad2d` node before ``node``, reading its input: the padding the strided
        ``layer`` would apply, so that its stride-1 copy (no padding) samples the same windows."""
        pad = SamePad2d(layer.kernel_size, layer.stride, getattr(layer, "dilation", 1), value)
        x = node.args[0]
        padded = ir.add_module_node(
            gm, f"{node.name}_same_pad", pad, (x,), before=node, meta_from=node
        )
        node.replace_input_with(x, padded)
        return padded

    def dense_pool(self, gm, node, w: ir.Window, x: fx.Node, max_pool) -> tuple[fx.Node, dict]:
        """The pool at stride 1 (ceil_mode emulated), reading ``x``, placed before ``node``: its
        node, or, for a plain max-pool, what the blur reads and the max-pool's settings, which
        the blur layer then applies itself (one layer, run on channels-last maps on the CPU)."""
        k, s, p, ceil = w.kernel[0], w.stride[0], w.padding[0], w.ceil_mode
        if w.kind == "max" and max_pool is not None:
            k, p = max_pool
        module = ir.module_of(gm, node)
        if pads_same(module):  # timm's MaxPool2dSame, AvgPool2dSame: pad as the strided pool
            x = self.same_pad(gm, node, module, float("-inf") if w.kind == "max" else 0.0)
            k, p, ceil = module.kernel_size, 0, False
        elif _pads_itself(module):  # another pool with its own padding rule: kept, at stride 1
            dense = copy.deepcopy(module)
            dense.stride = (1, 1)
            return ir.add_module_node(
                gm, f"{node.name}_dense", dense, (x,), before=node, meta_from=node
            ), {}
        if ceil and (p != 0 or k < s):
            raise UnsupportedTopologyError(
                f"pooling {ir.describe(gm, node)} uses ceil_mode with padding {p} and kernel {k} < stride {s}; "
                "reverso reproduces ceil_mode only without padding and with kernel >= stride"
            )
        if w.kind == "max":
            # ceil_mode = floor mode on the map extended by s - 1 (-inf) at the bottom/right
            if ceil:
                x = ir.add_module_node(
                    gm,
                    f"{node.name}_ceil_pad",
                    CeilModePad(s - 1),
                    (x,),
                    before=node,
                    meta_from=node,
                )
            (kh, kw), (ph, pw), (dh, dw) = pair(k), pair(p), w.dilation
            if kh == kw and ph == pw and dh == dw:  # square: the blur layer pools too
                return x, {"max_kernel": kh, "max_padding": ph, "max_dilation": dh}
            dense = nn.MaxPool2d(k, 1, p, w.dilation)
        elif ceil:  # the extra ceil_mode rows never count in the divisor: PyTorch has no such pool
            dense = ValidAvgPool2d(k, p, extra=s - 1, count_include_pad=w.count_include_pad)
        else:
            dense = nn.AvgPool2d(k, 1, p, count_include_pad=w.count_include_pad)
        return ir.add_module_node(
            gm, f"{node.name}_dense", dense, (x,), before=node, meta_from=node
        ), {}


def _after_norm_and_activation(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    """The last node of the norm/activation chain that follows a conv (the blur goes after it)."""
    chain, current = [node], node
    while len(current.users) == 1:
        nxt = next(iter(current.users))
        if not (
            ir.is_norm(gm, nxt)
            or ir.is_activation(gm, nxt)
            or ir.is_dropout(gm, nxt)
            or ir.is_identity(gm, nxt)
        ):
            break
        chain.append(nxt)
        current = nxt
    with_act = [n for n in chain if ir.is_activation(gm, n) or _is_norm_act(gm, n)]
    return with_act[-1] if with_act else chain[-1]


def _pads_itself(module) -> bool:
    """A pool module whose class overrides the pool's forward (timm's MaxPool2dSame and
    AvgPool2dSame pad for each input size, to ``ceil(n / stride)`` outputs): at stride 1 it keeps
    the size, so the blur after it gives the pool's output size."""
    bases = (nn.MaxPool2d, nn.AvgPool2d)
    return isinstance(module, bases) and type(module).forward not in [b.forward for b in bases]


def _is_norm_act(gm, node) -> bool:
    act = getattr(ir.module_of(gm, node), "act", None)
    return isinstance(act, nn.Module) and not isinstance(act, nn.Identity)


def _stride(gm: fx.GraphModule, node: fx.Node) -> int:
    """The stride of a pool or a torch conv (other conv-like layers are left alone)."""
    window = ir.window_of(gm, node)
    if window is None or (
        window.kind == "conv" and not isinstance(ir.module_of(gm, node), nn.Conv2d)
    ):
        return 1
    if len(set(window.stride)) != 1:
        raise UnsupportedTopologyError(
            f"{ir.describe(gm, node)} has a different stride per axis; antialias needs one stride"
        )
    return window.step


def _pool_window(gm: fx.GraphModule, node: fx.Node) -> ir.Window:
    """The pool's window, refused when its geometry differs per axis."""
    window = ir.window_of(gm, node)
    if ir.returns_indices(gm, node):  # the trace dropped the indices nothing reads
        raise UnsupportedTopologyError(
            f"max-pool {ir.describe(gm, node)} returns the indices of its maxima and the model "
            "reads them (a MaxUnpool2d, say); a blurred pool has no such indices. Anti-alias a "
            "model whose pools return their maps only"
        )
    for key in ("kernel", "stride", "padding", "dilation"):
        if len(set(getattr(window, key))) != 1:
            raise UnsupportedTopologyError(
                f"pooling {ir.describe(gm, node)} has a different {key} per axis"
            )
    return window
