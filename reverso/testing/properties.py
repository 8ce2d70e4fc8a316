"""Property checks on top-down networks that users can call in their own tests.

Each ``check_*`` function raises ``AssertionError`` with a readable message when a property
does not hold. :func:`check_topdown` converts a model and runs them all.
"""

from __future__ import annotations

import itertools

import torch
import torch.fx as fx
from torch import nn

from reverso import ir
from reverso.convert.network import TopDownNet
from reverso.convert.topdown import topdown
from reverso.errors import OptionError, ReversoError
from reverso.frontend.tracing import random_input
from reverso.ir.modes import evaluating, keeping_modes
from reverso.ir.shapes import check_input_size, level_of, spatial
from reverso.nn import Merge
from reverso.options.fields import check_size, shown


def check_topdown(
    model: nn.Module, input_size, *, other_sizes=None, **options
) -> TopDownNet | None:
    """Convert ``model`` and check every top-down property.

    ``input_size`` is ``(C, H, W)``, as :func:`reverso.topdown` takes it; ``other_sizes`` lists
    further ``(H, W)`` image sides to run the net at (by default the traced size, an odd one
    and a non-square one).

    Conversion must succeed or refuse with a :class:`ReversoError` that diagnoses the model (then
    None is returned); any other exception, or a refusal that only wraps a torch error while the
    model itself runs at that size (a bug dressed as a refusal), fails. A wrong argument (a
    malformed ``input_size``, an unknown option value) is the caller's error and is raised.
    """
    input_size = check_input_size(input_size)
    other_sizes = check_sides(other_sizes) if other_sizes is not None else None
    try:
        td = topdown(model, input_size=input_size, **options)
    except OptionError:
        raise
    except ReversoError as err:
        from reverso.sweep import classify

        if classify(err, model, tuple(input_size)) == "internal error":
            raise AssertionError(f"an internal error dressed as a refusal: {err}") from err
        return None
    check_output_shape(model, td, input_size)
    check_coarse_entry(td)
    check_resolution_never_decreases(td)
    check_one_merge_per_transition(td)
    check_units_once(td)
    check_runs(td, input_size, other_sizes)
    check_every_parameter_trains(td, input_size)
    return td


def check_output_shape(model: nn.Module, td: TopDownNet, input_size) -> None:
    """The top-down net's output has the bottom-up net's shape."""
    _require_topdown(td, "check_output_shape")
    x = random_input(model, check_input_size(input_size))
    with evaluating(model), evaluating(td), torch.no_grad():
        bu_shape, td_shape = model(x).shape, td(x).shape
    assert bu_shape == td_shape, (
        f"top-down output {tuple(td_shape)} != bottom-up output {tuple(bu_shape)}"
    )


def check_coarse_entry(td: TopDownNet) -> None:
    """The first top-down layer reads the coarsest level of the bottom-up net."""
    _require_topdown(td, "check_coarse_entry")
    gm = td.features
    first = next(
        (n for n in gm.graph.nodes if n.op == "call_module" and ir.unit_of(n) is not None),
        None,
    )
    assert first is not None, "the top-down features have no layers"
    coarsest = ir.pyramid_levels(gm).get(td.report.levels)
    assert coarsest is not None, f"the pyramid has no level {td.report.levels}"
    source = ir.feature_input(first)
    assert spatial(source) == spatial(coarsest), (
        f"first layer '{first.target}' reads a {spatial(source)} map, not the coarsest level "
        f"{td.report.levels} ({spatial(coarsest)})"
    )


def check_resolution_never_decreases(td: TopDownNet) -> None:
    """Along the top-down main path the feature maps never get coarser: from one map to the next
    the level (log2 of the size ratio, rounded) never rises. A conv or pool of stride 1 may trim
    its map (an unpadded "valid" conv takes k - 1 pixels, whatever the map's size); a pad keeps
    the level."""
    _require_topdown(td, "check_resolution_never_decreases")
    chain = [
        n
        for n in _main_path(td.features)
        if n.op != "placeholder"
        and spatial(n) is not None
        and ir.role_of(n) is not ir.Role.PYRAMID
        and not ir.is_reshaped(n)  # channels-last values: their size is not in dims 2, 3
    ]
    for a, b in itertools.pairwise(chain):
        window = ir.window_of(td.features, b)
        if window is not None and window.step == 1:
            continue  # a trim at the same level
        sa, sb = spatial(a), spatial(b)
        assert level_of(sb, sa) <= 0, (
            f"resolution decreases from '{a.name}' {sa} to '{b.name}' {sb}"
        )


def check_one_merge_per_transition(td: TopDownNet) -> None:
    """Every mirrored transition has exactly one merge."""
    _require_topdown(td, "check_one_merge_per_transition")
    merges = [m for m in td.features.modules() if isinstance(m, Merge)]
    mirrored = [t for t in td.report.transitions if not t.first]
    assert len(merges) == len(mirrored), (
        f"{len(merges)} merges for {len(mirrored)} mirrored transitions"
    )


def check_units_once(td: TopDownNet) -> None:
    """Every bottom-up unit appears in the top-down net exactly once (as one contiguous piece)."""
    _require_topdown(td, "check_units_once")
    order = []
    for gm in (td.features, td.head.pre_logits, td.head.fc):
        for n in gm.graph.nodes:
            unit = ir.unit_of(n)
            if unit is not None and (not order or order[-1] != unit):
                order.append(unit)
    seen = set()
    for unit in order:
        assert unit not in seen, f"bottom-up unit {unit} appears more than once in the top-down net"
        seen.add(unit)
    vanished = {t.unit for t in td.report.transitions if t.first and t.kind == "standalone"}
    missing = {u.index for u in td.report.units} - seen - vanished
    assert not missing, f"bottom-up units {sorted(missing)} are missing from the top-down net"


def check_runs(td: TopDownNet, input_size, other_sizes=None) -> None:
    """The net runs in train and eval mode, at the traced size and at other (odd, non-square)
    sizes: ``input_size`` is ``(C, H, W)``, ``other_sizes`` a list of ``(H, W)`` sides."""
    _require_topdown(td, "check_runs")
    c, h, w = check_input_size(input_size)
    sizes = (
        check_sides(other_sizes)
        if other_sizes is not None
        else [(h, w), (h + 1, w + 3), (2 * h, w)]
    )
    with keeping_modes(td):
        for training in (True, False):
            td.train(training)
            for sh, sw in sizes:
                y = td(random_input(td, (c, sh, sw)))
                assert y.shape == (2, td.num_classes), (
                    f"output {tuple(y.shape)} for input {sh}x{sw}"
                )
                assert torch.isfinite(y).all(), (
                    f"non-finite output for input {sh}x{sw} (train={training})"
                )


def check_sides(other_sizes) -> list[tuple[int, int]]:
    """``other_sizes`` as a list of ``(H, W)`` image sides (the channels are ``input_size``'s);
    an :class:`OptionError` naming the entry for any other form, a ``(C, H, W)`` size included."""
    example = "for example other_sizes=[(29, 41), (64, 48)]"
    if isinstance(other_sizes, (str, bytes)) or not isinstance(other_sizes, (list, tuple)):
        raise OptionError(
            f"other_sizes must list (H, W) image sides, got {shown(other_sizes)}; {example}"
        )
    sides = []
    for entry in other_sizes:
        try:
            sides.append(check_size((1, *entry), "other_sizes")[1:])
        except (OptionError, TypeError):
            raise OptionError(
                f"other_sizes entries are (H, W) image sides, positive ints (the channels are "
                f"input_size's), got {shown(entry)}; {example}"
            ) from None
    return sides


def check_every_parameter_trains(td: TopDownNet, input_size) -> None:
    """A loss on the output gives every parameter a gradient, as timm checks its models: no branch
    is computed and thrown away (DistributedDataParallel needs ``find_unused_parameters``
    otherwise). The net's mode, running statistics and gradients are left as they were."""
    from reverso.nn.checkpoint import kept_running_stats

    _require_topdown(td, "check_every_parameter_trains")
    x = random_input(td, check_input_size(input_size))
    saved = {name: p.grad for name, p in td.named_parameters()}
    try:
        with keeping_modes(td), kept_running_stats(td), torch.enable_grad():
            td.train()
            for p in td.parameters():
                p.grad = None
            td(x).float().mean().backward()
            missing = [n for n, p in td.named_parameters() if p.requires_grad and p.grad is None]
    finally:
        for name, p in td.named_parameters():
            p.grad = saved[name]
    assert not missing, f"parameters without a gradient: {', '.join(missing[:5])}"


def _require_topdown(td, check: str) -> None:
    if not isinstance(td, TopDownNet):
        raise OptionError(
            f"{check} checks a network that reverso.topdown returned, got {type(td).__name__}: "
            "convert the model first, or run check_topdown(model, input_size)"
        )


def _main_path(gm: fx.GraphModule) -> list[fx.Node]:
    G = ir.dataflow_graph(gm)
    source = next(n for n in gm.graph.nodes if n.op == "placeholder")
    sink = next(n for n in gm.graph.nodes if n.op == "output")
    return ir.main_chain(G, source, sink)


def check_erf_within_receptive_field(
    model: nn.Module, input_size, *, node: str | None = None, samples: int = 2
) -> tuple[tuple[int, int], float]:
    """No input gradient of a central unit falls outside its theoretical receptive field.

    Compares the empirical support of the gradient (:func:`reverso.erf`) of ``node`` (default:
    the last feature map) with :func:`reverso.receptive_fields` under the exact rules. Works on
    bottom-up models and on :class:`~reverso.TopDownNet`. Returns (support, receptive field).
    Norms whose statistics span the map (GroupNorm, InstanceNorm) spread gradients to every pixel,
    beyond any receptive field: the message names one when the model has it.
    """
    from reverso.study.erf import erf
    from reverso.study.receptive import receptive_fields

    measured = erf(model, input_size, node=node, samples=samples)
    rf = receptive_fields(model, input_size, rule="exact")[measured.node]
    assert max(measured.support) <= rf.max, (
        f"the gradient of '{measured.node}' spans {measured.support[0]}x{measured.support[1]} "
        f"input pixels, more than its theoretical receptive field of {rf.max:g}"
        + _map_statistics_hint(model)
    )
    return measured.support, rf.max


def _map_statistics_hint(model: nn.Module) -> str:
    """Names a norm whose statistics span the whole map: its gradients reach every pixel, so no
    receptive field (the geometry of convs and pools) bounds them."""
    spatial_norms = (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
    found = next(((n, m) for n, m in model.named_modules() if isinstance(m, spatial_norms)), None)
    if found is None:
        return ""
    name, norm = found
    return (
        f"; note that '{name}' ({type(norm).__name__}) normalises over the "
        "whole map, which spreads gradients to every pixel: check a model with per-pixel norms"
    )


def check_topdown_reaches_receptive_field(
    bu: nn.Module, td: TopDownNet, input_size
) -> tuple[float, float]:
    """The top-down paper's claim (section 3.2): already at its first conv the top-down net has
    the receptive field that the bottom-up net reaches only at its last conv.

    When it holds: the TD's first conv reads the coarsest pyramid level, so it sees the blur of
    that level (6 sigma px) plus its own kernel at the coarsest jump, ``(k - 1) 2^L`` px; the BU's
    last conv sees what all its convs add up, ``1 + sum (k_i - 1) jump_i``. The claim holds for
    nets with one conv per resolution, like the paper's Figure-2 net (20 >= 18 px), and fails for
    nets with several convs per resolution, whose receptive field keeps growing at the coarsest
    jump (the paper's LeNetFC: 20 < 24 px; timm's resnet18 at 224 px: 288 < 435 px).

    Returns (receptive field of the TD's first conv, of the BU's last conv), paper rules; raises
    AssertionError with both numbers when the claim does not hold.
    """
    from reverso.study.receptive import receptive_fields

    _require_topdown(td, "check_topdown_reaches_receptive_field")
    bu_convs = receptive_fields(bu, input_size).convs()
    td_convs = receptive_fields(td, input_size).convs()
    assert bu_convs and td_convs, "both networks need at least one conv"
    (bu_name, bu_last), (td_name, td_first) = bu_convs[-1], td_convs[0]
    assert td_first.max >= bu_last.max, (
        f"the top-down net's first conv '{td_name}' sees {td_first.max:g} px, less than the "
        f"{bu_last.max:g} px the bottom-up net's last conv '{bu_name}' sees"
    )
    return td_first.max, bu_last.max
