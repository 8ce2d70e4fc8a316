"""Stage 1, probe: the image input, the logits, and which values scale with the input
(:func:`reverso.frontend.scaling.measure_scaling`: shapes propagated once more at twice the
input size). The graph is read, never changed: the front end's
:func:`~reverso.frontend.normalize.canonicalize` made the edits the analysis needs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from reverso.errors import UnsupportedTopologyError
from reverso.frontend.scaling import image_inputs, measure_scaling
from reverso.ir.shapes import spatial


@dataclass
class Probe:
    input: fx.Node  # the image placeholder
    output: fx.Node  # the graph's output node
    result: fx.Node  # the logits node the output returns
    scaling: set[fx.Node]  # values whose size follows the input size
    maps: set[fx.Node]  # among them, the NCHW feature maps
    channels_last: set[fx.Node] = field(default_factory=set)  # 4D maps growing in dims 1, 2
    tokens: set[fx.Node] = field(default_factory=set)  # (B, N, C) values growing in dim 1
    grown: dict[fx.Node, object] = field(default_factory=dict)  # values at twice the size

    @property
    def num_classes(self) -> int:
        return int(self.result.meta["val"].shape[-1])

    def hw(self, n: fx.Node) -> tuple[int, int]:
        """The spatial size of a feature map, NCHW or channels-last."""
        shape = n.meta["val"].shape
        return (int(shape[1]), int(shape[2])) if n in self.channels_last else spatial(n)


def probe(gm: fx.GraphModule, input_size: tuple[int, int, int]) -> Probe:
    """Check the model's signature (one image in, one logits tensor out) and probe its values."""
    # optional forward arguments were fixed at trace time and hold no tensor
    images = image_inputs(gm)
    if len(images) != 1:
        raise UnsupportedTopologyError(
            f"the model's forward takes {len(images)} inputs "
            f"({', '.join(p.name for p in images)}); reverso converts models with one image input"
        )
    output = next(n for n in gm.graph.nodes if n.op == "output")
    result = output.args[0]
    if not isinstance(result, fx.Node) or not isinstance(result.meta.get("val"), torch.Tensor):
        raise UnsupportedTopologyError(
            "the model returns a tuple/dict instead of one logits tensor; wrap it so that "
            "forward returns the class scores only"
        )
    s = measure_scaling(gm, input_size)
    return Probe(images[0], output, result, s.scaling, s.maps, s.channels_last, s.tokens, s.grown)
