"""The Direction lab's tables: the contrastive set as an editable table, quality per layer,
held-out projections, projections against length, the contrastive map, and the cosine
similarity between directions. No Streamlit here; every function is testable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from legend_core.app import maps
from legend_core.app.views import snippet
from legend_core.types import ContrastItem

if TYPE_CHECKING:
    from legend_core.method.directions import Direction
    from legend_core.method.pipeline import BuildResult

CONTRAST_COLUMNS = ["instruction", "harmful", "harmless"]


def contrast_frame(items: Sequence[ContrastItem]) -> pd.DataFrame:
    """A contrastive set as an editable table (instruction, harmful, harmless)."""
    return pd.DataFrame(
        [(i.instruction, i.harmful, i.harmless) for i in items], columns=CONTRAST_COLUMNS
    )


def contrast_items(frame: pd.DataFrame) -> list[ContrastItem]:
    """The edited table back to items: blank rows are dropped, half-filled rows refused.

    Raises:
        ValueError: A row has some but not all of its three texts (the message names it).
    """
    missing = [c for c in CONTRAST_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"the table has no column {missing[0]!r}")
    items = []
    for number, row in enumerate(frame[CONTRAST_COLUMNS].itertuples(index=False), start=1):
        texts = [
            "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in row
        ]
        filled = [bool(t.strip()) for t in texts]
        if not any(filled):
            continue
        if not all(filled):
            empty = CONTRAST_COLUMNS[filled.index(False)]
            raise ValueError(f"row {number}: {empty} is empty (fill it or delete the row)")
        items.append(ContrastItem(*texts))
    return items


def layer_frame(direction: Direction) -> pd.DataFrame:
    """Held-out quality per layer, one row per layer, with ``chosen`` marking the direction's;
    ``cv_auroc`` and ``cv_separation`` are what the layer was chosen on (cross-validated
    inside the fitting split, so the held-out columns stay honest)."""
    rows = [vars(q) for q in direction.quality]
    frame = pd.DataFrame(
        rows,
        columns=[
            "layer",
            "accuracy",
            "auroc",
            "separation",
            "stability",
            "length_r2",
            "paired_accuracy",
            "cv_auroc",
            "cv_separation",
        ],
    )
    frame["chosen"] = frame["layer"] == direction.layer
    return frame


def projection_frame(result: BuildResult) -> pd.DataFrame:
    """Held-out projections with their class (``harmless`` / ``harmful``)."""
    harmless, harmful = result.held_out_projections()
    return pd.DataFrame(
        {
            "projection": np.concatenate([harmless, harmful]).astype(np.float64),
            "class": ["harmless"] * len(harmless) + ["harmful"] * len(harmful),
        }
    )


def length_frame(result: BuildResult) -> pd.DataFrame:
    """Every contrastive response: projection, response tokens, class and split."""
    v = result.direction.vector
    n = len(result.harmless)
    split = np.array(["train"] * n, dtype=object)
    split[result.test] = "held out"
    return pd.DataFrame(
        {
            "projection": np.concatenate([result.harmless @ v, result.harmful @ v]),
            "tokens": np.concatenate([result.harmless_tokens, result.harmful_tokens]),
            "class": ["harmless"] * n + ["harmful"] * n,
            "split": np.concatenate([split, split]),
        }
    )


def contrast_map_frame(
    result: BuildResult, items: Sequence[ContrastItem] | None = None, seed: int = 0
) -> tuple[pd.DataFrame, str]:
    """A 2-D map of the contrastive embeddings (harmless and harmful), with a note."""
    x = np.concatenate([result.harmless, result.harmful])
    layout = maps.embed_2d(x, "umap", max_points=len(x), seed=seed, what="responses")
    n = len(result.harmless)
    kind = np.array(["harmless"] * n + ["harmful"] * n)
    texts = None
    if items is not None:
        texts = [i.harmless for i in items] + [i.harmful for i in items]
    frame = pd.DataFrame(
        {
            "x": layout.coords[:, 0],
            "y": layout.coords[:, 1],
            "class": kind[layout.index],
            "projection": (x @ result.direction.vector)[layout.index].astype(np.float64),
            "text": [snippet(texts[i]) for i in layout.index] if texts else "",
        }
    )
    return frame, layout.note


def direction_similarity(directions: Sequence[tuple[str, Direction]]) -> pd.DataFrame:
    """Cosine similarity between directions, NaN between different models or widths.

    Args:
        directions: (label, direction) pairs; labels become the index and columns.
    """
    labels = [label for label, _ in directions]
    n = len(directions)
    out = np.full((n, n), np.nan)
    for i, (_, a) in enumerate(directions):
        for j, (_, b) in enumerate(directions):
            same = a.model == b.model and a.vector.shape == b.vector.shape
            if a.model_fingerprint and b.model_fingerprint:
                same = same and a.model_fingerprint == b.model_fingerprint
            if same:
                va, vb = a.vector.astype(np.float64), b.vector.astype(np.float64)
                denom = np.linalg.norm(va) * np.linalg.norm(vb)
                out[i, j] = float(va @ vb / denom) if denom else np.nan
    return pd.DataFrame(out, index=labels, columns=labels)
