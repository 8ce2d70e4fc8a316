"""The front end: resolving a model (an ``nn.Module`` or a timm name), tracing it with torch.fx,
propagating shapes, and remembering where a model came from (:mod:`~reverso.frontend.provenance`).
"""

from reverso.lazy import submodules

__getattr__ = submodules(__name__)
