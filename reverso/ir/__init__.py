"""The IR layer: torch.fx graphs as reverso reads and edits them.

* :mod:`~reverso.ir.shapes`: shapes on meta tensors in ``node.meta["val"]``;
* :mod:`~reverso.ir.tags`: the tag protocol (``node.meta["reverso"]``);
* :mod:`~reverso.ir.nodes`: node kinds and the one conv/pool window reader;
* :mod:`~reverso.ir.activations`: the one activation table;
* :mod:`~reverso.ir.dataflow`: the dataflow view and the main path;
* :mod:`~reverso.ir.edit`: small edits that keep tags;
* :mod:`~reverso.ir.modes`: temporary eval mode that restores every submodule's mode.

Everything a pass writer needs is importable from here: ``from reverso import ir``.
"""

from reverso.ir import activations
from reverso.ir.dataflow import (
    carries_tensor,
    dataflow_graph,
    descendants_within,
    fixed_inputs,
    has_ancestor_in,
    main_chain,
)
from reverso.ir.edit import (
    add_module_node,
    own_copy,
    placed_in,
    remove_dead_code,
    set_module,
    unique_name,
)
from reverso.ir.modes import evaluating, keeping_modes
from reverso.ir.nodes import (
    NORMS,
    by_name,
    conv_kernel,
    describe,
    dropout_types,
    feature_input,
    has_stride,
    is_activation,
    is_add,
    is_cat,
    is_conv,
    is_depthwise,
    is_dropout,
    is_identity,
    is_join,
    is_linear,
    is_norm,
    is_padding,
    is_pointwise,
    is_pool,
    is_resize,
    is_spatial_conv,
    is_split,
    module_of,
    module_path,
    owner_class,
    returns_indices,
    slice_step,
    stalled_stride,
    stride_of,
    traced_in,
)
from reverso.ir.shapes import channels, is_feature_map, spatial, tensor_shape
from reverso.ir.tags import (
    TAG,
    NodeTags,
    Role,
    Scope,
    copy_tags,
    inherit,
    is_global,
    is_map,
    is_reshaped,
    mark,
    nodes_with_role,
    pyramid_levels,
    role_of,
    stride_tag,
    tags_of,
    unit_members,
    unit_of,
)
from reverso.ir.windows import Window, module_window, window_of
from reverso.lazy import submodules

__all__ = [
    "ACTIVATIONS",
    "DROPOUTS",
    "NORMS",
    "TAG",
    "NodeTags",
    "Role",
    "Scope",
    "Window",
    "add_module_node",
    "by_name",
    "carries_tensor",
    "channels",
    "conv_kernel",
    "copy_tags",
    "dataflow_graph",
    "descendants_within",
    "describe",
    "evaluating",
    "feature_input",
    "fixed_inputs",
    "has_ancestor_in",
    "has_stride",
    "inherit",
    "is_activation",
    "is_add",
    "is_cat",
    "is_conv",
    "is_depthwise",
    "is_dropout",
    "is_feature_map",
    "is_global",
    "is_identity",
    "is_join",
    "is_linear",
    "is_map",
    "is_norm",
    "is_padding",
    "is_pointwise",
    "is_pool",
    "is_reshaped",
    "is_resize",
    "is_spatial_conv",
    "is_split",
    "keeping_modes",
    "main_chain",
    "mark",
    "module_of",
    "module_path",
    "module_window",
    "nodes_with_role",
    "own_copy",
    "owner_class",
    "placed_in",
    "pyramid_levels",
    "remove_dead_code",
    "returns_indices",
    "role_of",
    "set_module",
    "slice_step",
    "spatial",
    "stalled_stride",
    "stride_of",
    "stride_tag",
    "tags_of",
    "tensor_shape",
    "traced_in",
    "unique_name",
    "unit_members",
    "unit_of",
    "window_of",
]

# ACTIVATIONS and DROPOUTS include timm's layers: built on first use, so that importing the IR
# (every study tool does) does not import timm
__getattr__ = submodules(__name__, ACTIVATIONS=activations.module_types, DROPOUTS=dropout_types)
