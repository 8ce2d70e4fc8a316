"""One registry of "how to rebuild this layer type at another width".

Passes never construct layers of the user's model by hand: when a layer must take a new
input or output width they ask the registry, which knows how to read a layer's widths and
how to build a fresh one (new weights) of the same type and configuration at other widths.
Users extend it for their own layer types with :func:`register_width_rule`.

Every registered type is traced as a leaf module, so it appears as a single graph node that
a pass can re-instantiate.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from reverso.errors import OptionError, WidthError
from reverso.ir import module_of
from reverso.ir.nodes import is_depthwise
from reverso.rewrite.convs import conv_groups_for, placed_like, rebuild_conv


@dataclass(frozen=True)
class WidthRule:
    """How to read and change the channel widths of one layer type.

    ``rebuild(module, in_width, out_width)`` returns a fresh module (new weights) of the same
    type and configuration. For width-preserving layers (norms, depthwise convs) the two
    widths are equal. ``channel_dim`` is the input dimension holding channels.
    """

    in_width: Callable[[nn.Module], int]
    out_width: Callable[[nn.Module], int]
    rebuild: Callable[[nn.Module, int, int], nn.Module]
    preserves_width: Callable[[nn.Module], bool] = lambda m: False
    channel_dim: int = 1


class WidthRegistry:
    def __init__(self):
        self._rules: dict[type, WidthRule] = {}

    def register(self, layer_type: type, rule: WidthRule) -> None:
        if not isinstance(layer_type, type) or not issubclass(layer_type, nn.Module):
            raise OptionError(f"layer_type must be an nn.Module subclass, got {layer_type!r}")
        self._rules[layer_type] = rule

    def lookup(self, module: nn.Module) -> WidthRule | None:
        """The rule of the most specific registered base class of ``module``."""
        for cls in type(module).__mro__:
            rule = self._rules.get(cls)
            if rule is not None:
                return rule
        return per_channel_rule(module)

    def leaf_types(self) -> tuple[type, ...]:
        return tuple(self._rules)

    def rebuild(
        self, module: nn.Module, in_width: int, out_width: int | None = None, *, where: str = ""
    ) -> nn.Module:
        """A fresh copy of ``module`` taking ``in_width`` channels (and giving ``out_width``)."""
        rule = self.lookup(module)
        if rule is None:
            raise unknown_layer_error(module, where)
        if rule.preserves_width(module):
            out_width = in_width
        elif out_width is None:
            out_width = rule.out_width(module)
        new = rule.rebuild(module, int(in_width), int(out_width))
        return placed_like(new, module)


def _per_channel_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Its parameters and saved buffers (fixed filters, non-persistent, are no channels);
    none at all for a layer that learns nothing."""
    params = list(module.parameters())
    saved = [
        b
        for m in module.modules()
        for name, b in m._buffers.items()
        if b is not None and b.dim() > 0 and name not in m._non_persistent_buffers_set
    ]
    return [*params, *saved] if params else []


def per_channel_rule(module: nn.Module) -> WidthRule | None:
    """The rule of a layer nobody registered whose parameters and buffers are all vectors of one
    length C > 1 (a scale, a bias, running statistics): it keeps its width, and a rebuild gives
    every vector the new width, each starting at its mean. None for any other layer."""
    tensors = _per_channel_tensors(module)
    sizes = {t.numel() for t in tensors}
    if not tensors or any(t.dim() != 1 for t in tensors) or len(sizes) != 1 or sizes == {1}:
        return None
    return _PER_CHANNEL


def _rebuild_per_channel(module: nn.Module, width: int, _: int = 0) -> nn.Module:
    new = copy.deepcopy(module)
    for m in new.modules():
        for table in (m._parameters, m._buffers):
            for name, t in list(table.items()):
                if t is None or t.dim() != 1 or name in m._non_persistent_buffers_set:
                    continue
                fresh = t.detach().float().mean().to(t.dtype).expand(width).clone()
                table[name] = (
                    nn.Parameter(fresh, t.requires_grad) if isinstance(t, nn.Parameter) else fresh
                )
    return new


_PER_CHANNEL = WidthRule(
    lambda m: _per_channel_tensors(m)[0].numel(),
    lambda m: _per_channel_tensors(m)[0].numel(),
    _rebuild_per_channel,
    preserves_width=lambda m: True,
)

REGISTRY = WidthRegistry()


def register_width_rule(
    layer_type: type,
    *,
    in_width: Callable[[nn.Module], int],
    out_width: Callable[[nn.Module], int],
    rebuild: Callable[[nn.Module, int, int], nn.Module],
    preserves_width: Callable[[nn.Module], bool] | None = None,
    channel_dim: int = 1,
) -> None:
    """Teach reverso how to rebuild ``layer_type`` at other widths (and keep it a leaf when tracing).

    Example for a custom conv::

        reverso.register_width_rule(
            MyConv,
            in_width=lambda m: m.cin,
            out_width=lambda m: m.cout,
            rebuild=lambda m, cin, cout: MyConv(cin, cout, m.k),
        )
    """
    REGISTRY.register(
        layer_type,
        WidthRule(in_width, out_width, rebuild, preserves_width or (lambda m: False), channel_dim),
    )


def unknown_layer_error(module: nn.Module, where: str = "") -> WidthError:
    kind = type(module).__name__
    at = f" at '{where}'" if where else ""
    return WidthError(
        f"layer {kind}{at} must change its number of channels, but reverso does not know how to "
        f"rebuild a {kind}. Register it once before converting:\n"
        f"    reverso.register_width_rule({kind}, in_width=lambda m: ..., out_width=lambda m: ..., "
        "rebuild=lambda m, in_width, out_width: ...)"
    )


_conv_rule = WidthRule(
    in_width=lambda m: m.in_channels,
    out_width=lambda m: m.out_channels,
    rebuild=rebuild_conv,
    preserves_width=is_depthwise,
)


# ---------------------------------------------------------------------------------------------
# norms: copy the (small) module and give it fresh per-channel tensors of the new width


def _fresh_like(t: torch.Tensor | None, width: int, fill: float) -> torch.Tensor | None:
    if t is None:
        return None
    new = torch.full((width, *t.shape[1:]), fill, dtype=t.dtype, device=t.device)
    return nn.Parameter(new, t.requires_grad) if isinstance(t, nn.Parameter) else new


def rebuild_batchnorm(bn: nn.modules.batchnorm._BatchNorm, width: int, _: int = 0) -> nn.Module:
    new = copy.copy(bn)
    new._parameters = dict(bn._parameters)
    new._buffers = dict(bn._buffers)
    new._modules = {k: copy.deepcopy(v) for k, v in bn._modules.items()}
    new.num_features = width
    new.weight = _fresh_like(bn.weight, width, 1.0)
    new.bias = _fresh_like(bn.bias, width, 0.0)
    if bn.running_mean is not None:
        new.running_mean = _fresh_like(bn.running_mean, width, 0.0)
        new.running_var = _fresh_like(bn.running_var, width, 1.0)
        new.num_batches_tracked = torch.zeros_like(bn.num_batches_tracked)
    return new


def rebuild_groupnorm(gn: nn.GroupNorm, width: int, _: int = 0) -> nn.Module:
    new = copy.copy(gn)
    new._parameters = dict(gn._parameters)
    new._modules = {k: copy.deepcopy(v) for k, v in gn._modules.items()}
    new.num_channels = width
    new.num_groups = math.gcd(gn.num_groups, width)
    new.weight = _fresh_like(gn.weight, width, 1.0)
    new.bias = _fresh_like(gn.bias, width, 0.0)
    return new


def rebuild_layernorm(ln: nn.LayerNorm, width: int, _: int = 0) -> nn.Module:
    if len(ln.normalized_shape) != 1:
        raise WidthError(
            f"LayerNorm over {tuple(ln.normalized_shape)} normalises more than the channel dimension "
            "and cannot be re-widthed"
        )
    new = copy.copy(ln)
    new._parameters = dict(ln._parameters)
    new._modules = {k: copy.deepcopy(v) for k, v in ln._modules.items()}
    new.normalized_shape = (width,)
    new.weight = _fresh_like(ln.weight, width, 1.0)
    new.bias = _fresh_like(ln.bias, width, 0.0)
    return new


def _norm_rule(width_of, rebuild, channel_dim=1) -> WidthRule:
    return WidthRule(
        width_of, width_of, rebuild, preserves_width=lambda m: True, channel_dim=channel_dim
    )


def rebuild_linear(lin: nn.Linear, in_width: int, out_width: int) -> nn.Linear:
    return nn.Linear(in_width, out_width, bias=lin.bias is not None)


REGISTRY.register(nn.Conv2d, _conv_rule)
REGISTRY.register(
    nn.modules.batchnorm._BatchNorm, _norm_rule(lambda m: m.num_features, rebuild_batchnorm)
)
REGISTRY.register(  # the same fields as a BatchNorm (running statistics only when tracked)
    nn.modules.instancenorm._InstanceNorm, _norm_rule(lambda m: m.num_features, rebuild_batchnorm)
)
REGISTRY.register(nn.GroupNorm, _norm_rule(lambda m: m.num_channels, rebuild_groupnorm))
REGISTRY.register(
    nn.LayerNorm, _norm_rule(lambda m: m.normalized_shape[-1], rebuild_layernorm, channel_dim=-1)
)
REGISTRY.register(
    nn.Linear,
    WidthRule(lambda m: m.in_features, lambda m: m.out_features, rebuild_linear, channel_dim=-1),
)


#: LayerNorm subclasses that normalise the channels of NCHW maps (dimension 1), as timm's and
#: torchvision's LayerNorm2d do
_CHANNELS_FIRST_LAYERNORM = _norm_rule(lambda m: m.normalized_shape[-1], rebuild_layernorm)


def _register_timm() -> None:
    try:
        import timm.layers as tl
    except ImportError:  # pragma: no cover
        return
    # timm's channels-first LayerNorm2d subclasses nn.LayerNorm but normalises dim 1
    for name in ("LayerNorm2d", "LayerNormAct2d", "RmsNorm2d"):
        cls = getattr(tl, name, None)
        if cls is not None and issubclass(cls, nn.LayerNorm):
            REGISTRY.register(cls, _CHANNELS_FIRST_LAYERNORM)
    try:
        from timm.models.vgg import ConvMlp

        REGISTRY.register(ConvMlp, composite_rule("fc1", "fc2"))
    except ImportError:  # pragma: no cover
        pass
    mixed = getattr(tl, "MixedConv2d", None)
    if mixed is not None:
        REGISTRY.register(
            mixed,
            WidthRule(
                in_width=lambda m: m.in_channels,
                out_width=lambda m: m.out_channels,
                rebuild=_rebuild_mixed_conv,
                preserves_width=is_depthwise,
            ),
        )


def composite_rule(first: str, last: str) -> WidthRule:
    """A rule for a small module whose ``first`` conv/linear reads its input and whose ``last``
    one writes its output (e.g. timm's ConvMlp: ``composite_rule("fc1", "fc2")``)."""

    def width(attr: str, which: str):
        def read(m):
            layer = getattr(m, attr)
            return getattr(layer, which + "_channels", None) or getattr(layer, which + "_features")

        return read

    def rebuild(m, in_width: int, out_width: int):
        new = copy.deepcopy(m)
        for attr, (cin, cout) in (
            (first, (in_width, None)),
            (last, (None, out_width)),
        ):
            layer = getattr(new, attr)
            rule = REGISTRY.lookup(layer)
            setattr(
                new,
                attr,
                REGISTRY.rebuild(
                    layer,
                    cin if cin is not None else rule.in_width(layer),
                    cout if cout is not None else rule.out_width(layer),
                ),
            )
        for sub in new.modules():  # fresh weights throughout
            if sub is not new and hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
        return new

    return WidthRule(width(first, "in"), width(last, "out"), rebuild)


def _rebuild_mixed_conv(m, in_width: int, out_width: int):
    convs = list(m.values())
    return type(m)(
        in_width,
        out_width,
        kernel_size=[c.kernel_size[0] for c in convs],
        stride=convs[0].stride[0],
        padding="same" if type(convs[0]).__name__ == "Conv2dSame" else "",
        dilation=convs[0].dilation[0],
        depthwise=is_depthwise(m),
    )


def _register_torchvision() -> None:
    try:
        from torchvision.models.convnext import LayerNorm2d
    except ImportError:  # pragma: no cover
        return
    # channels-first like timm's, though it subclasses nn.LayerNorm
    REGISTRY.register(LayerNorm2d, _CHANNELS_FIRST_LAYERNORM)


def config_rule(in_key: str, out_key: str, *, preserves_width=None) -> WidthRule:
    """The rule of a :class:`~reverso.nn.config.Configurable` layer whose widths are the config
    entries and attributes ``in_key`` and ``out_key`` (one name for a width-preserving layer): a
    rebuild is ``from_config`` of its whole config with the widths (and the groups of a grouped
    layer) changed, so it keeps every other setting."""

    def rebuild(m, in_width: int, out_width: int):
        config = {**m.config(), in_key: in_width, out_key: out_width}
        if "groups" in config:
            config["groups"] = conv_groups_for(m, in_width, out_width)
        return type(m).from_config(config)

    if preserves_width is None:
        preserves_width = (lambda m: True) if in_key == out_key else (lambda m: False)
    return WidthRule(
        lambda m: getattr(m, in_key), lambda m: getattr(m, out_key), rebuild, preserves_width
    )


def _register_reverso_layers() -> None:
    from reverso.nn import BlurPool2d, DynamicSteerableConv2d, FrameConv2d, NJetConv2d, SameConv2d

    for conv in (NJetConv2d, FrameConv2d, SameConv2d):
        REGISTRY.register(
            conv, config_rule("in_channels", "out_channels", preserves_width=is_depthwise)
        )
    REGISTRY.register(DynamicSteerableConv2d, config_rule("in_channels", "out_channels"))
    REGISTRY.register(BlurPool2d, config_rule("channels", "channels"))


_register_timm()
_register_torchvision()
_register_reverso_layers()


def width_defining(gm, node) -> bool:
    """Layers that set their output width (convs that are not depthwise, linears, registered ones)."""
    m = module_of(gm, node)
    if m is None:
        return False
    rule = REGISTRY.lookup(m)
    return rule is not None and not rule.preserves_width(m)
