"""The histogram of a detector's suspicion scores (`robustit scan`): one colour per class
(clean, poisoned) where the attack's manifest is known, one colour otherwise, and a dashed
line at the lowest flagged score."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from robustit.plotting import png_bytes, pyplot


def score_histogram(scores: Sequence[float], flagged: Sequence[bool], poisoned: Sequence[bool] | None, title: str) -> bytes:
    """The histogram as PNG bytes; `poisoned` (None: unknown) colours the poisoned samples apart."""
    plt = pyplot()
    scores = np.asarray(scores, dtype=float)
    edges = np.histogram_bin_edges(scores, bins="auto")
    fig, axis = plt.subplots(figsize=(7, 3.6))
    if poisoned is None:
        axis.hist(scores, edges, color="tab:blue", label="samples")
    else:
        mask = np.asarray(poisoned, dtype=bool)
        axis.hist([scores[~mask], scores[mask]], edges, stacked=True, color=["tab:blue", "tab:red"],
                  label=["clean", "poisoned (manifest)"])
    if any(flagged):
        axis.axvline(scores[np.asarray(flagged, dtype=bool)].min(), color="black", linestyle="--", label="lowest flagged score")
    axis.set_xlabel("suspicion score (higher = more suspicious)")
    axis.set_ylabel("samples")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)
