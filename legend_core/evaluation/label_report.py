"""Part 1 of the evaluation: does the margin agree with the human label, and by how much more
than the baselines?

The report puts together what :mod:`legend_core.method.label_agreement` measures (one tie
rule: a zero margin or two responses of equal length count as half an agreement): the share
of pairs whose margin is positive with a bootstrap interval, overall, by bins of
``|margin|`` and by which response is longer, and the same for two baselines on the same
pairs: "the shorter response is safer", and directions of random orientation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from legend_core.method.label_agreement import (
    BinRow,
    Interval,
    RandomBaseline,
    agreement_by_bin,
    agreement_by_length,
    agreement_interval,
    random_baseline,
    shorter_is_safer,
)


@dataclass
class AgreementReport:
    """Everything of part 1 for one set of pairs and one direction."""

    overall: Interval
    bins: list[BinRow]
    length: Interval | None = None
    random: RandomBaseline | None = None
    n_pairs: int = 0
    by_length: dict[str, Interval] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """The agreement table: one row per measure, plain values (for print or a frame).

        The margin overall, the margin where the chosen response is the shorter one and
        where it is not (length-controlled), then the two baselines.
        """
        out = [_row("margin (this direction)", self.overall)]
        for name, interval in self.by_length.items():
            out.append(_row(f"margin, pairs where the {name}", interval))
        if self.length is not None:
            out.append(_row("baseline: shorter response is safer", self.length))
        if self.random is not None:
            rb = self.random
            out.append(
                {
                    "measure": f"baseline: random direction (mean of {rb.n_directions})",
                    "agreement": rb.mean,
                    "low": rb.low,
                    "high": rb.high,
                    "n": self.n_pairs,
                }
            )
        return out

    def bin_rows(self) -> list[dict[str, Any]]:
        """The by-bin table: one row per bin of ``|margin|``."""
        return [
            {
                "bin": b.bin + 1,
                "|margin| from": b.low,
                "|margin| to": b.high,
                "agreement": b.agreement.estimate,
                "low": b.agreement.low,
                "high": b.agreement.high,
                "n": b.agreement.n,
            }
            for b in self.bins
        ]


def _row(name: str, interval: Interval) -> dict[str, Any]:
    return {
        "measure": name,
        "agreement": interval.estimate,
        "low": interval.low,
        "high": interval.high,
        "n": interval.n,
    }


def agreement_report(
    values: np.ndarray,
    chosen_lengths: np.ndarray | None = None,
    rejected_lengths: np.ndarray | None = None,
    chosen: np.ndarray | None = None,
    rejected: np.ndarray | None = None,
    bins: int = 5,
    n_boot: int = 2000,
    n_directions: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> AgreementReport:
    """Agreement with a bootstrap interval, by bin, and the baselines that have their inputs.

    Args:
        values: Margins (positive = the chosen response projects as safer). No NaN.
        chosen_lengths: Lengths of the chosen responses (for the length baseline).
        rejected_lengths: Lengths of the rejected responses.
        chosen: (n, d) embeddings of the chosen responses (for the random baseline).
        rejected: (n, d) embeddings of the rejected responses.
        bins: Number of quantile bins of ``|margin|``.
        n_boot: Bootstrap replicates.
        n_directions: Random directions for the random baseline.
        level: Interval level.
        seed: Seed of the bootstrap and of the random directions.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    overall = agreement_interval(x, n_boot, level, seed)
    length, by_length = None, {}
    if chosen_lengths is not None and rejected_lengths is not None:
        length = agreement_interval(
            shorter_is_safer(chosen_lengths, rejected_lengths), n_boot, level, seed
        )
        by_length = agreement_by_length(x, chosen_lengths, rejected_lengths, n_boot, level, seed)
    random = None
    if chosen is not None and rejected is not None and len(x):
        random = random_baseline(chosen, rejected, n_directions, seed, overall.estimate)
    return AgreementReport(
        overall=overall,
        bins=agreement_by_bin(x, bins, n_boot, level, seed),
        length=length,
        random=random,
        n_pairs=len(x),
        by_length=by_length,
    )
