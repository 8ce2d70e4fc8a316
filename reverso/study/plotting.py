"""Figures for the study tools, fit for a paper: a serif-free 8-pt house style, labelled axes with
units, colour bars, 300-dpi PNG or vector PDF/SVG chosen by the file's suffix.

Figures are drawn without pyplot: a user's backend and open figures are left alone (nothing here
calls ``matplotlib.use``), and the style applies only inside functions decorated with
:func:`styled`.
"""

from __future__ import annotations

import functools
from pathlib import Path

from reverso.errors import OptionError

#: one column of a two-column paper, and the full text width (inches)
COLUMN, TEXT_WIDTH = 3.4, 7.0
#: the suffixes :func:`save_figure` writes, and the dots per inch of raster ones
FORMATS = {".png": 300, ".pdf": None, ".svg": None}

STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.bbox": "tight",  # long titles widen the figure rather than being cut
    "savefig.pad_inches": 0.03,
    "pdf.fonttype": 42,  # editable text in vector files
    "svg.fonttype": "none",
}


def style():
    """A context in which matplotlib uses the house style."""
    import matplotlib

    return matplotlib.rc_context(STYLE)


def styled(draw):
    """Decorate a function that draws a figure: all of it runs in the house style (text takes
    its size from the style in force when it is created)."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with style():
            return draw(*args, **kwargs)

    return wrapper


def new_figure(rows: int = 1, cols: int = 1, *, size: tuple[float, float], **subplot_kw):
    """(figure, axes as a rows x cols array) of a free-standing matplotlib figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, **subplot_kw)


def check_figure_path(path: str | Path) -> Path:
    """``path`` if its suffix is one :func:`save_figure` writes; an OptionError otherwise."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise OptionError(
            f"cannot write a figure to {path}: use a .png (raster, 300 dpi), .pdf or .svg "
            "(vector) file name"
        )
    return path


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (folders created) as PNG at 300 dpi, or as vector PDF/SVG."""
    path = check_figure_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FORMATS[path.suffix.lower()] or "figure")
    return path


def wrapped(lines: list[str], width_inches: float) -> str:
    """Title lines wrapped to a figure ``width_inches`` wide (at the title's 9-pt type)."""
    import textwrap

    chars = max(30, int(width_inches * 15))
    return "\n".join(textwrap.fill(line, chars) for line in lines)


def percent_axis(axis) -> None:
    """Tick labels of an axis holding fractions, written as percentages."""
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def integer_axis(axis) -> None:
    """Only whole numbers as ticks (epochs, pixels)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))
