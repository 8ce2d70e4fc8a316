"""PNG figures for the study tools, drawn without pyplot: a user's backend and open figures are
left alone (nothing here calls ``matplotlib.use``)."""

from __future__ import annotations

from pathlib import Path


def new_figure(rows: int = 1, cols: int = 1, *, size: tuple[float, float]):
    """(figure, axes as a rows x cols array) of a free-standing matplotlib figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    return fig, fig.subplots(rows, cols, squeeze=False)


def save_figure(fig, path: str | Path, *, dpi: int = 110) -> Path:
    """Lay out ``fig`` and write it as a PNG to ``path`` (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path
