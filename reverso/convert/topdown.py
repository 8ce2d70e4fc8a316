"""``reverso.topdown``: trace -> analyse -> passes -> a trainable top-down network.

This is the file to read first. Each step is one call:

1. :func:`~reverso.frontend.tracing.trace` the bottom-up model with torch.fx and propagate shapes;
2. :func:`~reverso.analysis.analyze_graph` it into units, groups, transitions, stem and head
   (and tags every node, :mod:`reverso.ir.tags`);
3. :func:`~reverso.planner.plan.make_plan` lays those out in top-down order (levels, laterals);
4. the :class:`~reverso.compiler.pipeline.Pipeline` of passes rewrites a copy of the graph
   (``filter_arrangement`` -> ``stride_one`` -> ``reverse_stages`` -> ``downsample_to_upsample``
   -> ``drop_projections`` -> ``multiscale_inputs``), checking shapes after each pass and
   running width repair after the passes that change widths;
5. :func:`~reverso.convert.network.emit` wraps the result as a
   :class:`~reverso.convert.network.TopDownNet`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch.fx as fx
from torch import nn

from reverso import ir
from reverso.analysis import analyze_graph
from reverso.compiler.base import Pass
from reverso.compiler.pipeline import Pipeline
from reverso.convert.emit import emit
from reverso.convert.network import TopDownNet
from reverso.convert.recipe import PassConfig, Recipe, origin
from reverso.convert.steps import working_copy
from reverso.convert.transforms import with_memory
from reverso.errors import (
    InputSizeError,
    OptionError,
    PassError,
    ReversoError,
    UnsupportedTopologyError,
    WidthError,
    failure,
)
from reverso.frontend.normalize import canonicalize
from reverso.frontend.provenance import SourceModel, qualified_name
from reverso.frontend.tracing import (
    check_leaves,
    example_input,
    model_dtype,
    resolve_input_size,
    resolve_model,
    smallest_working,
    trace,
)
from reverso.ir.shapes import output_shapes, output_value, propagate
from reverso.options import NJetOptions, TopDownOptions
from reverso.passes import NJet, default_pipeline
from reverso.planner.context import CompileContext, prototypes_of
from reverso.planner.plan import make_plan


def topdown(
    model: nn.Module | str,
    *,
    input_size: tuple[int, int, int] | None = None,
    arrangement: str | int = "td",
    merge: str = "add_concat",
    upsample: str = "nearest",
    pyramid: str = "gaussian",
    passes: Pipeline | Iterable[Pass | str] | None = None,
    leaf_modules: Iterable[type | str] = (),
    njet: bool | dict = False,
    memory: str | None = None,
    merge_width: str = "unit",
) -> TopDownNet:
    """Compile a bottom-up CNN into its top-down counterpart.

    Args:
        model: an ``nn.Module`` or a timm model name (created with ``pretrained=False``).
        input_size: ``(C, H, W)`` used to trace and propagate shapes; defaults to timm's
            ``pretrained_cfg["input_size"]``. The result accepts other sizes too.
        arrangement: ``"td"`` (widths shrink with depth), ``"uni"`` (one width, or pass the int),
            ``"rev"`` (groups keep their order; only the resolution schedule is reversed).
        merge: ``"add"``, ``"concat"`` or ``"add_concat"`` (the paper's choice).
        upsample: ``"nearest"`` (the paper's choice), ``"bilinear"`` or ``"blur"``.
        pyramid: ``"gaussian"`` (TensorFlow's Gaussian resize, as the paper's code makes it),
            ``"gaussian_reflect"``, ``"binomial"`` or ``"cascade"`` (:class:`~reverso.nn.ImagePyramid`).
        passes: a :class:`Pipeline` (or list of passes / built-in pass names) to run instead of
            :func:`default_pipeline`.
        leaf_modules: module classes or qualified names torch.fx must not trace into.
        njet: also swap every spatial conv of the top-down net for an N-Jet conv (the ``njet``
            pass, last); a dict passes its options (``order``, ``sigma``, ``learn_sigma``, ...).
        memory: ``"checkpoint"`` runs the net with activation checkpointing
            (:func:`reverso.checkpoint`); ``"reversible"`` turns its residual runs into reversible
            coupling blocks and checkpoints the rest (:func:`reverso.reversible`). Both trade
            compute for the memory of training (docs/memory.md).
        merge_width: ``"unit"`` (the paper's rule) fuses a merge at the width of the unit it
            closes; ``"inner"`` at that unit's inner (bottleneck) width, projecting back with a
            1x1 conv (far fewer parameters in bottleneck nets).
    """
    layout = dict(arrangement=arrangement, merge=merge, upsample=upsample, pyramid=pyramid)
    options = TopDownOptions.create(**layout, memory=memory, merge_width=merge_width)
    pipeline = _with_njet(_pipeline(passes), njet)
    model = resolve_model(model)
    refuse_if_top_down(model)
    input_size = resolve_input_size(model, input_size)
    leaf_modules = check_leaves(leaf_modules)

    def convert(size, leaf_modules=leaf_modules) -> TopDownNet:
        ctx = compile_context(model, size, options, leaf_modules)
        gm = pipeline.run(working_copy(ctx.bu), ctx)
        removed = ir.remove_dead_code(gm)  # branches the passes left unread: no weights to train
        check_same_output(ctx.bu, gm, type(model).__name__)
        configs = tuple(PassConfig.of(p) for p in pipeline)
        leaves = tuple(qualified_name(t) for t in leaf_modules)  # "package.module:Class"
        recipe = Recipe(
            "topdown", options, tuple(size), pipeline=configs, leaf_modules=leaves, **origin(model)
        )
        net = emit(gm, ctx, recipe)
        net.removed_modules = tuple(removed)  # files saved before they were removed hold them
        net.min_size = smallest_input(net, ctx)
        check_runs(net, ctx)
        return net

    try:
        net = convert(input_size)
    except PassError as err:
        refuse_if_too_small(err, convert, input_size, type(model).__name__)
        raise
    except (UnsupportedTopologyError, WidthError) as err:
        suggest_leaf(err, lambda leaf: convert(input_size, [*leaf_modules, leaf]), leaf_modules)
        raise
    recipe = net.reverso_recipe
    net = with_memory(net, options.memory)
    net.reverso_recipe = recipe  # memory= is an option of the top-down recipe itself
    net.reverso_source_model = SourceModel.original(model)
    return net


def _with_njet(pipeline: Pipeline, njet: bool | dict) -> Pipeline:
    """``pipeline`` with the ``njet`` pass appended when ``njet`` asks for it (and it has none)."""
    if njet in (False, None) or "njet" in pipeline.names:
        return pipeline
    return Pipeline([*pipeline, NJet(**_njet_options(njet))], dump_dir=pipeline.dump_dir)


def suggest_leaf(err: ReversoError, convert, leaf_modules) -> None:
    """A refusal inside one of the user's modules that converts once that module is a leaf
    (traced whole: kept at its own width, run as one unit at its level) says so. reverso tries
    it first, so it never suggests what fails."""
    cls = getattr(err, "module_class", None)
    if cls is None or cls in leaf_modules or not issubclass(cls, nn.Module):
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            convert(cls)
    except ReversoError:
        return
    err.args = (
        f"{err}. It converts with that module kept whole: pass leaf_modules=({cls.__name__},) "
        f"(reverso tried it; {cls.__module__}.{cls.__qualname__} then runs as one unit, at its "
        "own width, in the top-down net)",
        *err.args[1:],
    )


def refuse_if_top_down(model: nn.Module) -> None:
    """A top-down network (or an fx trace of one) has no bottom-up form to convert: refuse by
    name (its pyramid would otherwise be read as a downsampling inside reshaped tensors)."""
    from reverso.nn import ImagePyramid, Merge

    pyramid = next((n for n, m in model.named_modules() if isinstance(m, ImagePyramid)), None)
    if pyramid is None:  # an fx trace of one inlines its layers; every merge calls its crop
        merges = (
            n.name
            for m in model.modules()
            if isinstance(m, fx.GraphModule)
            for n in m.graph.nodes
            if n.op == "call_function" and getattr(n.target, "__module__", "") == Merge.__module__
        )
        pyramid = next(merges, None)
    if pyramid is not None:
        what = (
            "a top-down network"
            if isinstance(model, TopDownNet)
            else (f"{type(model).__name__}, which holds a top-down network's layers ({pyramid})")
        )
        raise UnsupportedTopologyError(
            f"the model is {what}: it is already top-down. Convert the bottom-up model it was "
            "made from; reverso's other transforms (njet, antialias, checkpoint, frames, ...) "
            "take top-down networks"
        )


def _njet_options(njet) -> dict:
    """``topdown(njet=...)``: True, or a dict of :class:`~reverso.options.NJetOptions`."""
    if njet is True:
        return {}
    if not isinstance(njet, dict):
        raise OptionError(f"njet must be False, True or a dict of N-Jet options, got {njet!r}")
    return NJetOptions.from_dict(njet, where="njet").to_json()


def compile_context(
    model: nn.Module, input_size, options: TopDownOptions, leaf_modules=()
) -> CompileContext:
    """Trace and analyse ``model`` and plan its top-down layout."""
    input_size = resolve_input_size(model, input_size)
    bu = trace(model, input_size, leaf_modules=leaf_modules)
    canonicalize(bu, input_size)
    report = analyze_graph(bu, input_size)
    return CompileContext(
        model=model,
        input_size=input_size,
        options=options,
        bu=bu,
        report=report,
        plan=make_plan(report, options, bu),
        prototypes=prototypes_of(bu, report),
        leaf_modules=tuple(leaf_modules),
    )


def refuse_if_too_small(err: PassError, convert, input_size, name: str) -> None:
    """A pass that fails on torch's size checks at ``input_size`` but converts a larger input is
    no bug: the top-down net runs some layers at a coarser level than the bottom-up one (an
    unpadded conv or pool deep in the bottom-up net meets the pyramid's smallest map). Raise an
    :class:`InputSizeError` naming the smallest size found that converts (doubling, then
    bisecting on the height with the aspect ratio kept); return if no larger size converts."""
    c, h, w = input_size

    def works(height: int) -> bool:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                convert((c, height, max(1, round(w * height / h))))
        except ReversoError:
            return False
        return True

    working = smallest_working(h, works, largest=8 * h, bisections=6)
    if working is None:
        return
    size = (c, working, max(1, round(w * working / h)))
    raise InputSizeError(
        f"input_size {tuple(input_size)} is too small for the top-down form of {name}: a layer "
        f"meets a map smaller than it needs ({str(err).splitlines()[0]}). The top-down net runs "
        "the bottom-up net's first layers on its smallest pyramid level, where an unpadded conv "
        f"or pool can run out of pixels. The smallest input size found that converts is {size}: "
        f"pass input_size={size} or larger, and feed the converted net inputs at least that large"
    ) from None


def check_same_output(bu: fx.GraphModule, td: fx.GraphModule, name: str) -> None:
    """The top-down graph's output has the bottom-up graph's shapes; a refusal otherwise (never a
    network that silently answers with another number of classes)."""

    bu_shapes, td_shapes = output_shapes(bu), output_shapes(td)
    if bu_shapes != td_shapes:
        raise UnsupportedTopologyError(
            f"the top-down form of {name} would output {td_shapes} where {name} outputs "
            f"{bu_shapes}, so reverso refuses it. The usual cause is a classifier reverso does not "
            "read as one (a conv of the model's own type producing the class map): make the "
            "classifier an nn.Conv2d or nn.Linear after the last downsampling, or convert the "
            "model's feature extractor and add the head yourself"
        )


def smallest_input(net: TopDownNet, ctx: CompileContext) -> int:
    """The smallest height and width ``net`` takes, a property of its architecture: the smallest
    input whose pyramid levels all differ (each of its ``L`` levels below the image halves,
    rounding up, so ``2**(L-1) + 1``), if the network runs there (checked on meta tensors);
    otherwise the smallest larger side that runs, searched up to the converted size. Where the
    sizes a network takes are no interval (a patch merging that needs even sizes), the search
    may answer the converted size."""
    c, h, w = ctx.input_size
    converted = min(h, w)
    guess = min(2 ** max(net.plan.entry_level - 1, 0) + 1, converted)

    def works(side: int) -> bool:
        try:
            propagate_emitted(net, (c, side, side), model_dtype(ctx.model))
        except Exception:
            return False
        return True

    if works(guess):
        return guess
    return smallest_working(guess, works, largest=converted) or converted


def propagate_emitted(net: TopDownNet, size, dtype) -> None:
    """Propagate shapes through the emitted network's graphs: features, then the head."""
    propagate(net.features, example_input(size, dtype=dtype))
    propagate(net.head.pre_logits, output_value(net.features))
    propagate(net.head.fc, output_value(net.head.pre_logits))


def check_runs(net: TopDownNet, ctx: CompileContext) -> None:
    """Prove the emitted network runs: its graphs (features, then the head) propagate on meta
    tensors at the traced size, with the checks that real kernels make and meta kernels skip (a
    conv's groups: :class:`reverso.ir.shapes.RealKernelChecks`). No real forward is run: at 224
    px a top-down ResNet-50 has 18x the bottom-up FLOPs. A failure is reverso's bug."""
    try:
        propagate_emitted(net, ctx.input_size, model_dtype(ctx.model))
    except Exception as err:
        raise PassError(
            f"the converted network fails on an input of size {tuple(ctx.input_size)}"
            f"{failure(err)}. Its shapes checked out during the conversion, so this is a bug of "
            "reverso's: please report it with the model"
        ) from err


def _pipeline(passes) -> Pipeline:
    if passes is None:
        return default_pipeline()
    if isinstance(passes, (str, Pass)) or not isinstance(passes, Iterable):
        raise OptionError(
            "passes must be a reverso.Pipeline or a list of passes / built-in pass names"
        )
    pipeline = passes if isinstance(passes, Pipeline) else Pipeline(passes)
    for step in pipeline:
        if not step.inside_topdown:
            raise OptionError(
                f"the pass {step.name!r} works on a whole network, not inside reverso.topdown's "
                f"pipeline: {step.inside_topdown_instead}"
            )
    return pipeline
