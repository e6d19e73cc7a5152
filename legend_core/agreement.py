"""Agreement between annotators who reviewed the same pairs.

Each annotator's *own* verdict on a pair is read from their reviews alone: flipped when
they flipped it an odd number of times, flagged when their latest flag/unflag is a flag,
and their latest override value. Pairs are compared between two annotators only where
both reviewed them.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd


@dataclass
class PairwiseAgreement:
    """How two annotators agree on the pairs both reviewed.

    Attributes:
        annotator_a: First annotator (alphabetical order).
        annotator_b: Second annotator.
        common_pairs: Pairs both reviewed.
        flip_agreement: Share of common pairs with the same flip verdict (None if none).
        flag_agreement: Share of common pairs with the same flag verdict.
        flip_kappa: Cohen's kappa of the flip verdicts (None when undefined).
        flag_kappa: Cohen's kappa of the flag verdicts.
        common_overrides: Pairs both gave a margin override.
        override_correlation: Pearson correlation of those overrides (None below 3 pairs).
        override_mad: Mean absolute difference of those overrides.
    """

    annotator_a: str
    annotator_b: str
    common_pairs: int
    flip_agreement: float | None
    flag_agreement: float | None
    flip_kappa: float | None
    flag_kappa: float | None
    common_overrides: int
    override_correlation: float | None
    override_mad: float | None


def verdicts(reviews: pd.DataFrame) -> pd.DataFrame:
    """One row per (annotator, pair): flipped, flagged, override (NaN if none).

    Args:
        reviews: Reviews oldest first with columns pair_id, annotator, action, value.
    """
    rows = []
    for (annotator, pair_id), group in reviews.groupby(["annotator", "pair_id"], sort=True):
        actions = group["action"].tolist()
        flags = [a for a in actions if a in ("flag", "unflag")]
        overrides = group.loc[group["action"] == "override", "value"]
        rows.append(
            {
                "annotator": annotator,
                "pair_id": pair_id,
                "flipped": actions.count("flip") % 2 == 1,
                "flagged": bool(flags) and flags[-1] == "flag",
                "override": float(overrides.iloc[-1]) if len(overrides) else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=["annotator", "pair_id", "flipped", "flagged", "override"])


def cohens_kappa(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cohen's kappa of two boolean label vectors; None when chance agreement is total."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if len(a) == 0:
        return None
    observed = float((a == b).mean())
    p_a, p_b = a.mean(), b.mean()
    expected = float(p_a * p_b + (1 - p_a) * (1 - p_b))
    if expected >= 1.0:
        return None
    return (observed - expected) / (1 - expected)


def pairwise_agreement(reviews: pd.DataFrame) -> list[PairwiseAgreement]:
    """Agreement for every pair of annotators with at least one pair in common."""
    table = verdicts(reviews)
    results = []
    for a, b in combinations(sorted(table["annotator"].unique()), 2):
        both = table[table["annotator"] == a].merge(
            table[table["annotator"] == b], on="pair_id", suffixes=("_a", "_b")
        )
        if both.empty:
            continue
        overrides = both.dropna(subset=["override_a", "override_b"])
        x, y = overrides["override_a"].to_numpy(), overrides["override_b"].to_numpy()
        correlation = None
        if len(x) >= 3 and x.std() > 0 and y.std() > 0:
            correlation = float(np.corrcoef(x, y)[0, 1])
        results.append(
            PairwiseAgreement(
                annotator_a=a,
                annotator_b=b,
                common_pairs=len(both),
                flip_agreement=float((both["flipped_a"] == both["flipped_b"]).mean()),
                flag_agreement=float((both["flagged_a"] == both["flagged_b"]).mean()),
                flip_kappa=cohens_kappa(both["flipped_a"], both["flipped_b"]),
                flag_kappa=cohens_kappa(both["flagged_a"], both["flagged_b"]),
                common_overrides=len(x),
                override_correlation=correlation,
                override_mad=float(np.abs(x - y).mean()) if len(x) else None,
            )
        )
    return results


def agreement_frame(results: list[PairwiseAgreement]) -> pd.DataFrame:
    """The results as a table for the app and the command line."""
    return pd.DataFrame([r.__dict__ for r in results])
