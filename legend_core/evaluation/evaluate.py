"""Does the margin help? Evaluation of safety margins against human preference labels.

Everything here is pure numpy (and torch for the reward heads), without a model or
Streamlit: it works on margins and on pair embeddings that ``pipeline`` and ``store``
already made, so the ``legend evaluate`` command and the Evaluate page only call it.

1. **Agreement**: the share of pairs whose margin is positive (the direction agrees with
   the human label), with a bootstrap interval, overall and by bins of ``|margin|``; the
   same for two baselines on the same pairs: "the shorter response is safer", and
   directions of random orientation.
2. **Reward-model check**: a reward head trained on frozen pair embeddings with the plain
   Bradley-Terry loss ``-log σ(r_c - r_r)``, with the margin loss
   ``-log σ(r_c - r_r - λ·m)`` (TRL's form) and with margins shuffled among pairs (the
   control), over several seeds, judged by held-out accuracy.
3. **Direction transfer**: how a direction separates a contrastive set it was not built on.

Ties (a zero margin, two responses of equal length) count as half an agreement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from legend_core import config
from legend_core.config import VARIED_REFUSALS
from legend_core.method.label_agreement import (
    BinRow,
    Interval,
    RandomBaseline,
    agreement_by_bin,
    agreement_by_length,
    agreement_interval,
    agreement_scores,
    random_baseline,
    shorter_is_safer,
    text_lengths,
)
from legend_core.method.label_agreement import (
    bootstrap_share as bootstrap_share,  # TEMP re-export until callers move (issue 14)
)
from legend_core.method.label_agreement import (
    paired_difference as paired_difference,
)
from legend_core.method.label_agreement import (
    random_direction_agreements as random_direction_agreements,
)
from legend_core.method.margins import SCALES
from legend_core.method.margins import scale as rescale

if TYPE_CHECKING:
    from legend_core.data.store import Store

# Affirmative openings written by the project, in the spirit of AdvBench's ``target``
# column ("Sure, here is ..."), but generic so they fit any instruction.
AFFIRMATIVE_OPENINGS: tuple[str, ...] = (
    "Sure, here is how to do that.",
    "Of course. Here is what you asked for:",
    "Absolutely! Here are the details you need.",
    "Sure thing, here is a step-by-step answer.",
    "Certainly. Here is a complete guide.",
    "Happy to help. Here is exactly how it works:",
    "Sure, here you go.",
    "No problem. Here are the instructions:",
)


def with_varied_refusals(items: Sequence[Any], offset: int = 0) -> list[Any]:
    """Contrastive items with our varied refusals as the harmless side, cycled in order.

    Item ``i`` gets ``VARIED_REFUSALS[(i + offset) % len(VARIED_REFUSALS)]``; instruction
    and harmful response are kept. With AdvBench (goal, target) this is the contrastive set
    EVALUATION.md found best: affirmative openings against refusals of every length.
    """
    from legend_core.types import ContrastItem

    n = len(VARIED_REFUSALS)
    return [
        ContrastItem(item.instruction, item.harmful, VARIED_REFUSALS[(i + offset) % n])
        for i, item in enumerate(items)
    ]


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


# --- reward-model check ------------------------------------------------------------------

Head = Literal["linear", "mlp"]
VARIANTS: tuple[str, ...] = ("plain", "margin", "shuffled")
VARIANT_NAMES = {
    "plain": "Bradley-Terry, no margin",
    "margin": "margin loss (Legend margins)",
    "shuffled": "margin loss, margins shuffled (control)",
}


@dataclass
class RewardSettings:
    """How the reward heads are trained; the same for every variant and seed.

    Training is full-batch on a regularized objective, ``mean loss + l2/2 · ‖θ‖²``: the
    linear head is convex and is solved to convergence with L-BFGS, so the three variants
    differ by their loss alone, not by where an optimizer happened to stop.

    Attributes:
        head: ``linear`` (``r = w·h``) or ``mlp`` (one hidden layer of ``hidden`` units).
        lam: λ of the margin loss ``-log σ(r_c - r_r - λ·m)``.
        seeds: Number of seeds; each draws its own train/test split, initial weights and
            shuffle, shared by the three variants so their differences are paired.
        test_fraction: Share of pairs held out for accuracy.
        margin_scale: One of ``margins.SCALES`` (``margins.scale``), computed over the
            training pairs as an export of them would be; default the export's default
            (``config.DEFAULT_MARGIN_SCALE``), so λ = 1 is what TRL does with an export.
            ``none`` uses the projections as they are.
        margin_bins: Levels of ``|margin|`` for the ``bins`` scale.
        l2: Weight of the L2 penalty (features are standardized first).
        steps: L-BFGS iterations (linear) or Adam steps (MLP).
        lr: Adam's learning rate (MLP only).
        hidden: Width of the MLP's hidden layer.
        max_pairs: Larger data sets are subsampled (by seed) to this many pairs.
    """

    head: Head = "linear"
    lam: float = 1.0
    seeds: int = 5
    test_fraction: float = 0.3
    margin_scale: str = config.DEFAULT_MARGIN_SCALE
    margin_bins: int = config.DEFAULT_MARGIN_BINS
    l2: float = 1e-2
    steps: int = 200
    lr: float = 1e-2
    hidden: int = 32
    max_pairs: int = 20_000

    def __post_init__(self) -> None:
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"unknown head {self.head!r}; use linear or mlp")
        if self.margin_scale not in SCALES:
            raise ValueError(f"unknown margin scale {self.margin_scale!r}; use {', '.join(SCALES)}")
        if isinstance(self.margin_bins, bool) or int(self.margin_bins) != self.margin_bins:
            raise ValueError("margin_bins must be an integer")
        if self.margin_bins < 2:
            raise ValueError("margin_bins must be at least 2")
        if self.seeds < 1:
            raise ValueError("seeds must be at least 1")
        if not 0 < self.test_fraction < 1:
            raise ValueError("test_fraction must lie between 0 and 1")
        if not math.isfinite(self.lam):
            raise ValueError("lam must be a finite number")
        if self.l2 < 0 or self.steps < 1 or self.max_pairs < 4:
            raise ValueError("l2 must be >= 0, steps >= 1 and max_pairs >= 4")


@dataclass
class VariantResult:
    """Held-out accuracy of one training variant over the seeds."""

    variant: str
    accuracies: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def sd(self) -> float:
        return float(np.std(self.accuracies, ddof=1)) if len(self.accuracies) > 1 else 0.0


@dataclass
class Difference:
    """A paired difference of held-out accuracy between two variants over the seeds.

    Attributes:
        name: e.g. ``margin - plain``.
        values: Per-seed differences.
        wins: Seeds where the first variant did strictly better.
        losses: Seeds where it did strictly worse.
    """

    name: str
    values: list[float]
    wins: int
    losses: int

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def sd(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(len(self.values)) if self.values else float("nan")


@dataclass
class RewardCheck:
    """Result of :func:`reward_model_check`."""

    settings: RewardSettings
    variants: dict[str, VariantResult]
    differences: list[Difference]
    n_train: int
    n_test: int
    train_accuracy: dict[str, float] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One row per variant: held-out accuracy mean, sd, min and max over the seeds."""
        out = []
        for name in VARIANTS:
            v = self.variants[name]
            out.append(
                {
                    "variant": VARIANT_NAMES[name],
                    "held-out accuracy (mean)": v.mean,
                    "sd": v.sd,
                    "min": min(v.accuracies),
                    "max": max(v.accuracies),
                    "train accuracy (mean)": self.train_accuracy.get(name, float("nan")),
                    "seeds": len(v.accuracies),
                }
            )
        return out

    def difference_rows(self) -> list[dict[str, Any]]:
        """One row per paired difference: mean, sd, standard error, wins and losses."""
        return [
            {
                "difference": d.name,
                "mean": d.mean,
                "sd": d.sd,
                "se": d.se,
                "wins": d.wins,
                "losses": d.losses,
                "seeds": len(d.values),
            }
            for d in self.differences
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "n_train": self.n_train,
            "n_test": self.n_test,
            "variants": {k: v.accuracies for k, v in self.variants.items()},
            "train_accuracy": self.train_accuracy,
            "differences": {d.name: d.values for d in self.differences},
        }


def _make_head(kind: str, dim: int, hidden: int) -> Any:
    import torch

    if kind == "linear":
        return torch.nn.Linear(dim, 1, bias=False)
    return torch.nn.Sequential(
        torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1)
    )


def _pair_accuracy(head: Any, xc: Any, xr: Any) -> float:
    import torch

    with torch.no_grad():
        diff = (head(xc) - head(xr)).squeeze(-1)
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def train_reward_head(
    xc: np.ndarray,
    xr: np.ndarray,
    margins: np.ndarray | None,
    settings: RewardSettings,
    seed: int,
) -> Any:
    """Train one reward head on (standardized) pair embeddings; returns the torch module.

    ``margins`` None means the plain loss ``-log σ(r_c - r_r)``; otherwise
    ``-log σ(r_c - r_r - λ·m)`` with the margins as given (already scaled). The seed fixes
    the initial weights, so two calls that differ only in the margins start from the same
    point and make a paired comparison.
    """
    import torch

    torch.manual_seed(seed)
    head = _make_head(settings.head, xc.shape[1], settings.hidden)
    c = torch.as_tensor(xc, dtype=torch.float32)
    r = torch.as_tensor(xr, dtype=torch.float32)
    target = None if margins is None else settings.lam * torch.as_tensor(margins).float()
    params = list(head.parameters())

    def objective() -> Any:
        gap = (head(c) - head(r)).squeeze(-1)
        if target is not None:
            gap = gap - target
        penalty = sum((p * p).sum() for p in params)
        return -torch.nn.functional.logsigmoid(gap).mean() + 0.5 * settings.l2 * penalty

    if settings.head == "linear":
        optimizer = torch.optim.LBFGS(
            params, max_iter=settings.steps, line_search_fn="strong_wolfe", tolerance_grad=1e-6
        )

        def closure() -> Any:
            optimizer.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        optimizer.step(closure)
    else:
        optimizer = torch.optim.Adam(params, lr=settings.lr)
        for _ in range(settings.steps):
            optimizer.zero_grad()
            loss = objective()
            loss.backward()
            optimizer.step()
    head.eval()
    return head


def split_pairs(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded train/test split of ``range(n)`` (at least 2 pairs on each side)."""
    if n < 4:
        raise ValueError(f"the reward-model check needs at least 4 pairs; got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(max(2, round(n * test_fraction)), n - 2)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def reward_model_check(
    chosen: np.ndarray,
    rejected: np.ndarray,
    values: np.ndarray,
    settings: RewardSettings | None = None,
    progress: Any = None,
) -> RewardCheck:
    """The paper's experiment at laptop size: does training with margins help a reward head?

    For each seed: split the pairs, standardize the embeddings with the training pairs'
    statistics, then train three heads from the same initial weights and batch order:

    - ``plain``: ``-log σ(r_c - r_r)``;
    - ``margin``: ``-log σ(r_c - r_r - λ·m)`` with each pair's own margin;
    - ``shuffled``: the same loss with the training margins permuted among the pairs, a
      control that keeps the margins' distribution but breaks their link to the pairs.

    Accuracy is the share of held-out pairs whose chosen response gets the higher reward
    (the human label; the margins are never used at test time).

    Args:
        chosen: (n, d) embeddings of the chosen responses.
        rejected: (n, d) embeddings of the rejected responses.
        values: (n,) margins, positive where the chosen response projects as safer.
        settings: Head, λ, seeds and training settings.
        progress: Called as ``progress(done, total)`` after each trained head.
    """
    import torch

    settings = settings or RewardSettings()
    c = np.asarray(chosen, dtype=np.float32)
    r = np.asarray(rejected, dtype=np.float32)
    m = np.asarray(values, dtype=np.float64).reshape(-1)
    if c.shape != r.shape or c.ndim != 2 or len(m) != len(c):
        raise ValueError(
            f"shapes do not match: chosen {c.shape}, rejected {r.shape}, margins {m.shape}"
        )
    if not np.isfinite(m).all():
        raise ValueError("margins contain NaN or infinite values")
    accuracies: dict[str, list[float]] = {v: [] for v in VARIANTS}
    train_acc: dict[str, list[float]] = {v: [] for v in VARIANTS}
    total, done = settings.seeds * len(VARIANTS), 0
    n_train = n_test = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small problems: threads only add overhead
    try:
        for seed in range(settings.seeds):
            rows = np.arange(len(c))
            if len(rows) > settings.max_pairs:
                rows = np.sort(
                    np.random.default_rng(20_000 + seed).choice(
                        rows, settings.max_pairs, replace=False
                    )
                )
            train, test = (rows[i] for i in split_pairs(len(rows), settings.test_fraction, seed))
            n_train, n_test = len(train), len(test)
            both = np.concatenate([c[train], r[train]])
            mean, sd = both.mean(0), both.std(0) + 1e-6
            xc_tr, xr_tr = (c[train] - mean) / sd, (r[train] - mean) / sd
            xc_te = torch.as_tensor((c[test] - mean) / sd)
            xr_te = torch.as_tensor((r[test] - mean) / sd)
            # Scaled over the training pairs, as an export of them would be.
            scaled = rescale(m[train], settings.margin_scale, settings.margin_bins).values
            shuffled = scaled[np.random.default_rng(10_000 + seed).permutation(len(scaled))]
            for variant, margin in (("plain", None), ("margin", scaled), ("shuffled", shuffled)):
                head = train_reward_head(xc_tr, xr_tr, margin, settings, seed)
                accuracies[variant].append(_pair_accuracy(head, xc_te, xr_te))
                train_acc[variant].append(
                    _pair_accuracy(head, torch.as_tensor(xc_tr), torch.as_tensor(xr_tr))
                )
                done += 1
                if progress:
                    progress(done, total)
    finally:
        torch.set_num_threads(threads)
    variants = {v: VariantResult(v, accuracies[v]) for v in VARIANTS}
    differences = [
        _difference("margin - plain", accuracies["margin"], accuracies["plain"]),
        _difference("margin - shuffled", accuracies["margin"], accuracies["shuffled"]),
        _difference("shuffled - plain", accuracies["shuffled"], accuracies["plain"]),
    ]
    return RewardCheck(
        settings=settings,
        variants=variants,
        differences=differences,
        n_train=n_train,
        n_test=n_test,
        train_accuracy={v: float(np.mean(a)) for v, a in train_acc.items()},
    )


def _difference(name: str, a: Sequence[float], b: Sequence[float]) -> Difference:
    values = [float(x - y) for x, y in zip(a, b)]
    return Difference(
        name, values, wins=sum(v > 0 for v in values), losses=sum(v < 0 for v in values)
    )


# --- direction transfer ------------------------------------------------------------------


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
    from legend_core.method.directions import auroc, cohens_d

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


# --- stored runs -------------------------------------------------------------------------


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


# --- plain-text tables -------------------------------------------------------------------


def format_table(rows: Sequence[dict[str, Any]], percent: Sequence[str] = ()) -> str:
    """Rows of dicts as an aligned plain-text table; ``percent`` columns shown as %."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])

    def cell(key: str, value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "n/a"
            return f"{value:.1%}" if key in percent else f"{value:.4g}"
        return str(value)

    table = [[cell(k, row.get(k, "")) for k in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += [
        "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
        for r in table
    ]
    return "\n".join(lines)


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
