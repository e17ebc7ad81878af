"""Figures as PNG bytes, and PNGs as markdown metadata that the Dagster UI shows inline.

Every stage that plots goes through here, so that matplotlib runs headless (Agg: no display on a server,
no GUI toolkit imported) and a figure is always closed after it is rendered (pyplot keeps every open
figure alive, which leaks memory in a long-lived code server).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path


def new_figure(width: float = 7, height: float = 3.2):
    """(figure, axes) on the headless backend; pass the figure to ``png_bytes`` when drawn."""
    import matplotlib  # imported on first plot: the code location loads without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=100)


def png_bytes(figure) -> bytes:
    """Render and close ``figure``."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def write_png(path: Path, png: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        temp.write_bytes(png)
    return path


def png_markdown(png: bytes, alt: str = "plot") -> str:
    """Markdown that embeds the PNG itself: the UI renders it without reaching the lake's files."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def recall_curve_png(curves: dict[str, np.ndarray], k: int) -> bytes:
    """recall@n for n = 1..k, one line per split (``curves[split][n - 1]``), on a log axis."""
    figure, axes = new_figure()
    for split, recall in curves.items():
        axes.plot(np.arange(1, len(recall) + 1), recall, marker="." if len(recall) <= 20 else None, label=split)
    axes.set_xscale("log")
    axes.set_xlim(1, max(k, 2))
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("K (candidates kept per mention)")
    axes.set_ylabel("recall@K (gold in the top K)")
    axes.grid(True, alpha=0.3)
    axes.legend(frameon=False, title="split")
    return png_bytes(figure)
