"""The tracing front end: torch.fx tracing and shape propagation.

timm's "notrace" modules and functions are honoured, every layer type that the width
registry can rebuild is kept as a leaf (so passes can re-instantiate it), and users can add
their own leaves with ``leaf_modules=`` (classes or qualified module names).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable

import torch
import torch.fx as fx
from torch import nn

from reverso.errors import InputSizeError, OptionError, TraceError, failure
from reverso.frontend.inline import inline_downsampling_functions, slice_reshaped_patch_merging
from reverso.frontend.inputs import (  # noqa: F401  (imported from here by the compiler)
    example_input,
    random_input,
    traced_dtype,
    traced_root,
)
from reverso.frontend.models import (  # noqa: F401  (the front end's entry points)
    check_convertible,
    did_you_mean,
    resolve_input_size,
    resolve_model,
)
from reverso.frontend.modes import dropout_as_layers, reads_training
from reverso.frontend.normalize import drop_unread_pool_indices, whole_map_pools_as_global
from reverso.ir.edit import model_dtype, set_module
from reverso.ir.modes import evaluating
from reverso.ir.shape_rules import channel_norm_rule, register_shape_rule
from reverso.ir.shapes import propagate
from reverso.ir.windows import pair
from reverso.rewrite.widths import REGISTRY


def _timm_leaves() -> tuple[tuple[type, ...], tuple]:
    try:
        import timm.layers as tl
    except ImportError:  # pragma: no cover - timm is a dependency, but keep the core usable
        return (), ()
    modules = list(tl.get_notrace_modules())
    # modules whose forward branches on self.training must stay leaves, or the branch taken
    # at trace time would be baked into the graph
    for name in ("DropPath", "DropBlock2d"):
        if hasattr(tl, name):
            modules.append(getattr(tl, name))
    from torchvision.ops import StochasticDepth  # torchvision's drop path, likewise

    modules.append(StochasticDepth)
    register_timm_norm_shapes()
    from reverso.nn import LAYERS

    for layer in LAYERS:  # timm's own tracer (FeatureGraphNet) keeps reverso's layers whole too
        tl.register_notrace_module(layer)
    return tuple(modules), tuple(tl.get_notrace_functions())


#: timm's channels-first norms and norm-act layers: shape-preserving after a channel check
_TIMM_CHANNEL_NORMS = (
    "BatchNormAct2d",
    "SyncBatchNormAct",
    "GroupNormAct",
    "GroupNorm1Act",
    "GroupNorm",
    "GroupNorm1",
    "LayerNorm2d",
    "LayerNormAct2d",
)


@functools.cache
def register_timm_norm_shapes() -> None:
    """Shape rules for timm's norm layers, registered once per process: on meta tensors their
    decompositions cost more than every other layer of a timm model together."""
    import timm.layers as tl

    for name in _TIMM_CHANNEL_NORMS:
        if hasattr(tl, name):
            register_shape_rule(getattr(tl, name), channel_norm_rule)


def check_leaves(leaf_modules: Iterable[type | str]) -> list[type | str]:
    """``leaf_modules`` as a list, each entry a module class or a qualified module name."""
    if isinstance(leaf_modules, (str, type)) or not isinstance(leaf_modules, Iterable):
        raise OptionError(
            f"leaf_modules must list module classes or qualified module names, got {leaf_modules!r}"
        )
    leaves = list(leaf_modules)
    for leaf in leaves:
        if not (isinstance(leaf, str) or (isinstance(leaf, type) and issubclass(leaf, nn.Module))):
            raise OptionError(
                f"leaf_modules entries must be module classes or qualified module names, got {leaf!r}"
            )
    return leaves


class ReversoTracer(fx.Tracer):
    """A torch.fx tracer that keeps timm's notrace modules, registered layers and user leaves whole."""

    def __init__(self, leaf_modules: Iterable[type | str] = ()):
        timm_modules, timm_functions = _timm_leaves()
        super().__init__(autowrap_functions=timm_functions)
        leaf_modules = check_leaves(leaf_modules)
        from reverso.nn import LAYERS

        self.leaf_types = (
            REGISTRY.leaf_types()
            + LAYERS  # reverso's own layers
            + tuple(t for t in leaf_modules if isinstance(t, type))
        )
        self.timm_leaves = timm_modules
        self.translated = tuple(_translations())
        self.leaf_names = {n for n in leaf_modules if isinstance(n, str)}
        self._opened: dict[int, bool] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names or isinstance(m, self.leaf_types):
            return True
        if isinstance(m, self.translated):
            return True  # swapped for reverso's own layer after tracing
        if reads_training(m):
            return True  # a stochastic layer (timm's DropPath): kept with its train/eval mode
        if isinstance(m, self.timm_leaves):
            return not self._opens(m)
        return super().is_leaf_module(m, module_qualified_name)

    def _opens(self, m: nn.Module) -> bool:
        """Whether a timm "notrace" block is traced through after all: one that downsamples
        (a strided conv or pool inside, which the compiler must reach, as in NFNet's
        NormFreeBlock) and that traces on its own. Any other stays whole."""
        if id(m) not in self._opened:
            strided = any(
                max(pair(getattr(sub, "stride", 1))) > 1
                for sub in m.modules()
                if isinstance(sub, (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d))
            )
            self._opened[id(m)] = strided and _traces(m, self)
        return self._opened[id(m)]

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as err:
            if not hasattr(err, "_reverso_module"):
                name = self.path_of_module(m) if m is not self.root else ""
                err._reverso_module = (name, type(m).__name__)
            raise


def _translations() -> dict[type, Callable[[nn.Module], nn.Module]]:
    """Layers of other libraries that reverso replaces by its own equivalent (same function, same
    values) in the traced graph, so that the passes know what they do: timm's SpaceToDepth (the
    TResNet stem) is reverso's :class:`~reverso.nn.SpaceToDepth`, a downsampling with a stride."""
    from reverso.nn import SpaceToDepth

    table: dict[type, Callable[[nn.Module], nn.Module]] = {}
    try:
        from timm.layers import SpaceToDepth as TimmSpaceToDepth
    except ImportError:  # pragma: no cover - timm is a dependency
        return table
    table[TimmSpaceToDepth] = lambda m: SpaceToDepth(m.bs)
    return table


def _translate(gm: fx.GraphModule) -> None:
    """Swap the traced graph's translated layers (in the graph only, never in the model)."""
    table = _translations()
    for n in gm.graph.nodes:
        if n.op == "call_module" and type(m := gm.get_submodule(n.target)) in table:
            set_module(gm, n.target, table[type(m)](m))


def _traces(m: nn.Module, parent: ReversoTracer) -> bool:
    """Whether ``m``'s own forward traces with ``parent``'s leaves (``m`` itself opened)."""
    tracer = ReversoTracer()
    tracer.leaf_types, tracer.leaf_names = parent.leaf_types, set()
    tracer.timm_leaves, tracer._opened = parent.timm_leaves, {**parent._opened, id(m): True}
    try:
        with evaluating(m):
            tracer.trace(m)
    except Exception:
        return False
    return True


def trace(model, input_size=None, *, leaf_modules: Iterable[type | str] = ()) -> fx.GraphModule:
    """Trace ``model`` with torch.fx and propagate shapes into ``node.meta["val"]``.

    The returned GraphModule shares its submodules with ``model``.
    """
    model = resolve_model(model)
    input_size = resolve_input_size(model, input_size)
    tracer = ReversoTracer(leaf_modules)
    with evaluating(model):
        try:
            graph = tracer.trace(model, concrete_args=_defaulted_args(model))
        except Exception as err:
            raise _trace_error(model, err) from err
    gm = fx.GraphModule(tracer.root, graph, class_name=type(model).__name__)
    gm.meta["root"] = model  # GraphModule rebuilds intermediate modules as plain Modules
    gm.meta["dtype"] = model_dtype(model)
    _translate(gm)
    dropout_as_layers(gm)
    drop_unread_pool_indices(gm)
    propagate_checked(gm, input_size, traced_dtype(gm))
    rewritten = whole_map_pools_as_global(gm)
    if inline_downsampling_functions(gm) | slice_reshaped_patch_merging(gm) | rewritten:
        propagate_checked(gm, input_size, traced_dtype(gm))
    return gm


def _defaulted_args(model: nn.Module) -> dict:
    """Optional forward arguments beyond the image (masks, flags) are fixed to their defaults."""
    import inspect

    params = list(inspect.signature(model.forward).parameters.values())[1:]
    return {
        p.name: p.default
        for p in params
        if p.default is not inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def _trace_error(model: nn.Module, err: Exception) -> TraceError:
    name, kind = getattr(err, "_reverso_module", ("", type(model).__name__))
    where = f"module '{name}' ({kind})" if name else f"the top-level forward of {kind}"
    remedy = (
        f"mark it as a leaf so it is kept whole: leaf_modules=['{name}'] or leaf_modules=[{kind}]"
        if name
        else "make its forward free of data-dependent Python control flow, or wrap the offending "
        "part in a submodule and pass it in leaf_modules="
    )
    return TraceError(
        f"torch.fx could not trace {where}: {type(err).__name__}: {err}. To fix: {remedy}."
    )


def propagate_checked(
    gm: fx.GraphModule, input_size: tuple[int, int, int], dtype=torch.float32
) -> None:
    """Propagate shapes for an input of ``input_size``; failures name the node and the remedy."""
    try:
        propagate(gm, example_input(input_size, dtype=dtype))
    except Exception as err:
        raise InputSizeError(
            f"the model failed on an input of size {input_size}{failure(err)}."
            + size_hint(gm, input_size, dtype)
        ) from err


#: the largest square side tried when looking for an input size that works
LARGEST_SIDE = 4096


def smallest_working(
    failing: int, works: Callable[[int], bool], *, largest: int, bisections: int | None = None
) -> int | None:
    """The smallest size above ``failing`` for which ``works`` holds (it fails at ``failing``):
    doubling up to ``largest`` until one works, then bisecting between the last failure and the
    first success (at most ``bisections`` times: each try may cost a whole conversion). None if
    nothing up to ``largest`` works. The one search for "the smallest input" reverso makes."""
    low, high = failing, None
    while low < largest:
        size = min(2 * low, largest)
        if works(size):
            high = size
            break
        low = size
    if high is None:
        return None
    steps = 0
    while high - low > 1 and (bisections is None or steps < bisections):
        middle = (low + high) // 2
        low, high = (low, middle) if works(middle) else (middle, high)
        steps += 1
    return high


def minimum_side(gm: fx.GraphModule, input_size, dtype=torch.float32) -> int | None:
    """The smallest side ``s`` such that a (C, s, s) input propagates through ``gm`` and every
    strided layer still shrinks its feature map; None if no side up to LARGEST_SIDE works (the
    model then wants other channels or one fixed size). Leaves ``gm``'s shapes as they were."""
    from reverso.ir import stalled_stride

    channels = input_size[0]

    def works(side: int) -> bool:
        try:
            propagate(gm, example_input((channels, side, side), dtype=dtype))
        except Exception:
            return False
        return stalled_stride(gm) is None

    try:  # the traced side fails (else no hint was needed)
        return smallest_working(max(1, min(input_size[1:])), works, largest=LARGEST_SIDE)
    finally:
        with contextlib.suppress(Exception):  # the original size fails: the caller says so
            propagate(gm, example_input(input_size, dtype=dtype))


def size_hint(gm: fx.GraphModule, input_size, dtype=torch.float32) -> str:
    """What to do about an input size ``gm`` cannot take: the real minimum when a larger input
    works; otherwise the channels the first layer expects, or the advice to pass the size the
    model was built for."""
    side = minimum_side(gm, input_size, dtype)
    if side is not None:
        return (
            f" The smallest square input it takes is {side}x{side}: "
            f"pass input_size=({input_size[0]}, {side}, {side}) or larger."
        )
    first = next(
        (
            m
            for n in gm.graph.nodes
            if n.op == "call_module"
            and isinstance(m := gm.get_submodule(n.target), (nn.Conv2d, nn.Linear))
        ),
        None,
    )
    wanted = getattr(first, "in_channels", None)
    if wanted is not None and wanted != input_size[0]:
        return (
            f" The model's first layer takes {wanted} input channels, not {input_size[0]}: "
            f"pass input_size=({wanted}, {input_size[1]}, {input_size[2]})."
        )
    return (
        " No larger square input works either: the model may expect one fixed size (a flatten "
        "into a Linear layer, say); pass input_size=(C, H, W) of the size it was built for."
    )
