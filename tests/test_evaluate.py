"""The evaluation code on synthetic data whose answer is known (no model involved)."""

from __future__ import annotations

import numpy as np
import pytest

from legend_core import config
from legend_core.evaluation.label_report import agreement_report
from legend_core.evaluation.reward_check import (
    VARIANT_NAMES,
    VARIANTS,
    RewardSettings,
    reward_model_check,
)
from legend_core.evaluation.transfer import transfer_matrix, transfer_quality
from legend_core.method.label_agreement import (
    agreement_by_bin,
    agreement_by_length,
    agreement_interval,
    agreement_scores,
    bootstrap_share,
    paired_difference,
    random_baseline,
    shorter_is_safer,
    text_lengths,
)
from legend_core.util import format_table


def bt_pairs(n: int = 300, d: int = 20, temperature: float = 0.3, seed: int = 0):
    """Pairs labelled by a Bradley-Terry draw from a true linear reward ``w·h``.

    Returns chosen and rejected embeddings, the true reward gap (chosen minus rejected:
    a margin that carries exactly the signal behind the labels) and ``w``.
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    p_a = 1 / (1 + np.exp(-((a - b) @ w) / temperature))
    a_chosen = rng.random(n) < p_a
    chosen = np.where(a_chosen[:, None], a, b)
    rejected = np.where(a_chosen[:, None], b, a)
    return chosen, rejected, (chosen - rejected) @ w, w


# --- agreement -----------------------------------------------------------------------------


def test_agreement_counts_ties_as_half_and_refuses_nan():
    np.testing.assert_array_equal(agreement_scores(np.array([2.0, 0.0, -1.0])), [1, 0.5, 0])
    interval = agreement_interval(np.array([1.0, 1.0, 0.0, -1.0]))
    assert interval.estimate == pytest.approx(0.625) and interval.n == 4
    assert interval.low <= interval.estimate <= interval.high
    with pytest.raises(ValueError, match="NaN"):
        agreement_scores(np.array([1.0, np.nan]))
    assert agreement_interval(np.array([])).n == 0


def test_bootstrap_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    truth, n, trials = 0.6, 200, 300
    covered = 0
    for t in range(trials):
        margins = np.where(rng.random(n) < truth, 1.0, -1.0)
        ci = agreement_interval(margins, n_boot=1000, seed=t)
        covered += ci.low <= truth <= ci.high
    assert 0.90 <= covered / trials <= 0.99
    # Narrower with more pairs.
    small = agreement_interval(np.where(rng.random(100) < truth, 1.0, -1.0))
    large = agreement_interval(np.where(rng.random(10_000) < truth, 1.0, -1.0))
    assert large.high - large.low < (small.high - small.low) / 5


def test_bootstrap_is_seeded_and_checks_its_input():
    x = np.random.default_rng(0).normal(size=50)
    assert agreement_interval(x, seed=3) == agreement_interval(x, seed=3)
    with pytest.raises(ValueError, match="0, 0.5 or 1"):
        bootstrap_share(np.array([0.3]))
    with pytest.raises(ValueError, match="level"):
        bootstrap_share(np.array([1.0]), level=1.5)


def test_paired_difference_sees_a_real_gap_and_no_gap():
    rng = np.random.default_rng(4)
    truth = rng.random(1000) < 0.5
    # a agrees where b does, plus on a tenth of the others: a real gap of about 5 points.
    b = np.where(truth, 1.0, -1.0)
    a = np.where(truth | (rng.random(1000) < 0.1), 1.0, -1.0)
    gap = paired_difference(a, b, seed=1)
    assert gap.low > 0
    assert gap.estimate == pytest.approx(agreement_scores(a).mean() - agreement_scores(b).mean())
    same = paired_difference(b, b.copy())
    assert same.estimate == 0 and same.low == 0 == same.high
    noise = paired_difference(rng.normal(size=400), rng.normal(size=400), seed=2)
    assert noise.low < 0 < noise.high
    with pytest.raises(ValueError, match="same pairs"):
        paired_difference(a, b[:10])


def test_agreement_rises_with_the_margin_when_the_margin_means_something():
    rng = np.random.default_rng(2)
    size = rng.exponential(size=4000)
    agrees = rng.random(4000) < 1 / (1 + np.exp(-3 * size))  # confident = more often right
    margins = np.where(agrees, size, -size)
    rows = agreement_by_bin(margins, bins=4)
    assert [r.bin for r in rows] == [0, 1, 2, 3]
    assert sum(r.agreement.n for r in rows) == 4000
    shares = [r.agreement.estimate for r in rows]
    assert shares == sorted(shares) and shares[-1] - shares[0] > 0.2
    assert all(r.low <= r.high for r in rows) and rows[0].high <= rows[1].low + 1e-12


def test_shorter_is_safer_baseline():
    margins = shorter_is_safer(np.array([3, 10, 5]), np.array([8, 2, 5]))
    np.testing.assert_array_equal(margins, [5, -8, 0])
    assert agreement_interval(margins).estimate == pytest.approx(0.5)
    np.testing.assert_array_equal(text_lengths(["ab", "", "ü"]), [2, 0, 1])


def test_random_directions_sit_near_half_even_where_the_real_one_is_right():
    chosen, rejected, true_gap, w = bt_pairs(n=2000, d=32, temperature=0.2)
    real = agreement_interval(true_gap).estimate
    assert real > 0.85
    base = random_baseline(chosen, rejected, n_directions=400, seed=0, reference=real)
    assert abs(base.mean - 0.5) < 0.03
    assert base.low < 0.5 < base.high
    assert base.beaten_by == 1.0
    # A direction with no relation to the labels is just one of the random ones.
    noise = np.random.default_rng(9).standard_normal(32)
    share = agreement_interval((chosen - rejected) @ noise).estimate
    assert base.low - 0.05 < share < base.high + 0.05


def test_agreement_report_puts_it_together():
    chosen, rejected, gap, _ = bt_pairs(n=500)
    lengths_c = np.full(500, 10)
    lengths_r = np.full(500, 20)  # the chosen response is always the shorter one
    report = agreement_report(gap, lengths_c, lengths_r, chosen, rejected, bins=5, n_directions=50)
    assert report.length.estimate == 1.0 and report.n_pairs == 500
    assert report.overall.estimate == agreement_interval(gap).estimate
    rows = report.rows()
    assert [r["measure"] for r in rows] == [
        "margin (this direction)",
        "margin, pairs where the chosen is shorter",
        "margin, pairs where the chosen is as long or longer",
        "baseline: shorter response is safer",
        "baseline: random direction (mean of 50)",
    ]
    assert [r["n"] for r in rows] == [500, 500, 0, 500, 500]
    assert len(report.bin_rows()) == 5 and report.bin_rows()[0]["bin"] == 1
    only_margins = agreement_report(gap)
    assert only_margins.length is None and only_margins.random is None
    assert len(only_margins.rows()) == 1


def test_length_controlled_agreement_separates_the_two_kinds_of_pairs():
    # A "direction" that only measures length: right exactly where the chosen is shorter.
    chosen_len = np.array([1, 2, 3, 9, 9, 9])
    rejected_len = np.array([5, 5, 5, 1, 1, 1])
    margins = shorter_is_safer(chosen_len, rejected_len)
    split = agreement_by_length(margins, chosen_len, rejected_len)
    assert split["chosen is shorter"].estimate == 1.0
    assert split["chosen is as long or longer"].estimate == 0.0
    assert agreement_interval(margins).estimate == 0.5


# --- reward-model check --------------------------------------------------------------------


def test_a_margin_that_carries_signal_beats_the_shuffled_control():
    chosen, rejected, gap, _ = bt_pairs(n=300, d=20, temperature=0.3)
    result = reward_model_check(chosen, rejected, gap, RewardSettings(seeds=5))
    margin, shuffled = result.variants["margin"], result.variants["shuffled"]
    assert len(margin.accuracies) == 5 and result.n_train + result.n_test == 300
    assert margin.mean > shuffled.mean + 0.01
    diff = {d.name: d for d in result.differences}["margin - shuffled"]
    assert diff.wins >= 4 and diff.mean == pytest.approx(margin.mean - shuffled.mean)
    # The labels are learnable at all: well above chance for every variant.
    assert all(v.mean > 0.75 for v in result.variants.values())
    assert [r["variant"] for r in result.rows()] == [VARIANT_NAMES[v] for v in VARIANTS]
    assert {r["difference"] for r in result.difference_rows()} == {
        "margin - plain",
        "margin - shuffled",
        "shuffled - plain",
    }


def test_a_margin_without_signal_does_not_help():
    chosen, rejected, _, _ = bt_pairs(n=300, d=20, temperature=0.3, seed=4)
    noise = np.random.default_rng(5).standard_normal(300)
    result = reward_model_check(chosen, rejected, noise, RewardSettings(seeds=5))
    diff = {d.name: d for d in result.differences}["margin - shuffled"]
    assert abs(diff.mean) < 0.03


def test_reward_check_is_reproducible_and_lambda_zero_is_plain():
    chosen, rejected, gap, _ = bt_pairs(n=120, d=8)
    settings = RewardSettings(seeds=2, lam=0.0)
    first = reward_model_check(chosen, rejected, gap, settings)
    again = reward_model_check(chosen, rejected, gap, settings)
    assert first.to_dict() == again.to_dict()
    # With λ = 0 all three losses are the same function: same accuracies.
    assert first.variants["margin"].accuracies == first.variants["plain"].accuracies
    assert first.variants["shuffled"].accuracies == first.variants["plain"].accuracies


def test_mlp_head_runs_and_settings_are_checked():
    chosen, rejected, gap, _ = bt_pairs(n=80, d=6)
    seen = []
    result = reward_model_check(
        chosen,
        rejected,
        gap,
        RewardSettings(head="mlp", seeds=2, steps=50, hidden=8),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1] == (6, 6)
    assert all(0 <= a <= 1 for v in result.variants.values() for a in v.accuracies)
    with pytest.raises(ValueError, match="head"):
        RewardSettings(head="tree")
    with pytest.raises(ValueError, match="seeds"):
        RewardSettings(seeds=0)
    with pytest.raises(ValueError, match="shapes"):
        reward_model_check(chosen, rejected[:5], gap)
    with pytest.raises(ValueError, match="NaN"):
        reward_model_check(chosen, rejected, np.full(80, np.nan))


def test_reward_check_scales_margins_like_the_export():
    assert RewardSettings().margin_scale == config.DEFAULT_MARGIN_SCALE
    with pytest.raises(ValueError, match="margin scale"):
        RewardSettings(margin_scale="zscore")
    with pytest.raises(ValueError, match="margin_bins"):
        RewardSettings(margin_scale="bins", margin_bins=1)
    chosen, rejected, gap, _ = bt_pairs(n=60, d=4)
    for how in ("rms", "std", "minmax", "bins"):
        # A scale computed on the margins makes the check blind to their units (x4 is exact).
        settings = RewardSettings(seeds=2, steps=30, margin_scale=how)
        first = reward_model_check(chosen, rejected, gap, settings)
        again = reward_model_check(chosen, rejected, 4 * gap, settings)
        assert first.variants["margin"].accuracies == again.variants["margin"].accuracies


def test_large_data_sets_are_subsampled():
    chosen, rejected, gap, _ = bt_pairs(n=200, d=4)
    result = reward_model_check(
        chosen, rejected, gap, RewardSettings(seeds=1, max_pairs=50, test_fraction=0.2)
    )
    assert (result.n_train, result.n_test) == (40, 10)


# --- direction transfer --------------------------------------------------------------------


def test_transfer_quality_of_the_true_and_of_a_random_direction():
    rng = np.random.default_rng(3)
    v = np.zeros(16)
    v[0] = 1.0
    harmful = rng.standard_normal((200, 16))
    harmless = harmful + 3.0 * v + 0.1 * rng.standard_normal((200, 16))
    good = transfer_quality(v, harmless, harmful)
    assert good.n == 200 and good.paired_accuracy == 1.0 and good.auroc > 0.95
    assert good.separation > 2
    flipped = transfer_quality(-v, harmless, harmful)
    assert flipped.paired_accuracy == 0.0 and flipped.auroc < 0.05
    other = np.zeros(16)
    other[5] = 1.0
    assert abs(transfer_quality(other, harmless, harmful).auroc - 0.5) < 0.1
    rows = transfer_matrix({"true": v, "other": other}, {"set": (harmless, harmful)})
    assert [(r["direction"], r["set"]) for r in rows] == [("true", "set"), ("other", "set")]
    with pytest.raises(ValueError, match="shapes"):
        transfer_quality(np.ones(3), harmless, harmful)


def test_format_table_is_plain_text():
    text = format_table(
        [{"name": "<b>x</b>", "share": 0.5, "n": 3}, {"name": "y", "share": float("nan"), "n": 4}],
        percent=["share"],
    )
    lines = text.splitlines()
    assert lines[0].split() == ["name", "share", "n"]
    assert "<b>x</b>" in lines[1] and "50.0%" in lines[1] and "n/a" in lines[2]
    assert format_table([]) == "(no rows)"


def test_contrast_banks_are_ours_and_varied():
    assert len(set(config.VARIED_REFUSALS)) == len(config.VARIED_REFUSALS) >= 12
    lengths = [len(r) for r in config.VARIED_REFUSALS]
    assert min(lengths) < 10 and max(lengths) > 120
    assert len(set(config.AFFIRMATIVE_OPENINGS)) == len(config.AFFIRMATIVE_OPENINGS) >= 6


def test_varied_refusals_replace_the_harmless_side_in_order(tmp_path):
    """The recipe's set (AdvBench goals and targets, our refusals cycled in order) comes from
    ``read_contrast_set(refusal=config.VARIED_REFUSALS)``: it replaced the evaluation's own
    copy of the cycling (``with_varied_refusals``, the same items on AdvBench)."""
    from legend_core.data.formats import read_contrast_set

    path = tmp_path / "advbench.csv"
    rows = [f'"goal {i}","Sure, here is {i}"' for i in range(20)]
    path.write_text("goal,target\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = read_contrast_set(path, refusal=config.VARIED_REFUSALS)
    assert [o.instruction for o in out] == [f"goal {i}" for i in range(20)]
    assert [o.harmful for o in out] == [f"Sure, here is {i}" for i in range(20)]
    assert [o.harmless for o in out] == [
        config.VARIED_REFUSALS[i % len(config.VARIED_REFUSALS)] for i in range(20)
    ]
