"""Direction transfer: how a direction separates contrastive sets it was not built on."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from legend_core.method.directions import auroc, cohens_d
from legend_core.method.label_agreement import agreement_scores


@dataclass
class TransferQuality:
    """How one direction separates one contrastive set it may not have been built on.

    Attributes:
        n: Items of the set.
        auroc: Probability that a harmless response projects above a harmful one.
        paired_accuracy: Share of instructions whose harmless response projects above its
            own harmful response (the margin's sign on a contrastive pair).
        separation: Cohen's d of the projections (harmless minus harmful).
    """

    n: int
    auroc: float
    paired_accuracy: float
    separation: float


def transfer_quality(
    vector: np.ndarray, harmless: np.ndarray, harmful: np.ndarray
) -> TransferQuality:
    """Judge ``vector`` on a contrastive set given as (n, d) harmless and harmful embeddings."""
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    if harmless.shape != harmful.shape or harmless.ndim != 2 or harmless.shape[1] != len(v):
        raise ValueError(
            f"shapes do not match: harmless {harmless.shape}, harmful {harmful.shape}, "
            f"direction {v.shape}"
        )
    pos, neg = harmless @ v, harmful @ v
    return TransferQuality(
        n=len(pos),
        auroc=auroc(pos, neg),
        paired_accuracy=float(agreement_scores(pos - neg).mean()) if len(pos) else float("nan"),
        separation=cohens_d(pos, neg),
    )


def transfer_matrix(
    vectors: dict[str, np.ndarray], sets: dict[str, tuple[np.ndarray, np.ndarray]]
) -> list[dict[str, Any]]:
    """Every direction judged on every set: rows of (direction, set, n, auroc, ...)."""
    rows = []
    for dname, v in vectors.items():
        for sname, (harmless, harmful) in sets.items():
            q = transfer_quality(v, harmless, harmful)
            rows.append({"direction": dname, "set": sname, **asdict(q)})
    return rows
