"""The thesis's structured layers swapped into a model: frame convs, dynamic steerable convs and
blocks (docs/methods/structured.md), hierarchical attribute convs (docs/methods/hcnn.md).

Each function returns a converted copy that keeps the model's class where the rewrite is a module
swap (frames, steerable convs), records a ``reverso_recipe`` (so :func:`reverso.save` and
:func:`reverso.load` work) and, given ``input_size``, checks the output shape is kept.
"""

from __future__ import annotations

from torch import nn

from reverso.convert.steps import graph_rewrite, module_swap
from reverso.options import FramesOptions, SteerableOptions


def frames(
    model: nn.Module | str, input_size=None, *, frame: str = "gauss9", sigma: float = 1.0
) -> nn.Module:
    """A copy of ``model`` with every spatial conv reparametrised on a fixed frame
    (:class:`~reverso.nn.FrameConv2d`, the ``frames`` pass): ``"gauss9"`` (Gaussian derivatives),
    ``"framelet"`` (B-spline framelets, 3x3 kernels), ``"naive"`` (monomials), ``"alternate"``
    (Gaussian and framelet frames from conv to conv) or ``"pixel"``.

    The coefficients are projected from the conv's kernels; every named frame is complete, so the
    copy computes what the model does (to rounding) and trains with the frame's geometry. After
    training, :func:`collapse_frames` (or each layer's ``collapse()``) gives plain convs back. The
    copy's ``frames_report`` lists each layer's frame and projection error, and the convs kept
    as they were (classes that override ``Conv2d.forward``) with the reason.
    """
    from reverso.passes.frames import swap_convs_for_frames

    settings = FramesOptions.from_dict({"frame": frame, "sigma": sigma})

    def swap(m: nn.Module) -> None:
        m.frames_report = swap_convs_for_frames(m, **settings.to_json())

    return module_swap(model, input_size, settings, swap)


def steerable(
    model: nn.Module | str,
    input_size=None,
    *,
    unit: str = "conv",
    order: int = 2,
    sigma: float = 1.0,
    pose: str = "per_in",
    mode: str = "angle",
    every: int = 2,
) -> nn.Module:
    """``model`` with dynamic steerable convs (``unit="conv"``) or blocks (``unit="block"``),
    every ``every``-th candidate in graph order (the ``steerable`` pass;
    docs/methods/structured.md, section 7).

    ``unit="conv"``: a copy of the same class whose converted convs start from the projection of
    their kernels on an order-``order`` Gaussian-derivative frame (the pose networks start at zero,
    so the copy computes the projected function; ``steerable_report`` gives each layer's error and
    the convs kept with the reason). ``unit="block"``: a GraphModule (a TopDownNet stays one) whose
    converted residual units are two-factor steerable blocks, to be trained. ``pose``: one pose
    per input channel (``"per_in"``) or per pixel (``"shared"``); ``mode``: ``"angle"`` (one
    angle, trig gates) or ``"free"`` (the gates themselves).
    """
    from reverso.passes.steerable import Steerable, swap_convs_for_steerable

    settings = SteerableOptions.from_dict(
        {"unit": unit, "order": order, "sigma": sigma, "pose": pose, "mode": mode, "every": every}
    )
    if unit == "block":
        return graph_rewrite(model, input_size, Steerable(**settings.to_json()))

    def swap(m: nn.Module) -> None:
        kwargs = settings.to_json()
        del kwargs["unit"]
        m.steerable_report = swap_convs_for_steerable(m, **kwargs)

    return module_swap(model, input_size, settings, swap)


def hierarchical(
    model: nn.Module | str,
    input_size=None,
    *,
    K: int = 16,
    Q: int = 32,
    variant: str = "plus",
    head: str = "keep",
    attr_kernel: tuple[int, int] = (7, 11),
) -> nn.Module:
    """A plain CNN rebuilt as a hierarchical attribute CNN (the ``hierarchical`` pass;
    docs/methods/hcnn.md, section 9): every conv of the body an HCNN layer of width
    ``(K / 2) K``, fresh weights, pools folded into the strides; ``head="keep"`` keeps the
    model's head (its first layer rebuilt for the new width), ``"readout"`` ends with a
    class-sized layer and the readout. ``variant``: ``"plus"`` (ELU between the spatial and the
    attribute filters) or ``"linear"``. Residual models are refused. A GraphModule comes back (a
    TopDownNet stays one).
    """
    from reverso.passes.hierarchical import Hierarchical

    step = Hierarchical(K=K, Q=Q, variant=variant, head=head, attr_kernel=attr_kernel)
    return graph_rewrite(model, input_size, step)


def collapse_frames(model: nn.Module) -> nn.Module:
    """``model`` with every :class:`~reverso.nn.FrameConv2d` collapsed into a plain conv, in place
    (same outputs, a plain conv's cost at inference). A ``FrameConv2d`` passed on its own comes
    back as its plain conv (a new module: there is no parent to replace it in)."""
    from reverso.nn.frames import FrameConv2d

    if isinstance(model, FrameConv2d):
        return model.collapse()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FrameConv2d):
                setattr(parent, name, child.collapse())
    return model
