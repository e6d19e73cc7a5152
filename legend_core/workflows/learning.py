"""Learning directions from labelled pairs, the model and store side (issue 13).

The method does the maths on embeddings (``method.probe``, ``method.learned_direction``,
``method.label_quality``); this module gets the embeddings (a forward pass over labelled
pairs at every layer, or a margin run's cached vectors for its reviewed pairs), runs the
learning with the settings EVALUATION.md chose, and packages the result as a
:class:`~legend_core.method.directions.Direction` whose metadata says which labels, how many
and which folds (scoring pairs with it, cross-fitted where it learned from them, is
``method.crossfit.direction_margins``, used by ``pipeline`` and ``workflows.annotate``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from legend_core.data.files import json_safe
from legend_core.method.label_agreement import Interval, agreement_interval
from legend_core.method.label_quality import (
    CurvePoint,
    LabelledQuality,
    differences,
    labelled_quality,
    learning_curve,
    length_baseline,
    length_split,
    safer_longer,
)
from legend_core.method.learned_direction import LearnedDirection, learn_direction
from legend_core.method.probe import DEFAULT_CS, DEFAULT_FOLDS, ProbeSettings, length_features
from legend_core.util import format_table, pair_hash

if TYPE_CHECKING:
    from legend_core.data.store import PairText, Store
    from legend_core.method.directions import Direction
    from legend_core.method.encode import EncodeSettings, Progress
    from legend_core.method.models import LoadedModel
    from legend_core.types import PreferencePair

#: The method name of a direction learned from labels.
LEARNED_METHOD = "probe"

#: Most bytes the embeddings of labelled pairs may take while learning (both responses
#: while encoding, then one difference per pair, float32, every layer asked for). Beyond
#: it, ``encode_labelled`` refuses before any forward pass: fewer pairs, or one layer.
MAX_LABELLED_BYTES = 6 * 2**30

#: The estimator EVALUATION.md chose (issue 13): a logistic probe on pair differences, the
#: response lengths projected out of them, pulled toward the contrastive direction; C by
#: 5-fold cross-validated agreement, the contrastive layer unless another wins clearly.
DEFAULT_PROBE = ProbeSettings(c=0.01, prior_weight=1.0, debias_length=True, balance_length=False)


@dataclass
class LabelledSet:
    """Labelled pairs as the learner needs them.

    Attributes:
        diffs: Layer -> (n, d) pair differences oriented from the less safe to the safer
            response (float64).
        signs: (n,) +1 where the imported chosen response is the safer one, -1 where a
            review says the rejected one is.
        chosen_lengths: Characters of each imported chosen response.
        rejected_lengths: Characters of each imported rejected response.
        keys: Each pair's :func:`legend_core.util.pair_hash`.
        source: Where the labels came from, for the provenance.
    """

    diffs: dict[int, np.ndarray]
    signs: np.ndarray
    chosen_lengths: np.ndarray
    rejected_lengths: np.ndarray
    keys: list[str]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.signs)

    @property
    def longer(self) -> np.ndarray:
        """+1 where the safer response is the longer one, -1 where it is the shorter."""
        return safer_longer(self.chosen_lengths, self.rejected_lengths, self.signs)

    @property
    def lengths(self) -> np.ndarray:
        """Length differences, oriented like the differences (safer minus less safe)."""
        return length_features(self.chosen_lengths, self.rejected_lengths) * self.signs[:, None]


def labelled_set(
    texts: Sequence[PreferencePair] | Sequence[PairText],
    chosen: Mapping[int, np.ndarray],
    rejected: Mapping[int, np.ndarray],
    signs: np.ndarray | None = None,
    source: dict[str, Any] | None = None,
) -> LabelledSet:
    """A :class:`LabelledSet` from pairs and their embeddings (layer -> (n, d) arrays)."""
    n = len(texts)
    s = np.ones(n) if signs is None else np.asarray(signs, dtype=np.float64)
    # float32 halves the memory of every layer; each fit converts its own layer.
    diffs = {k: differences(chosen[k], rejected[k], s).astype(np.float32) for k in sorted(chosen)}
    return LabelledSet(
        diffs=diffs,
        signs=s,
        chosen_lengths=np.array([len(p.chosen) for p in texts]),
        rejected_lengths=np.array([len(p.rejected) for p in texts]),
        keys=[pair_hash(p.prompt, p.chosen, p.rejected) for p in texts],
        source=dict(source or {}),
    )


def encode_labelled(
    lm: LoadedModel,
    pairs: Sequence[PreferencePair] | Sequence[PairText],
    settings: EncodeSettings,
    signs: np.ndarray | None = None,
    source: dict[str, Any] | None = None,
    layers: Sequence[int] | None = None,
    progress: Progress | None = None,
    **encode_options: Any,
) -> LabelledSet:
    """Encode labelled pairs at every layer (1..N, one forward pass per pair), or at
    ``layers``.

    Raises:
        ValueError: Too few pairs to cross-validate, or too many to hold every layer of
            (``MAX_LABELLED_BYTES``): the message says how many would fit.
    """
    from legend_core.method.packing import encode_pairs

    if len(pairs) < 2 * DEFAULT_FOLDS:
        raise ValueError(
            f"learning from labels needs at least {2 * DEFAULT_FOLDS} labelled pairs; "
            f"got {len(pairs)}"
        )
    wanted = list(layers) if layers is not None else list(range(1, lm.num_layers + 1))
    per_pair = 3 * 4 * lm.hidden_size * len(wanted)  # two responses, then a difference
    if len(pairs) * per_pair > MAX_LABELLED_BYTES:
        raise ValueError(
            f"{len(pairs):,} labelled pairs at {len(wanted)} layers would take "
            f"{len(pairs) * per_pair / 2**30:.1f} GiB; at most {MAX_LABELLED_BYTES // per_pair:,} "
            "pairs fit: learn from a sample, or at one layer (--layer N)"
        )
    c, r = encode_pairs(
        lm,
        [p.prompt for p in pairs],
        [p.chosen for p in pairs],
        [p.rejected for p in pairs],
        layers=wanted,
        settings=settings,
        progress=progress,
        **encode_options,
    )
    return labelled_set(pairs, c.vectors, r.vectors, signs, source)


@dataclass
class LearnReport:
    """A learned direction and the evidence for it, as the command line and the lab show it.

    Attributes:
        learned: The learner's result (vector, layer, C, folds, fold vectors, candidates).
        quality: Per layer, cross-validated agreement of the probe at its best C, with the
            length split and random directions at that layer.
        contrastive: Per layer, agreement of the contrastive direction on the same labelled
            pairs (it never saw them), when one was given.
        length_baseline: Agreement of "the shorter response is safer".
        nested: Agreement from pairs the choice of layer and C never saw (nested CV).
        nested_shorter: The same where the safer response is the shorter one.
        nested_longer: The same where the safer response is the longer one.
        n: Labelled pairs.
    """

    learned: LearnedDirection
    quality: list[LabelledQuality]
    contrastive: list[LabelledQuality]
    length_baseline: Interval
    nested: Interval | None
    nested_shorter: Interval | None
    nested_longer: Interval | None
    n: int

    def rows(self) -> list[dict[str, Any]]:
        """One row per layer: learned (CV) and contrastive agreement side by side."""
        contrastive = {q.layer: q for q in self.contrastive}
        out = []
        for q in self.quality:
            row = {
                "layer": f"{q.layer}{'*' if q.layer == self.learned.layer else ''}",
                "learned (CV)": q.agreement.estimate,
                "low": q.agreement.low,
                "high": q.agreement.high,
                "safer shorter": q.safer_shorter.estimate,
                "safer longer": q.safer_longer.estimate,
                "random 97.5%": q.random_high,
            }
            if q.layer in contrastive:
                row["contrastive"] = contrastive[q.layer].agreement.estimate
                row["contrastive, safer longer"] = contrastive[q.layer].safer_longer.estimate
            out.append(row)
        return out

    def text(self) -> str:
        """The per-layer table and the honest summary, as plain text."""
        share = [
            "learned (CV)",
            "low",
            "high",
            "safer shorter",
            "safer longer",
            "random 97.5%",
            "contrastive",
            "contrastive, safer longer",
        ]
        learned = self.learned
        lines = [
            f"agreement with {self.n} labelled pairs per layer ({learned.fold_vectors.shape[0]}-"
            "fold cross-validation: each pair scored by a probe that never saw it; * = chosen):",
            format_table(self.rows(), percent=share),
            "",
            f"baseline, the shorter response is safer: {self.length_baseline}",
        ]
        if self.nested is not None:
            lines.append(
                f"chosen layer {learned.layer}, C {learned.c:g}; agreement from pairs the "
                f"choice never saw (nested CV): {self.nested}; safer response shorter: "
                f"{self.nested_shorter}; longer: {self.nested_longer}"
            )
        lines.append(f"learning took {learned.seconds:.1f} s")
        return "\n".join(lines)


def learn(
    lset: LabelledSet,
    settings: ProbeSettings = DEFAULT_PROBE,
    contrastive: Mapping[int, np.ndarray] | None = None,
    cs: Sequence[float] = DEFAULT_CS,
    k: int = DEFAULT_FOLDS,
    seed: int = 0,
    nested: bool = True,
    n_random: int = 200,
    progress: Callable[[int, int], None] | None = None,
    default_layer: int | None = None,
) -> LearnReport:
    """Learn a direction from labelled pairs and measure it (and the contrastive direction).

    Args:
        lset: The labelled pairs.
        settings: The estimator (``prior_weight`` > 0 pulls it toward ``contrastive``).
        contrastive: Layer -> the contrastive direction at that layer (its agreement is
            reported beside the learned one; it is the prior when ``prior_weight`` > 0).
        cs: Penalties tried by cross-validation.
        k: Folds (choice, cross-fitting and nested estimate).
        seed: Seed of the folds.
        nested: Measure the whole procedure by nested CV (k + 1 times the work).
        n_random: Random directions per layer for the baseline.
        progress: ``progress(done, total)`` over probe fits.
        default_layer: The layer the contrastive set chose without labels: kept unless
            another layer agrees clearly more (``probe.choose_candidate``).
    """
    if lset.n < 2 * k:
        raise ValueError(f"{lset.n} labelled pairs are too few for {k}-fold cross-validation")
    longer = lset.longer
    learned = learn_direction(
        lset.diffs,
        settings,
        cs,
        contrastive if settings.prior_weight > 0 else None,
        lset.lengths,
        longer,
        k=k,
        seed=seed,
        nested=nested,
        progress=progress,
        default_layer=default_layer,
    )
    quality = learned.layer_quality(lset.diffs, longer, n_random)
    contrast_quality = (
        labelled_quality(
            lset.diffs, {k_: v for k_, v in contrastive.items() if k_ in lset.diffs}, longer, 0
        )
        if contrastive
        else []
    )
    nested_iv = shorter = longer_iv = None
    if learned.nested_margins is not None:
        nested_iv = agreement_interval(learned.nested_margins)
        shorter, longer_iv = length_split(learned.nested_margins, longer)
    return LearnReport(
        learned=learned,
        quality=quality,
        contrastive=contrast_quality,
        length_baseline=length_baseline(lset.chosen_lengths, lset.rejected_lengths, lset.signs),
        nested=nested_iv,
        nested_shorter=shorter,
        nested_longer=longer_iv,
        n=lset.n,
    )


def learned_direction(
    report: LearnReport,
    lset: LabelledSet,
    base: Direction,
    name: str = "",
) -> Direction:
    """The learned direction as a :class:`Direction`, with its provenance under ``labels``.

    ``base`` gives the model and encoder settings (the contrastive direction built in the
    same run, or any direction of the same model and settings); its contrastive quality
    list is kept.
    """
    learned = report.learned
    labels = learned.provenance(lset.keys)
    labels["source"] = dict(lset.source)
    labels["n_safer_longer"] = int((lset.longer > 0).sum())
    labels["quality"] = [q.row() for q in report.quality]
    labels["contrastive_quality"] = [q.row() for q in report.contrastive]
    labels["length_baseline"] = report.length_baseline.estimate
    if report.nested is not None:
        labels["nested"] = {
            "agreement": _interval(report.nested),
            "safer_shorter": _interval(report.nested_shorter),
            "safer_longer": _interval(report.nested_longer),
        }
    return replace(
        base,
        vector=learned.vector,
        layer=learned.layer,
        method=LEARNED_METHOD,
        name=name or base.name,
        n_train=learned.n,
        n_test=0,
        labels=json_safe(labels),  # NaN (a baseline not measured) as None
    )


def _interval(iv: Interval | None) -> dict[str, float] | None:
    if iv is None:
        return None
    return {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "n": iv.n}


def reviewed_labels(store: Store, run_id: int, admins: Any = frozenset()) -> LabelledSet:
    """The reviewed pairs of a margin run as labels, with its cached embeddings (one layer).

    A pair counts when its reviews decide a side (a verdict; disputed pairs are left out):
    accept or an override ``≥ 0`` keeps the imported label, flip or an override ``< 0``
    swaps it. Embeddings are the run's (its layer and settings), from the store's cache.
    """
    from legend_core.data.store import EmbeddingSpace
    from legend_core.util import text_key

    run = store.get_run(run_id)
    frame = store.run_frame(run_id, admins=admins)
    decided = frame[(frame["n_verdicts"] > 0) & ~frame["disputed"]]
    space = EmbeddingSpace.from_settings(run.settings)
    keys_c = [text_key(p, c) for p, c in zip(decided["prompt"], decided["chosen"])]
    keys_r = [text_key(p, r) for p, r in zip(decided["prompt"], decided["rejected"])]
    cached = store.get_embeddings(space, keys_c + keys_r)
    have = [kc in cached and kr in cached for kc, kr in zip(keys_c, keys_r)]
    decided = decided[have]
    if decided.empty:
        raise ValueError(f"margin run {run_id} has no reviewed pairs with cached embeddings")
    layer = int(run.settings["layer"])
    chosen = np.stack([cached[k] for k, ok in zip(keys_c, have) if ok]).astype(np.float32)
    rejected = np.stack([cached[k] for k, ok in zip(keys_r, have) if ok]).astype(np.float32)
    signs = np.where(decided["flipped"].to_numpy(dtype=bool), -1.0, 1.0)
    columns = decided[["prompt", "chosen", "rejected"]].itertuples(index=False)
    texts = [_Text(p, c, r) for p, c, r in columns]
    return labelled_set(
        texts,
        {layer: chosen},
        {layer: rejected},
        signs,
        {"kind": "reviews", "run_id": run_id, "dataset_id": run.dataset_id},
    )


@dataclass(frozen=True)
class _Text:
    prompt: str
    chosen: str
    rejected: str


# --- the Direction lab ---------------------------------------------------------------------


@dataclass
class Learned:
    """What the Direction lab shows after learning: the evidence, the direction to save,
    and (for reviews) how agreement on held-out reviewed pairs grows with the reviews.

    Attributes:
        report: Per-layer quality, baselines and the nested estimate.
        direction: The learned direction, ready to store (provenance under ``labels``).
        curve: Agreement on held-out labelled pairs per number of labels learned from
            (0: the starting direction alone); empty when learning from a data set.
        n_labels: Labelled pairs learned from.
    """

    report: LearnReport
    direction: Direction
    curve: list[CurvePoint]
    n_labels: int


def curve_sizes(n_pool: int, smallest: int = 10) -> list[int]:
    """0, then doubling sizes from ``smallest`` up to the whole pool."""
    sizes, size = [0], smallest
    while size < n_pool:
        sizes.append(size)
        size *= 2
    return [*sizes, n_pool] if n_pool >= smallest else sizes


def learn_from_reviews(
    store: Store,
    run_id: int,
    admins: Any = frozenset(),
    k: int = DEFAULT_FOLDS,
    seed: int = 0,
    repeats: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> Learned:
    """Learn a direction from the reviewed pairs of a margin run (no forward pass: the run's
    cached embeddings, at its layer), its own direction as the prior.

    Raises:
        ValueError: Fewer than ``2 k`` reviewed pairs with cached embeddings.
    """
    run = store.get_run(run_id)
    base = store.get_direction(run.direction_id)
    lset = reviewed_labels(store, run_id, admins)
    if lset.n < 2 * k:
        raise ValueError(
            f"learning from reviews needs at least {2 * k} reviewed pairs; run {run_id} "
            f"has {lset.n}"
        )
    layer = base.layer
    report = learn(
        lset,
        contrastive={layer: base.vector},
        k=k,
        seed=seed,
        progress=progress,
        default_layer=layer,
    )
    direction = learned_direction(report, lset, base, name=f"{base.name} + {lset.n} reviews")
    pool = lset.n - max(1, round(lset.n * 0.3))
    curve = learning_curve(
        lset.diffs[layer],
        curve_sizes(pool),
        DEFAULT_PROBE,
        prior=base.vector,
        lengths=lset.lengths,
        longer=lset.longer,
        repeats=repeats,
        seed=seed,
        cs=DEFAULT_CS,
        k=k,
    )
    return Learned(report, direction, curve, lset.n)


def learn_from_dataset(
    lm: LoadedModel,
    store: Store,
    dataset_id: int,
    build: Any,
    k: int = DEFAULT_FOLDS,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Learned:
    """Learn a direction from a stored data set's labels (as imported: chosen is the safer
    response), the contrastive direction of ``build`` (a ``pipeline.BuildResult``) as the
    prior at every layer; its encoder settings encode the pairs (all layers, one pass)."""
    from legend_core.data.store import PairText
    from legend_core.method.pipeline import settings_of

    info = store.get_dataset(dataset_id)
    frame = store.dataset_frame(dataset_id)
    pairs = [
        PairText(int(r.id), int(r.idx), r.prompt, r.chosen, r.rejected)
        for r in frame.itertuples(index=False)
    ]
    base = build.direction
    lset = encode_labelled(
        lm,
        pairs,
        settings_of(base),
        source={"kind": "dataset", "dataset_id": info.id, "name": info.name},
        progress=progress,
    )
    report = learn(
        lset,
        contrastive=build.vectors,
        k=k,
        seed=seed,
        progress=progress,
        default_layer=base.layer,
    )
    name = f"{base.contrast_name} + {info.name} labels"
    return Learned(report, learned_direction(report, lset, base, name=name), [], lset.n)


def curve_frame(points: Sequence[CurvePoint]) -> Any:
    """The learning curve as a table: labels learned from, mean and spread of agreement."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "reviews learned from": p.n_labels,
                "held-out agreement": p.mean,
                "sd": p.sd,
                "repeats": p.repeats,
                "held-out pairs": p.n_held_out,
            }
            for p in points
        ]
    )
