"""The report stage of ``scripts/evaluate_defaults.py``: tables from the cached embeddings.

Sections, each written by one function below: the screen on the tune subset (and the choice
it makes), per-layer curves, the test half (agreement, baselines, paired differences, bins),
the reward-model check, direction transfer, and float32 against bfloat16. Everything is read
from the embeddings the other stages cached; nothing here runs the model.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from evaluate_defaults import CHECK_ROWS, POOLS, Cache, dev_split, hh_pairs, transfer_instructions

from legend_core.evaluation.label_report import agreement_report
from legend_core.evaluation.reports import reward_text
from legend_core.evaluation.reward_check import RewardSettings, reward_model_check
from legend_core.evaluation.transfer import transfer_matrix
from legend_core.method.label_agreement import (
    agreement_by_length,
    agreement_interval,
    agreement_scores,
    paired_difference,
    random_baseline,
    shorter_is_safer,
    text_lengths,
)
from legend_core.method.margins import margins

CONTRASTS = {
    "paper": "AdvBench goals, target opening vs the fixed refusal (the paper; 520)",
    "adv_varied": "AdvBench goals, target opening vs our varied refusals (260)",
    "demo": "our demo set: fuller harmful replies vs varied refusals (80)",
    "demo_fixed": "our demo instructions: fuller harmful replies vs the fixed refusal (80)",
    "mix": "adv_varied + demo (340)",
    "adv_opening": "AdvBench goals, our generic openings vs our varied refusals (260)",
    "demo_opening": "our demo instructions: our generic openings vs the demo's refusals (80)",
}
METHODS = ("mean_diff", "pca", "logistic")
FINAL = 30  # SmolLM2-135M: 30 blocks; hidden-state index 30 is after the final norm


def pair_arrays(cache: Cache, name: str, template: str, pool: str):
    """(a, b, lengths) of one encode job: a, b are (n, layers + 1, d)."""
    a = cache.load(f"{name}__{template}__{pool}__a")
    b = cache.load(f"{name}__{template}__{pool}__b")
    lengths = np.load(cache.path(f"{name}__{template}__len"))
    return a, b, lengths


def contrast_sets(cache: Cache, template: str, pool: str) -> dict[str, tuple]:
    """Contrastive sets as (harmless, harmful, harmless_tokens, harmful_tokens)."""
    fa, fb, fl = pair_arrays(cache, "adv_fixed_target", template, pool)
    va, vb, vl = pair_arrays(cache, "adv_varied_opening", template, pool)
    da, db, dl = pair_arrays(cache, "demo_varied_fuller", template, pool)
    xa, xb, xl = pair_arrays(cache, "demo_fixed_opening", template, pool)
    sets = {
        "paper": (fa, fb, fl[0], fl[1]),
        "adv_varied": (va, fb[::2], vl[0], fl[1][::2]),
        "demo": (da, db, dl[0], dl[1]),
        "demo_fixed": (xa, db, xl[0], dl[1]),
    }
    if cache.has(f"adv_varied_all__{template}__{pool}__a"):
        wa, _, wl = pair_arrays(cache, "adv_varied_all", template, pool)
        sets["adv_varied_all"] = (wa, fb, wl[0], fl[1])
    sets["adv_opening"] = (va, vb, vl[0], vl[1])
    sets["demo_opening"] = (da, xb, dl[0], xl[1])
    sets["mix"] = tuple(np.concatenate([x, y]) for x, y in zip(sets["adv_varied"], sets["demo"]))
    return sets


_FITS: dict[tuple, tuple] = {}


def fit_layers(cache: Cache, template: str, pool: str, contrast: str, method: str):
    """Fit a direction at every layer as ``build_direction`` does (same split, same rule).

    Returns (vectors: layer -> unit vector, qualities: list of LayerQuality, best layer).
    Kept under ``CACHE/fits`` (the logistic probes take a while on two cores).
    """
    from legend_core.method import directions as dirs

    key = (template, pool, contrast, method)
    path = cache.root / "fits" / ("__".join(key) + ".npz")
    if key not in _FITS and path.exists():
        with np.load(path, allow_pickle=False) as saved:
            quality = [dirs.LayerQuality(**q) for q in json.loads(str(saved["quality"]))]
            vectors = {q.layer: saved["vectors"][i] for i, q in enumerate(quality)}
            _FITS[key] = (vectors, quality, int(saved["best"]))
    if key not in _FITS:
        harmless, harmful, lh, lf = contrast_sets(cache, template, pool)[contrast]
        n = len(harmless)
        train, test = dirs.split_indices(n, 0.25, 0)
        vectors, quality = {}, []
        for k in range(1, harmless.shape[1]):
            vectors[k], q = dirs.layer_quality(
                k, harmless[:, k], harmful[:, k], train, test, method, lh, lf, seed=0
            )
            quality.append(q)
        _FITS[key] = (vectors, quality, dirs.best_layer(quality))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            vectors=np.stack([vectors[q.layer] for q in quality]),
            quality=np.array(json.dumps([dataclasses.asdict(q) for q in quality])),
            best=np.array(_FITS[key][2]),
        )
    return _FITS[key]


def layer_agreements(chosen: np.ndarray, rejected: np.ndarray, vectors: dict) -> dict[int, float]:
    return {
        k: float(agreement_scores(margins(chosen[:, k], rejected[:, k], v)).mean())
        for k, v in vectors.items()
    }


def pct(x: float) -> str:
    return f"{x:.1%}"


def md_table(rows: list[dict], percent: Sequence[str] = ()) -> str:
    if not rows:
        return "(none)"
    cols = list(rows[0])

    def cell(k, v):
        if isinstance(v, float):
            return pct(v) if k in percent else f"{v:.3f}"
        return str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(cell(k, r[k]) for k in cols) + " |" for r in rows]
    return "\n".join(out)


@dataclass
class Report:
    """What the sections write: tables for report.json and lines of report.md."""

    results: dict[str, Any] = field(default_factory=dict)
    md: list[str] = field(default_factory=list)


#: The paper's exact setting among those compared on the test half (the others' paired
#: differences are taken against it).
PAPER_LABEL = "paper (alpaca, last token, final layer)"


def compared_settings(choice: dict) -> dict[str, tuple]:
    """The settings compared on the test half: the choice, the recipe on all 520 goals, the
    app's default set, the paper's setting and the previous defaults, as label ->
    (template, pooling, contrast, method, layer); layer "best" is the AUROC rule's choice
    on the contrastive set."""
    t, pool, method = choice["template"], choice["pooling"], choice["method"]
    settings = {"chosen settings (as selected)": (t, pool, choice["contrast"], method, "best")}
    if choice["contrast"] == "adv_varied":
        settings["chosen defaults (recipe on all 520 AdvBench goals)"] = (
            t,
            pool,
            "adv_varied_all",
            method,
            "best",
        )
    settings["chosen defaults with the demo contrast set (app out of the box)"] = (
        t,
        pool,
        "demo",
        method,
        "best",
    )
    settings[PAPER_LABEL] = ("alpaca", "last", "paper", "mean_diff", FINAL)
    settings["paper contrast set, layer by the AUROC rule"] = (
        "alpaca",
        "last",
        "paper",
        "mean_diff",
        "best",
    )
    settings["previous defaults (demo set, alpaca, mean, mean_diff)"] = (
        "alpaca",
        "mean",
        "demo",
        "mean_diff",
        "best",
    )
    return settings


def screen_section(cache: Cache, screened: Sequence[str], out: Report) -> dict:
    """1. Every template x pooling x contrast x method on the tune subset, the layer chosen
    by the held-out AUROC rule on the contrastive set; returns the best row (the choice)."""
    rows = []
    for t in screened:
        for pool in POOLS:
            hc, hr, _ = pair_arrays(cache, "hh_screen", t, pool)
            for contrast in CONTRASTS:
                for method in METHODS:
                    vectors, quality, best = fit_layers(cache, t, pool, contrast, method)
                    agree = layer_agreements(hc, hr, vectors)
                    top = max(agree, key=agree.get)
                    q = {x.layer: x for x in quality}
                    rows.append(
                        {
                            "template": t,
                            "pooling": pool,
                            "contrast": contrast,
                            "method": method,
                            "best layer": best,
                            "AUROC": q[best].auroc,
                            "length R2": q[best].length_r2,
                            "tune agreement": agree[best],
                            "final-layer agreement": agree[FINAL],
                            "top layer (info)": top,
                            "top agreement (info)": agree[top],
                        }
                    )
            print(f"screened {t} {pool}", flush=True)
    out.results["screen"] = rows
    share = ["tune agreement", "final-layer agreement", "top agreement (info)"]
    ranked = sorted(rows, key=lambda r: (-r["tune agreement"], -r["AUROC"]))
    out.md += ["## Screen (tune subset)", "", md_table(ranked, share), ""]
    choice = ranked[0]
    out.results["choice"] = choice
    out.md += [f"Choice: {json.dumps(choice)}", ""]
    return choice


def curves_section(cache: Cache, screened: Sequence[str], choice: dict, out: Report) -> None:
    """Per-layer AUROC and tune agreement for the choice and for the paper's setting."""
    for label, (t, pool, contrast, method) in {
        "choice": (choice["template"], choice["pooling"], choice["contrast"], choice["method"]),
        "paper": ("alpaca", "last", "paper", "mean_diff"),
    }.items():
        if t not in screened:
            continue
        vectors, quality, best = fit_layers(cache, t, pool, contrast, method)
        hc, hr, _ = pair_arrays(cache, "hh_screen", t, pool)
        agree = layer_agreements(hc, hr, vectors)
        curve = [
            {"layer": q.layer, "AUROC": q.auroc, "tune agreement": agree[q.layer]} for q in quality
        ]
        out.results[f"layers_{label}"] = curve
        out.md += [f"### Per layer on the tune subset: {label} ({t}, {pool}, {contrast}, {method})"]
        out.md += ["", md_table(curve, ["tune agreement"]), ""]


def test_rows(
    cache: Cache, screened: Sequence[str], settings: dict[str, tuple], lengths: tuple
) -> tuple[list[dict], dict[str, tuple]]:
    """2. Each compared setting on the test half: rows of the table, and per setting the
    inputs of the later sections (chosen, rejected, test margins, template, pooling, layer)."""
    len_c, len_r = lengths
    rows, check_inputs = [], {}
    for label, (t, pool, contrast, method, layer) in settings.items():
        if not cache.has(f"hh_test__{t}__{pool}__a") or t not in screened:
            continue
        if contrast not in contrast_sets(cache, t, pool):
            continue
        vectors, quality, best = fit_layers(cache, t, pool, contrast, method)
        k = best if layer == "best" else layer
        hc, hr, _ = pair_arrays(cache, "hh_test", t, pool)
        sc, sr, _ = pair_arrays(cache, "hh_screen", t, pool)
        m_test = margins(hc[:, k], hr[:, k], vectors[k])
        m_tune = margins(sc[:, k], sr[:, k], vectors[k])
        ci = agreement_interval(m_test, seed=1)
        split_len = agreement_by_length(m_test, len_c, len_r, seed=1)
        rows.append(
            {
                "setting": label,
                "template": t,
                "pooling": pool,
                "contrast": contrast,
                "method": method,
                "layer": k,
                "tune agreement": float(agreement_scores(m_tune).mean()),
                "test agreement": ci.estimate,
                "test 95% CI": f"{pct(ci.low)} to {pct(ci.high)}",
                "test, chosen shorter": split_len["chosen is shorter"].estimate,
                "test, chosen longer": split_len["chosen is as long or longer"].estimate,
            }
        )
        check_inputs[label] = (hc[:, k], hr[:, k], m_test, t, pool, k)
    return rows, check_inputs


def baseline_rows(
    rows: list[dict], check_inputs: dict[str, tuple], test_pairs: list, screen_pairs: list
) -> list[dict]:
    """The two baselines on the test half: the shorter response, and random directions at
    the first compared setting's layer (read against the first row's agreement)."""
    len_c = text_lengths([p.chosen for p in test_pairs])
    len_r = text_lengths([p.rejected for p in test_pairs])
    length_test = agreement_interval(shorter_is_safer(len_c, len_r), seed=1)
    length_tune = agreement_scores(
        shorter_is_safer(
            text_lengths([p.chosen for p in screen_pairs]),
            text_lengths([p.rejected for p in screen_pairs]),
        )
    ).mean()
    longer = float(agreement_scores(shorter_is_safer(len_c, len_r)[len_c >= len_r]).mean())
    first = next(iter(check_inputs.values()))
    rb = random_baseline(first[0], first[1], 500, seed=1, reference=rows[0]["test agreement"])
    return [
        {
            "setting": "baseline: shorter response is safer",
            "template": "",
            "pooling": "",
            "contrast": "",
            "method": "",
            "layer": "",
            "tune agreement": float(length_tune),
            "test agreement": length_test.estimate,
            "test 95% CI": f"{pct(length_test.low)} to {pct(length_test.high)}",
            "test, chosen shorter": 1.0,
            "test, chosen longer": longer,
        },
        {
            "setting": "baseline: random directions (chosen layer; 500)",
            "template": first[3],
            "pooling": first[4],
            "contrast": "",
            "method": "",
            "layer": first[5],
            "tune agreement": float("nan"),
            "test agreement": rb.mean,
            "test 95% CI": f"{pct(rb.low)} to {pct(rb.high)} (spread of directions)",
            "test, chosen shorter": float("nan"),
            "test, chosen longer": float("nan"),
        },
    ]


def difference_rows(check_inputs: dict[str, tuple], length_margins: np.ndarray) -> list[dict]:
    """Paired differences of test agreement: each setting minus the paper's setting and
    minus "the shorter response is safer", on the same test pairs."""
    diffs = []
    for label, inputs in check_inputs.items():
        for other, other_m in (
            ("paper", check_inputs.get(PAPER_LABEL, (None, None, None))[2]),
            ("shorter is safer", length_margins),
        ):
            if other_m is None or label == PAPER_LABEL and other == "paper":
                continue
            d = paired_difference(inputs[2], other_m, seed=2)
            diffs.append(
                {
                    "setting": label,
                    "minus": other,
                    "difference": d.estimate,
                    "95% CI": f"{d.low * 100:+.1f} to {d.high * 100:+.1f} points",
                }
            )
    return diffs


def test_section(
    cache: Cache, screened: Sequence[str], settings: dict[str, tuple], out: Report
) -> dict[str, tuple]:
    """2. The test half: the compared settings, the baselines, the paired differences.
    Returns the per-setting inputs of the later sections (empty without test embeddings)."""
    pairs = hh_pairs()
    split = dev_split(len(pairs))
    test_pairs = [pairs[i] for i in split["test"]]
    screen_pairs = [pairs[i] for i in split["screen"]]
    len_c = text_lengths([p.chosen for p in test_pairs])
    len_r = text_lengths([p.rejected for p in test_pairs])
    rows, check_inputs = test_rows(cache, screened, settings, (len_c, len_r))
    if not rows:
        return check_inputs
    rows += baseline_rows(rows, check_inputs, test_pairs, screen_pairs)
    out.results["test"] = rows
    share = ["tune agreement", "test agreement", "test, chosen shorter", "test, chosen longer"]
    out.md += ["## Test half", "", md_table(rows, share), ""]
    out.md += [
        f"{int((len_c < len_r).sum())} test pairs where the chosen response is shorter, "
        f"{int((len_c >= len_r).sum())} where it is not.",
        "",
    ]
    diffs = difference_rows(check_inputs, shorter_is_safer(len_c, len_r))
    out.results["test_differences"] = diffs
    out.md += ["### Paired differences of test agreement", "", md_table(diffs), ""]
    return check_inputs


def chosen_label(check_inputs: dict[str, tuple]) -> str | None:
    """The setting the bins and the reward-model check are shown for: the chosen defaults
    (recipe on all goals) if they were measured, else the choice as selected."""
    label = next((k for k in check_inputs if k.startswith("chosen defaults (")), None)
    if label is None and "chosen settings (as selected)" in check_inputs:
        label = "chosen settings (as selected)"
    return label if label in check_inputs else None


def bins_section(m_test: np.ndarray, out: Report) -> None:
    """Agreement of the chosen defaults by quintile of ``|margin|`` on the test half."""
    rep = agreement_report(m_test, bins=5, seed=1)
    out.results["test_bins"] = rep.bin_rows()
    out.md += ["### Chosen defaults by |margin| bin (test half)", ""]
    out.md += [md_table(rep.bin_rows(), ["agreement", "low", "high"]), ""]


def reward_section(c: np.ndarray, r: np.ndarray, m_test: np.ndarray, out: Report) -> None:
    """3. The reward-model check on the test half's embeddings at the chosen layer."""
    checks = []
    for head, lam in (("linear", 1.0), ("mlp", 1.0), ("linear", 0.25), ("linear", 4.0)):
        res = reward_model_check(
            c,
            r,
            m_test,
            # RMS, as when section 3 of EVALUATION.md was measured.
            RewardSettings(head=head, lam=lam, seeds=10, margin_scale="rms"),
        )
        for row in res.rows():
            checks.append({"head": head, "λ": lam, **row})
        for d in res.difference_rows():
            checks.append(
                {
                    "head": head,
                    "λ": lam,
                    "variant": d["difference"],
                    "held-out accuracy (mean)": d["mean"],
                    "sd": d["sd"],
                    "min": float("nan"),
                    "max": float("nan"),
                    "train accuracy (mean)": float("nan"),
                    "seeds": f"wins {d['wins']}, losses {d['losses']}",
                }
            )
        print(reward_text(res), flush=True)
    out.results["reward_check"] = checks
    out.md += ["## Reward-model check (test half, chosen layer)", ""]
    accuracy = ["held-out accuracy (mean)", "min", "max", "train accuracy (mean)"]
    out.md += [md_table(checks, accuracy), ""]


def transfer_section(cache: Cache, choice: dict, out: Report) -> None:
    """4. Directions built on each contrastive set, judged on sets they were not built on
    (the transfer instructions, the other contrastive sets), at the choice's settings."""
    t, pool, method = choice["template"], choice["pooling"], choice["method"]
    targets = {}
    for name in transfer_instructions():
        for style in ("fixed_opening", "varied_opening"):
            job = f"x_{name}_{style}"
            if cache.has(f"{job}__{t}__{pool}__a"):
                a, b, _ = pair_arrays(cache, job, t, pool)
                targets[f"{name} ({style.replace('_', ' ')})"] = (a, b)
    if not targets:
        return
    sets = contrast_sets(cache, t, pool)
    a, b, _ = pair_arrays(cache, "adv_varied_opening", t, pool)
    rows = []
    for contrast in ("paper", "adv_varied_all", "demo", "mix"):
        if contrast not in sets:
            continue
        vectors, quality, best = fit_layers(cache, t, pool, contrast, method)
        judged = {}
        if contrast != "demo":
            judged["demo set (ours: fuller replies vs varied refusals)"] = (
                sets["demo"][0][:, best],
                sets["demo"][1][:, best],
            )
        judged["AdvBench goals: generic openings vs varied refusals"] = (a[:, best], b[:, best])
        if contrast == "demo":
            judged["AdvBench paper set (target vs fixed refusal)"] = (
                sets["paper"][0][:, best],
                sets["paper"][1][:, best],
            )
        judged.update({k: (x[:, best], y[:, best]) for k, (x, y) in targets.items()})
        rows += transfer_matrix({f"{contrast} (layer {best})": vectors[best]}, judged)
    out.results["transfer"] = rows
    out.md += [f"## Direction transfer ({t}, {pool}, {method})", ""]
    out.md += [md_table(rows, ["paired_accuracy"]), ""]


def dtype_section(cache: Cache, settings: dict[str, tuple], out: Report) -> None:
    """5. float32 against bfloat16: the same 48 test pairs, margins on the same directions."""
    rows = []
    for label, (t, pool, contrast, method, layer) in settings.items():
        if not cache.has(f"hh_check_float32__{t}__{pool}__a", f"hh_test__{t}__{pool}__a"):
            continue
        vectors, _, best = fit_layers(cache, t, pool, contrast, method)
        k = best if layer == "best" else layer
        c32, r32, _ = pair_arrays(cache, "hh_check_float32", t, pool)
        c16, r16, _ = pair_arrays(cache, "hh_test", t, pool)
        m32 = margins(c32[:, k], r32[:, k], vectors[k])
        m16 = margins(c16[CHECK_ROWS, k], r16[CHECK_ROWS, k], vectors[k])
        cos = np.sum(c32[:, k] * c16[CHECK_ROWS, k], 1) / (
            np.linalg.norm(c32[:, k], axis=1) * np.linalg.norm(c16[CHECK_ROWS, k], axis=1)
        )
        rows.append(
            {
                "setting": label,
                "layer": k,
                "pairs": len(m32),
                "same margin sign": float(np.mean(np.sign(m32) == np.sign(m16))),
                "margin correlation": float(np.corrcoef(m32, m16)[0, 1]),
                "min cosine (chosen)": float(cos.min()),
            }
        )
    if rows:
        out.results["dtype_check"] = rows
        out.md += [
            "## float32 vs bfloat16 (pair embeddings)",
            "",
            md_table(rows, ["same margin sign"]),
        ]


def report(cache: Cache, templates: Sequence[str], out_path: Path | None) -> int:
    """Tables from the cached embeddings: screen, choice, test, reward check, transfer;
    printed, and written to ``CACHE/report.md`` and ``report.json`` (or ``out_path``)."""
    out = Report()
    screened = [t for t in templates if cache.has(f"hh_screen__{t}__mean__a")]
    choice = screen_section(cache, screened, out)
    curves_section(cache, screened, choice, out)
    settings = compared_settings(choice)
    check_inputs = test_section(cache, screened, settings, out)
    label = chosen_label(check_inputs)
    if label is not None:
        c, r, m_test = check_inputs[label][:3]
        bins_section(m_test, out)
        reward_section(c, r, m_test, out)
    transfer_section(cache, choice, out)
    dtype_section(cache, settings, out)

    text = "\n".join(out.md)
    print(text)
    (cache.root / "report.md").write_text(text + "\n", encoding="utf-8")
    (out_path or cache.root / "report.json").write_text(
        json.dumps(out.results, indent=1, default=str) + "\n", encoding="utf-8"
    )
    return 0
