"""Settings read from the environment.

``REVERSO_SMOKE=1`` runs every long study call (training, attacks, effective receptive fields)
with tiny settings: one epoch and one run, a few attacked images, two ERF samples. A script or a
documentation snippet that takes minutes as written is then checked in seconds (the docs' tests
run every snippet this way); the numbers it prints mean nothing, and a warning says so.
"""

from __future__ import annotations

import os
import warnings

VARIABLE = "REVERSO_SMOKE"


def smoke() -> bool:
    """Whether ``REVERSO_SMOKE`` asks for tiny settings: ``1``, ``true``, ``yes`` or ``on``."""
    return os.environ.get(VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def smoke_cap(what: str, **settings: tuple[int, int]) -> dict[str, int]:
    """Each ``name=(value, tiny)`` as ``min(value, tiny)`` under ``REVERSO_SMOKE``, else as is.

    >>> smoke_cap("train", epochs=(30, 1), repeats=(4, 1))  # without REVERSO_SMOKE
    {'epochs': 30, 'repeats': 4}
    """
    if not smoke():
        return {name: value for name, (value, _) in settings.items()}
    capped = {name: min(value, tiny) for name, (value, tiny) in settings.items()}
    changed = {name: v for name, v in capped.items() if v != settings[name][0]}
    if changed:
        warnings.warn(
            f"{VARIABLE} is set: {what} runs with "
            + ", ".join(f"{name}={v}" for name, v in changed.items())
            + "; its results are only a smoke test",
            stacklevel=3,
        )
    return capped
