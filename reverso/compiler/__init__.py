"""The pass machinery: the :class:`~reverso.compiler.base.Pass` interface, the
:class:`~reverso.compiler.pipeline.Pipeline` that runs passes (and width repair) with checks and
dumps, and the :mod:`~reverso.compiler.catalogue` of passes known by name.
"""

from reverso.lazy import submodules

__getattr__ = submodules(__name__)
