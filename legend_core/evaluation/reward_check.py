"""Part 2 of the evaluation: does training with the margins help a reward model?

A reward head trained on frozen pair embeddings with the plain Bradley-Terry loss
``-log σ(r_c - r_r)``, with the margin loss ``-log σ(r_c - r_r - λ·m)`` (TRL's form) and with
margins shuffled among pairs (the control), over several seeds, judged by held-out accuracy.
Pure numpy and torch: it works on pair embeddings and margins that the pipeline and the
store already made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from legend_core import config
from legend_core.method.directions import split_indices
from legend_core.method.margins import SCALES
from legend_core.method.margins import scale as rescale

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


def pair_accuracy(head: Any, xc: Any, xr: Any) -> float:
    """Share of pairs whose chosen embedding ``xc`` gets the higher reward (ties ½)."""
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
    if len(c) < 4:
        raise ValueError(f"the reward-model check needs at least 4 pairs; got {len(c)}")
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
            # The project's one seeded split (it also holds out a direction's quality).
            split = split_indices(len(rows), settings.test_fraction, seed)
            train, test = (rows[i] for i in split)
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
                accuracies[variant].append(pair_accuracy(head, xc_te, xr_te))
                train_acc[variant].append(
                    pair_accuracy(head, torch.as_tensor(xc_tr), torch.as_tensor(xr_tr))
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
