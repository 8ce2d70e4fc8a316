"""The planner: the top-down layout of the analysed units for the user's options
(:mod:`~reverso.planner.plan`, options from :mod:`reverso.options`) and the compile context
passes read (:mod:`~reverso.planner.context`).
"""

from reverso.lazy import submodules

__getattr__ = submodules(__name__)
