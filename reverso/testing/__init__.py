"""Helpers for testing conversions: hypothesis strategies for random bottom-up CNNs and
property checks on the top-down networks reverso emits. Needs ``hypothesis`` (the ``test`` extra).
"""

from .properties import (
    check_coarse_entry,
    check_erf_within_receptive_field,
    check_every_parameter_trains,
    check_one_merge_per_transition,
    check_output_shape,
    check_resolution_never_decreases,
    check_runs,
    check_topdown,
    check_topdown_reaches_receptive_field,
    check_units_once,
)
from .strategies import (
    CNNSpec,
    TransitionSpec,
    UnitSpec,
    bottom_up_cnns,
    groups,
    transitions,
    units,
)

__all__ = [
    "CNNSpec",
    "TransitionSpec",
    "UnitSpec",
    "bottom_up_cnns",
    "check_coarse_entry",
    "check_erf_within_receptive_field",
    "check_every_parameter_trains",
    "check_one_merge_per_transition",
    "check_output_shape",
    "check_resolution_never_decreases",
    "check_runs",
    "check_topdown",
    "check_topdown_reaches_receptive_field",
    "check_units_once",
    "groups",
    "transitions",
    "units",
]
