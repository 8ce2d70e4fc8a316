"""Hypothesis strategies that build random bottom-up CNNs.

A strategy for a whole net is composed from strategies for units, groups and transitions, so
that a failing example shrinks to a minimal model and prints as a readable spec::

    from hypothesis import given
    from reverso.testing import bottom_up_cnns, check_topdown

    @given(bottom_up_cnns())
    def test_my_pass_keeps_shapes(case):
        check_topdown(case.build(), case.input_size)
"""

from __future__ import annotations

from hypothesis import strategies as st

from reverso.testing.cnns import CNNSpec, TransitionSpec, UnitSpec


def units(*, widths=None, kernels=None, residual: bool = True, modern: bool = True):
    """Plain (conv-norm-act), residual, layer-scale residual, partial-conv, gated,
    selective-kernel, channel-shuffle, unpadded ("valid") and constant-channel-view units with
    random widths (2-24) and kernels (1, 3, 5)."""
    modern_kinds = ["layer_scale", "partial", "gated", "selective", "shuffle", "unpadded"]
    modern_kinds.append("channel_view")
    kinds = ["plain", "residual", *(modern_kinds if modern else [])]
    kinds = st.sampled_from(kinds) if residual else st.just("plain")
    widths = widths if widths is not None else st.integers(2, 24)
    kernels = kernels if kernels is not None else st.sampled_from([1, 3, 5])
    return st.builds(UnitSpec, kind=kinds, width=widths, kernel=kernels)


def groups(*, max_units: int = 3, residual: bool = True):
    """A hypothesis strategy for one group: 1 to ``max_units`` units (residual ones too unless
    ``residual=False``)."""
    return st.lists(units(residual=residual), min_size=1, max_size=max_units).map(tuple)


def transitions(*, modern: bool = True):
    """A hypothesis strategy for one downsampling between groups: max/avg pooling or a strided
    conv, and with ``modern`` blur pools, space-to-depth, strided slices, resizes and max-pools
    returning indices."""
    modern_kinds = ["blur", "blur_groups", "timm_blur", "unshuffle", "slices", "resize"]
    modern_kinds.append("max_indices")
    kinds = ["max", "avg", "conv", *(modern_kinds if modern else [])]
    return st.builds(TransitionSpec, kind=st.sampled_from(kinds))


@st.composite
def bottom_up_cnns(
    draw,
    *,
    max_transitions: int = 4,
    max_units: int = 3,
    residual: bool = True,
    heads=("gap_linear", "conv1x1"),
) -> CNNSpec:
    """Random bottom-up CNNs: 1-4 transitions (max/avg pooling, strided convs, hand-written blur
    pools with a traced or a constant channel count as groups, timm's BlurPool2d,
    pixel_unshuffle, strided-slice patch merging, a bilinear resize by 0.5, a max-pool returning
    indices), plain, residual, layer-scale, partial-conv, gated (pooled and interpolated back),
    selective-kernel, channel-shuffle, unpadded and constant-channel-view units with kernels
    1/3/5 and random widths, a stem of one or two strided convs, with/without BatchNorm,
    GroupNorm, LayerNorm2d or InstanceNorm, ReLU/SiLU, and a classifier drawn from ``heads``
    (GAP+Linear, a 1x1 conv; ``"sequence"``, an LSTM head that must be refused, when asked
    for); the input survives the downsampling depth."""
    n_trans = draw(st.integers(1, max_transitions))
    gs = tuple(draw(groups(max_units=max_units, residual=residual)) for _ in range(n_trans + 1))
    ts = tuple(draw(transitions()) for _ in range(n_trans))
    in_chans = draw(st.sampled_from([1, 3]))
    stem_stride = draw(st.booleans())
    double_stem = stem_stride and draw(st.booleans())
    factor = 2 ** (n_trans + stem_stride + double_stem)
    # unpadded convs trim k - 1 pixels at their level, which is deeper in the top-down net for
    # the first groups: the input grows by what they take at the deeper of the two levels
    # (smaller inputs are refused with the smallest size that converts)
    stem = stem_stride + double_stem
    trim = sum(
        (u.kernel - 1) * 2 ** (stem + max(g, n_trans - g) + 1)
        for g, group in enumerate(gs)
        for u in group
        if u.kind == "unpadded"
    )
    h = factor * draw(st.integers(2, 4)) + draw(st.integers(0, 1)) + trim
    w = factor * draw(st.integers(2, 4)) + draw(st.integers(0, 1)) + trim
    return CNNSpec(
        in_chans=in_chans,
        groups=gs,
        transitions=ts,
        stem_stride=stem_stride,
        norm=draw(st.booleans()),
        act=draw(st.sampled_from(["relu", "silu"])),
        head=draw(st.sampled_from(list(heads))),
        num_classes=draw(st.integers(2, 10)),
        input_size=(in_chans, h, w),
        double_stem=double_stem,
        norm_kind=draw(st.sampled_from(["batch", "group", "layernorm2d", "instance"])),
    )
