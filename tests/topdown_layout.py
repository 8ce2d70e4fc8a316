"""Read the layer layout of a top-down network, for checking it against the spec's descriptions."""

import torch.fx as fx
from torch import nn

from reverso.nn import Merge, Upsample


def conv_token(conv: nn.Conv2d) -> str:
    return f"C{conv.kernel_size[0]}/{conv.in_channels}->{conv.out_channels}"


def seq_tokens(seq: nn.Module) -> list[str]:
    """Convs, norms and activations of a small block, in order."""
    out = []
    for m in seq.modules():
        if isinstance(m, nn.Conv2d):
            out.append(conv_token(m))
        elif isinstance(m, nn.BatchNorm2d):
            out.append(f"BN{m.num_features}")
        elif isinstance(m, nn.ReLU):
            out.append("ReLU")
    return out


def layout(gm: fx.GraphModule) -> list[tuple]:
    """(kind, description, resolution) for each conv, upsampling and merge of a graph, in order."""
    rows = []
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        m = gm.get_submodule(n.target)
        size = tuple(n.meta["val"].shape[-2:]) if hasattr(n.meta.get("val"), "shape") else None
        if isinstance(m, nn.Conv2d):
            rows.append(("conv", conv_token(m), size))
        elif isinstance(m, Upsample):
            rows.append(("up", m.mode, size))
        elif isinstance(m, Merge):
            rows.append(
                (
                    "merge",
                    {
                        "project": seq_tokens(m.project) if m.project is not None else None,
                        "upsample": m.upsample is not None,
                        "lateral": seq_tokens(m.lateral),
                        "fuse": seq_tokens(m.fuse) if m.fuse is not None else None,
                    },
                    size,
                )
            )
    return rows


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
