"""The planner: the user's options (:mod:`~reverso.planner.options`), the top-down layout of the
analysed units (:mod:`~reverso.planner.plan`) and the compile context passes read
(:mod:`~reverso.planner.context`).
"""

from reverso.lazy import submodules

__getattr__ = submodules(__name__)
