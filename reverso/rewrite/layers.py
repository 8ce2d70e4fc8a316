"""New layers in the model's own style: its conv, norm and activation types, in its own order.

Merges, laterals and new shortcut projections are built here from copies of the model's own
layers (the *prototypes*), so a BatchNorm+ReLU model gets BatchNorm+ReLU merges and a timm
model with BatchNormAct2d+SiLU gets those; pre-activation models get norm-act-conv order.
"""

from __future__ import annotations

import copy

from torch import nn

from reverso.rewrite.convs import rebuild_conv, same_padding
from reverso.rewrite.widths import REGISTRY, WidthRegistry


class LayerFactory:
    def __init__(
        self, prototypes: dict[str, nn.Module], preact: bool, registry: WidthRegistry = REGISTRY
    ):
        self.prototypes = prototypes
        self.preact = preact
        self.registry = registry

    def conv(
        self, cin: int, cout: int, kernel_size: int, like: nn.Conv2d | None = None
    ) -> nn.Conv2d:
        """A fresh stride-1 'same' conv of the model's conv type (or of ``like``), groups 1."""
        proto = like if like is not None else self.prototypes.get("conv")
        if proto is None:
            return nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2)
        k = (kernel_size, kernel_size)
        template = copy.copy(proto)
        template.groups = 1
        return rebuild_conv(
            template,
            cin,
            cout,
            kernel_size=k,
            stride=(1, 1),
            padding=same_padding(k, proto.dilation),
        )

    def act(self) -> nn.Module | None:
        proto = self.prototypes.get("act")
        return copy.deepcopy(proto) if proto is not None else None

    def norm(self, width: int, *, act: bool) -> list[nn.Module]:
        """The model's norm at ``width`` followed by its activation (inside it for norm-act layers)."""
        proto = self.prototypes.get("norm")
        layers: list[nn.Module] = []
        if proto is not None:
            norm = self.registry.rebuild(proto, width)
            if isinstance(getattr(norm, "act", None), nn.Module):  # timm-style norm-act layer
                norm.act = (self.act() or nn.Identity()) if act else nn.Identity()
                return [norm]
            layers.append(norm)
        if act and self.act() is not None:
            layers.append(self.act())
        return layers

    def conv_block(self, cin: int, cout: int, kernel_size: int) -> nn.Sequential:
        """conv-norm-act (post-activation models) or norm-act-conv (pre-activation models)."""
        conv = self.conv(cin, cout, kernel_size)
        if self.preact:
            return nn.Sequential(*self.norm(cin, act=True), conv)
        return nn.Sequential(conv, *self.norm(cout, act=True))

    def projection(self, cin: int, cout: int) -> nn.Sequential:
        """A 1x1 shortcut projection: conv-norm (post-activation) or a bare conv (pre-activation)."""
        conv = self.conv(cin, cout, 1)
        if self.preact:
            return nn.Sequential(conv)
        return nn.Sequential(conv, *self.norm(cout, act=False))
