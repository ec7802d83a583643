"""What every PNG plot of the CLI shares: matplotlib (optional, imported only when a plot is drawn) on its
non-interactive backend, and the atomic write of the figure."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

from ...io import atomic_write_bytes


def plot_available() -> bool:
    """Whether matplotlib is installed (``pip install 'moesim[plot]'``)."""
    return importlib.util.find_spec("matplotlib") is not None


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path, dpi: int = 110) -> None:
    """Render ``fig`` as a PNG, close it, and write the file atomically (no half-written file on failure)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def parity_axes(ax: Any, lo: float, hi: float, xlabel: str, ylabel: str) -> None:
    """Log-log axes over ``[lo, hi]`` on both sides, for a predicted-against-reference plot."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
