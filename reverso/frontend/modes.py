"""Layers that behave differently in training keep doing so after tracing.

torch.fx records the Python values a forward reads, and ``self.training`` is one: reverso
traces in eval mode, so ``F.dropout(x, p, training=self.training)`` would be recorded as a
dropout that never drops, and a stochastic-depth layer (timm's ``DropPath``: ``if not
self.training: return x``) would vanish from the graph. A net converted so would silently
train without the regularisation its model was built with (timm's ``drop_rate=`` and
``drop_path_rate=``). Two rules keep the mode alive:

- :func:`reads_training`: a layer with no parameters and no sublayers whose forward reads
  ``self.training`` is traced whole (a leaf), so its module, with its mode, stays in the graph;
- :func:`dropout_as_layers`: a functional dropout recorded with ``training=False`` (what
  ``training=self.training`` gives in eval mode) becomes the matching ``nn.Dropout`` layer,
  which drops in train mode and passes through in eval mode. A dropout written with a literal
  ``training=True`` (always on) is left as written.
"""

from __future__ import annotations

import functools
import inspect

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from reverso.ir.edit import add_module_node

#: functional dropouts, the layer each becomes and its ``training`` default
DROPOUTS = {
    F.dropout: (nn.Dropout, True),
    F.dropout1d: (nn.Dropout1d, True),
    F.dropout2d: (nn.Dropout2d, True),
    F.dropout3d: (nn.Dropout3d, True),
    F.alpha_dropout: (nn.AlphaDropout, False),
    F.feature_alpha_dropout: (nn.FeatureAlphaDropout, False),
}


def reads_training(module: nn.Module) -> bool:
    """Whether ``module`` is a parameter-free layer (no sublayers) whose forward reads
    ``self.training``: a stochastic layer to keep whole when tracing."""
    if next(module.parameters(recurse=False), None) is not None or next(module.children(), None):
        return False
    return _forward_reads_training(type(module))


@functools.cache
def _forward_reads_training(cls: type) -> bool:
    if cls.forward is nn.Module.forward or cls.__module__.startswith("torch."):
        return False  # torch's own layers are traced as leaves already
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "self.training" in source


def dropout_as_layers(gm: fx.GraphModule) -> bool:
    """Turn every functional dropout recorded with ``training=False`` (and a rate above 0) into
    the matching dropout layer. Returns whether the graph changed."""
    changed = False
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target not in DROPOUTS:
            continue
        layer, default = DROPOUTS[n.target]
        p = _argument(n, 1, "p", 0.5)
        training = _argument(n, 2, "training", default)
        inplace = _argument(n, 3, "inplace", False)
        if training is not False or not isinstance(p, (int, float)) or p <= 0:
            continue
        module = layer(float(p), inplace=bool(inplace))
        new = add_module_node(gm, "dropout", module, (n.args[0],), before=n)
        new.meta = dict(n.meta)
        n.replace_all_uses_with(new)
        gm.graph.erase_node(n)
        changed = True
    if changed:
        gm.recompile()
    return changed


def _argument(n: fx.Node, index: int, name: str, default):
    if len(n.args) > index:
        return n.args[index]
    return n.kwargs.get(name, default)
