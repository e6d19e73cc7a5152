"""Reports of the evaluation: a stored margin run's inputs, and plain-text tables.

``load_run`` reads what the evaluation needs from the store (margins, response lengths,
cached embeddings); the ``*_text`` functions print the label-agreement report and the
reward-model check for the ``legend evaluate`` command and the scripts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from legend_core.evaluation.label_report import AgreementReport
from legend_core.evaluation.reward_check import RewardCheck
from legend_core.method.label_agreement import text_lengths
from legend_core.util import format_table

if TYPE_CHECKING:
    from legend_core.data.store import Store


@dataclass
class RunData:
    """What the evaluation needs from a stored margin run.

    Attributes:
        run_id: The margin run.
        settings: The run's settings (model, layer, pooling, template, max_length).
        margins: Computed margins of the pairs that have one (relative to the imported
            chosen response, i.e. to the human label), in data-set order.
        chosen_lengths: Characters of each chosen response.
        rejected_lengths: Characters of each rejected response.
        chosen: (n, d) cached embeddings of the chosen responses, or None if the cache
            lacks any of them.
        rejected: (n, d) cached embeddings of the rejected responses, or None.
        n_missing: Pairs of the data set without a computed margin (left out).
        n_missing_embeddings: Pairs whose embeddings are not in the cache.
    """

    run_id: int
    settings: dict[str, Any]
    margins: np.ndarray
    chosen_lengths: np.ndarray
    rejected_lengths: np.ndarray
    chosen: np.ndarray | None
    rejected: np.ndarray | None
    n_missing: int
    n_missing_embeddings: int


def load_run(store: Store, run_id: int) -> RunData:
    """Margins, response lengths and cached embeddings of a stored margin run.

    Reviews are not applied: the evaluation asks whether the *computed* margin agrees with
    the human label as imported.
    """
    from legend_core.data.store import EmbeddingSpace
    from legend_core.util import text_key

    run = store.get_run(run_id)
    s = run.settings
    frame = store.run_frame(run_id)
    have = frame["computed_margin"].notna().to_numpy()
    kept = frame[have]
    space = EmbeddingSpace.from_settings(s)
    keys_c = [text_key(p, c) for p, c in zip(kept["prompt"], kept["chosen"])]
    keys_r = [text_key(p, r) for p, r in zip(kept["prompt"], kept["rejected"])]
    cached = store.get_embeddings(space, keys_c + keys_r)
    missing = sum(kc not in cached or kr not in cached for kc, kr in zip(keys_c, keys_r))
    chosen = rejected = None
    if missing == 0 and keys_c:
        chosen = np.stack([cached[k] for k in keys_c])
        rejected = np.stack([cached[k] for k in keys_r])
    return RunData(
        run_id=run_id,
        settings=dict(s),
        margins=kept["computed_margin"].to_numpy(dtype=np.float64),
        chosen_lengths=text_lengths(kept["chosen"].tolist()),
        rejected_lengths=text_lengths(kept["rejected"].tolist()),
        chosen=chosen,
        rejected=rejected,
        n_missing=int((~have).sum()),
        n_missing_embeddings=int(missing),
    )


# --- plain-text tables (format_table: legend_core.util, shared with workflows.learning) ---


def agreement_text(report: AgreementReport) -> str:
    """Part 1 as plain text: the agreement table with intervals, then the by-bin table."""
    share = ["agreement", "low", "high"]
    lines = [format_table(report.rows(), percent=share)]
    if report.random is not None and report.random.beaten_by is not None:
        lines.append(
            f"the margin's agreement beats {report.random.beaten_by:.0%} of "
            f"{report.random.n_directions} random directions"
        )
    lines += ["", "by bin of |margin| (smallest first):", format_table(report.bin_rows(), share)]
    return "\n".join(lines)


def reward_text(check: RewardCheck) -> str:
    """Part 2 as plain text: held-out accuracy per variant, then the paired differences."""
    s = check.settings
    head = (
        f"reward head: {s.head}, λ = {s.lam:g} (margins scaled: {s.margin_scale}), "
        f"{s.seeds} seeds, {check.n_train} train / {check.n_test} held-out pairs per seed"
    )
    accuracy = ["held-out accuracy (mean)", "min", "max", "train accuracy (mean)"]
    return "\n".join(
        [
            head,
            format_table(check.rows(), percent=accuracy),
            "",
            "paired differences of held-out accuracy (per seed):",
            format_table(check.difference_rows()),
        ]
    )
