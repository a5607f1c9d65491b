"""matplotlib for robustit's figures: pyplot on the Agg backend (no display needed), imported
on first use so that nothing else pays for it, and figures as PNG bytes."""
from __future__ import annotations

import io
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(figure: Figure, dpi: int = DPI, metadata: dict[str, Any] | None = None) -> bytes:
    """`figure` as PNG bytes at `dpi` (with the PNG `metadata` given, if any); the figure is closed."""
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=dpi, **({"metadata": metadata} if metadata is not None else {}))
    pyplot().close(figure)
    return png.getvalue()
