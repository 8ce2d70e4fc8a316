"""The conversions users call and what they produce: :func:`~reverso.convert.topdown.topdown`,
the sibling rewrites :func:`~reverso.convert.transforms.njet` and
:func:`~reverso.convert.transforms.antialias`, the emitted
:class:`~reverso.convert.network.TopDownNet`, and saving/loading
(:mod:`~reverso.convert.saving`).
"""

from reverso.lazy import submodules

__getattr__ = submodules(__name__)
