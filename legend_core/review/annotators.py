"""Agreement between annotators who reviewed the same pairs.

Each annotator's own current verdict and flag on a pair come from
:func:`legend_core.review.policy.annotator_states` (the one place the review rules live):
their latest verdict (accept, flip or override; withdrawn means none) and their latest
flag state. Two annotators are compared on the pairs both reviewed: their verdicts' sides
(as imported vs swapped) where both hold a verdict, their flag states on every such pair,
and their override numbers where both overrode on the same direction's scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from legend_core.review.policy import ReviewEvent, annotator_states

VERDICT_COLUMNS = ["annotator", "pair_id", "verdict", "swapped", "flagged", "override", "scale"]


@dataclass
class PairwiseAgreement:
    """How two annotators agree on the pairs both reviewed.

    Attributes:
        annotator_a: First annotator (alphabetical order).
        annotator_b: Second annotator.
        common_pairs: Pairs both reviewed (any action).
        common_verdicts: Pairs both hold a current verdict on.
        verdict_agreement: Share of those with the same side (None if none).
        verdict_kappa: Cohen's kappa of the sides (None when undefined).
        flag_agreement: Share of common pairs with the same flag state.
        flag_kappa: Cohen's kappa of the flag states.
        common_overrides: Pairs both overrode on the same direction's scale.
        override_correlation: Pearson correlation of those overrides (None below 3 pairs).
        override_mad: Mean absolute difference of those overrides.
    """

    annotator_a: str
    annotator_b: str
    common_pairs: int
    common_verdicts: int
    verdict_agreement: float | None
    verdict_kappa: float | None
    flag_agreement: float | None
    flag_kappa: float | None
    common_overrides: int
    override_correlation: float | None
    override_mad: float | None


def verdicts(reviews: pd.DataFrame) -> pd.DataFrame:
    """One row per (annotator, pair) they reviewed: their current state.

    Args:
        reviews: Reviews with columns id, pair_id, annotator, action, value and, optionally,
            direction_id (as from ``Store.reviews_frame``).

    Returns:
        Columns annotator, pair_id, verdict ("accept", "flip", "override" or None),
        swapped (True/False, None without a verdict), flagged (bool), override (NaN unless
        the verdict is an override) and scale (the override's direction id, -1 if none).
    """
    rows = []
    has_direction = "direction_id" in reviews.columns
    scale_of: dict[int, int] = {}
    events: dict[int, list[ReviewEvent]] = {}
    for record in reviews.itertuples(index=False):
        value = None if pd.isna(record.value) else float(record.value)
        review_id = int(record.id)
        events.setdefault(int(record.pair_id), []).append(
            ReviewEvent(review_id, str(record.annotator), str(record.action), value)
        )
        direction = getattr(record, "direction_id", None) if has_direction else None
        scale_of[review_id] = -1 if direction is None or pd.isna(direction) else int(direction)
    for pair_id, pair_events in sorted(events.items()):
        for name, state in sorted(annotator_states(pair_events).items()):
            v = state.verdict
            rows.append(
                {
                    "annotator": name,
                    "pair_id": pair_id,
                    "verdict": None if v is None else v.action,
                    "swapped": None if v is None else v.swapped,
                    "flagged": bool(state.flagged),
                    "override": v.value if v is not None and v.action == "override" else np.nan,
                    "scale": scale_of[v.review_id] if v is not None else -1,
                }
            )
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def cohens_kappa(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cohen's kappa of two boolean label vectors; None when chance agreement is total.

    scikit-learn's ``cohen_kappa_score``. Chance agreement is total exactly when one label
    is all there is across both vectors (or there are none): kappa is 0/0 there, and
    scikit-learn would give NaN with a warning.
    """
    from sklearn.metrics import cohen_kappa_score

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if len(np.unique(np.concatenate([a, b]))) < 2:
        return None
    return float(cohen_kappa_score(a, b))


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
        judged = both[both["swapped_a"].notna() & both["swapped_b"].notna()]
        side_a = judged["swapped_a"].astype(bool).to_numpy()
        side_b = judged["swapped_b"].astype(bool).to_numpy()
        overrides = both.dropna(subset=["override_a", "override_b"])
        overrides = overrides[overrides["scale_a"] == overrides["scale_b"]]
        x, y = overrides["override_a"].to_numpy(), overrides["override_b"].to_numpy()
        correlation = None
        if len(x) >= 3 and x.std() > 0 and y.std() > 0:
            correlation = float(np.corrcoef(x, y)[0, 1])
        flags_a, flags_b = both["flagged_a"].to_numpy(bool), both["flagged_b"].to_numpy(bool)
        results.append(
            PairwiseAgreement(
                annotator_a=a,
                annotator_b=b,
                common_pairs=len(both),
                common_verdicts=len(judged),
                verdict_agreement=float((side_a == side_b).mean()) if len(judged) else None,
                verdict_kappa=cohens_kappa(side_a, side_b),
                flag_agreement=float((flags_a == flags_b).mean()),
                flag_kappa=cohens_kappa(flags_a, flags_b),
                common_overrides=len(x),
                override_correlation=correlation,
                override_mad=float(np.abs(x - y).mean()) if len(x) else None,
            )
        )
    return results


def agreement_frame(results: list[PairwiseAgreement]) -> pd.DataFrame:
    """The results as a table for the app and the command line."""
    return pd.DataFrame([r.__dict__ for r in results])
