"""Cross-fitted margins: the pairs a learned direction was trained on, each scored by the
fold direction that never saw it (issue 13).

A direction learned from labels carries its k fold directions and which pair was in which
fold (by content hash, :func:`legend_core.util.pair_hash`) in its ``labels``, so annotating
its own training pairs never reports what it memorised (:func:`direction_margins`, used by
``pipeline.annotate_pairs`` and ``workflows.annotate``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from legend_core.method.margins import margins as project
from legend_core.util import pair_hash

#: Hex characters of a pair's key kept in a direction's provenance (64 bits: no collision
#: to expect below billions of pairs, and a quarter of the full key's size).
KEY_CHARS = 16


def crossfit_margins(
    chosen: np.ndarray,
    rejected: np.ndarray,
    vector: np.ndarray,
    fold_vectors: np.ndarray,
    pair_folds: Sequence[int | None],
) -> np.ndarray:
    """Margins where each pair the direction was trained on is scored by the fold direction
    that never saw it; other pairs by the direction itself.

    Args:
        chosen: (n, d) embeddings of the chosen responses (as imported).
        rejected: (n, d) embeddings of the rejected responses.
        vector: (d,) the direction fitted on every labelled pair.
        fold_vectors: (k, d) the fold directions.
        pair_folds: Per pair its fold in the training labels, or None if it was not one.
    """
    folds = list(pair_folds)
    if len(folds) != len(chosen):
        raise ValueError(f"{len(folds)} fold entries for {len(chosen)} pairs")
    fv = np.asarray(fold_vectors, dtype=np.float32)
    bad = {f for f in folds if f is not None and not 0 <= f < len(fv)}
    if bad:  # a pair of the training labels must never fall back to the final vector
        raise ValueError(f"folds {sorted(bad)} have no fold direction ({len(fv)} given)")
    out = project(chosen, rejected, vector)
    for j in range(len(fv)):
        rows = np.array([f == j for f in folds], dtype=bool)
        if rows.any():
            out[rows] = project(chosen[rows], rejected[rows], fv[j])
    return out


def fold_lookup(provenance: Mapping[str, Any], keys: Sequence[str]) -> list[int | None]:
    """Per pair key, its fold in a learned direction's training labels (None if absent)."""
    table = provenance.get("fold_of") or {}
    return [None if (f := table.get(k[:KEY_CHARS])) is None else int(f) for k in keys]


def pair_folds(labels: Mapping[str, Any], texts: Sequence[Any]) -> list[int | None]:
    """Per pair (anything with ``prompt``, ``chosen``, ``rejected``), its fold in a learned
    direction's training labels; all None for a direction not learned from labels."""
    if not labels.get("fold_of"):
        return [None] * len(texts)
    return fold_lookup(labels, [pair_hash(p.prompt, p.chosen, p.rejected) for p in texts])


def fold_directions(labels: Mapping[str, Any]) -> np.ndarray:
    """(k, d) float32 fold directions of a learned direction (0 rows if it has none)."""
    rows = labels.get("fold_vectors") or []
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)


def direction_margins(
    texts: Sequence[Any],
    chosen: np.ndarray,
    rejected: np.ndarray,
    vector: np.ndarray,
    labels: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, int]:
    """Margins of pairs on a direction, cross-fitted for the pairs it was learned from.

    Returns:
        The margins, and how many pairs were cross-fitted (0 for a contrastive direction or
        pairs it never saw).
    """
    folds = pair_folds(labels or {}, texts)
    n_crossfit = sum(f is not None for f in folds)
    if n_crossfit == 0:
        return project(chosen, rejected, vector), 0
    fold_vectors = fold_directions(labels or {})
    if len(fold_vectors) == 0:
        raise ValueError("the direction lists its training pairs but not its fold directions")
    return crossfit_margins(chosen, rejected, vector, fold_vectors, folds), n_crossfit


def crossfit_note(n_crossfit: int, k: int) -> str:
    """How the command line and the pages say that margins were cross-fitted."""
    return (
        f"{n_crossfit} pairs were among the labels this direction learned from: their "
        f"margins are cross-fitted ({k} folds: each from a direction that never saw the pair)"
    )
