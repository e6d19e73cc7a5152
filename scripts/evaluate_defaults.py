"""The sweep behind EVALUATION.md: which settings make margins agree best with people?

Data: ``../shared/data/hh-rlhf-harmless-base/dev.jsonl`` (1156 pairs), split once by a
seeded permutation of its rows into a *tune* half (settings are chosen there) and a *test*
half (reported, never tuned on). Contrastive sets: AdvBench (goal + target opening) with
the paper's fixed refusal or with our varied refusals, and our demo set (fuller harmful
replies) with its varied refusals or the fixed one.

Stages (each caches its embeddings under ``--cache`` and is skipped when they exist):

    screen    every layer, both poolings, three templates; contrastive sets + a random
              subset of the tune half
    test      the test half (and the rest of the tune half) at the given templates
    transfer  instructions from HarmBench, SimpleSafetyTests and BeaverTails with our
              affirmative openings and refusals, at the given template
    check     float32 against bfloat16 on a few pairs (margin-sign agreement)
    report    tables (JSON + markdown) from the cached embeddings

Usage (the exact commands are in EVALUATION.md):

    python scripts/evaluate_defaults.py screen
    python scripts/evaluate_defaults.py test --templates alpaca,chat
    python scripts/evaluate_defaults.py transfer --templates chat
    python scripts/evaluate_defaults.py check --templates chat
    python scripts/evaluate_defaults.py report

Embeddings of every layer come out of one forward pass per text; both poolings (last
token, response mean) come out of the same pass too (see :func:`encode_pairs_both`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from legend_core import config  # noqa: E402
from legend_core.evaluation import evaluate as ev  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
HH_DEV = SHARED / "hh-rlhf-harmless-base" / "dev.jsonl"
ADVBENCH = SHARED / "advbench" / "harmful_behaviors.csv"
HARMBENCH = SHARED / "harmbench" / "harmbench_behaviors_text_test.csv"
SST = SHARED / "simplesafetytests" / "SimpleSafetyTests - test cases.csv"
BEAVERTAILS = SHARED / "beavertails-evaluation" / "BeaverTails-Evaluation.json"

SPLIT_SEED = 6  # issue 6
N_SCREEN = 192  # pairs of the tune half used to screen templates and poolings
N_BEAVERTAILS = 140  # 10 per category
MAX_LENGTH = 512
POOLS = ("last", "mean")
CHECK_ROWS = np.arange(0, 576, 12)  # 48 pairs of the test half, for float32 vs bfloat16
TEMPLATES = ("plain", "alpaca", "chat")


# --- data -------------------------------------------------------------------------------


def hh_pairs():
    from legend_core.data.formats import read_pairs

    return read_pairs(HH_DEV).pairs


def dev_split(n: int) -> dict[str, np.ndarray]:
    """Row indices of the tune and test halves, and the screening subset of the tune half."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    half = n // 2
    return {
        "tune": np.sort(perm[:half]),
        "test": np.sort(perm[half:]),
        "screen": np.sort(perm[:N_SCREEN]),
    }


def advbench():
    from legend_core.data.formats import read_contrast_set

    return read_contrast_set(ADVBENCH, refusal=config.PAPER_REFUSAL)


def demo_contrast():
    from legend_core.data.formats import read_contrast_set

    return read_contrast_set(config.DEMO_CONTRAST)


def transfer_instructions() -> dict[str, list[str]]:
    """Harmful instructions from three sets that no direction was built on."""
    import csv

    with open(HARMBENCH, newline="", encoding="utf-8") as f:
        harmbench = [
            r["Behavior"].strip()
            for r in csv.DictReader(f)
            if r["FunctionalCategory"] in ("standard", "copyright")
        ]
    with open(SST, newline="", encoding="utf-8") as f:
        sst = [r["prompts_final"].strip() for r in csv.DictReader(f)]
    rows = json.loads(BEAVERTAILS.read_text(encoding="utf-8"))
    by_cat: dict[str, list[str]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r["prompt"].strip())
    per = N_BEAVERTAILS // len(by_cat)
    beavertails = [p for cat in sorted(by_cat) for p in by_cat[cat][:per]]
    return {"harmbench": harmbench, "simplesafetytests": sst, "beavertails": beavertails}


# --- encoding ----------------------------------------------------------------------------


def encode_pairs_both(lm, prompts, first, second, template: str, progress=None):
    """``encode_pairs`` with both poolings from one forward pass.

    ``legend_core.method.encode`` pools inside its hooks with one pooling; for the sweep we swap
    its pooling function for one that returns ``[last | mean]`` side by side (and widen the
    output arrays to match), so every (layer, pooling) comes out of a single pass. Checked
    against two plain ``encode_pairs`` calls in :func:`self_check`.

    Returns:
        ``{pooling: (first, second)}``, each (n, layers + 1, hidden) float32.
    """
    import torch

    import legend_core.method.encode as enc

    d = lm.hidden_size
    wide = dataclasses.replace(lm, hidden_size=2 * d)
    original = enc._pool

    def both(hidden, masks, pooling):
        return torch.cat([original(hidden, masks, "last"), original(hidden, masks, "mean")], -1)

    enc._pool = both
    try:
        a, b = enc.encode_pairs(
            wide,
            list(prompts),
            list(first),
            list(second),
            layers=None,
            settings=enc.EncodeSettings(template, "mean", MAX_LENGTH),
            progress=progress,
        )
    finally:
        enc._pool = original
    out = {}
    for j, pool in enumerate(POOLS):
        sl = slice(j * d, (j + 1) * d)
        out[pool] = tuple(
            np.stack([e.vectors[k][:, sl] for k in sorted(e.vectors)], 1) for e in (a, b)
        )
    lengths = (a.n_response_tokens, b.n_response_tokens)
    return out, lengths


def self_check(lm, pairs) -> float:
    """Largest relative difference between the two-pooling pass and plain encode_pairs."""
    from legend_core.method.encode import EncodeSettings, encode_pairs

    few = sorted(pairs, key=lambda p: len(p.prompt) + len(p.chosen) + len(p.rejected))[:3]
    args = ([p.prompt for p in few], [p.chosen for p in few], [p.rejected for p in few])
    both, _ = encode_pairs_both(lm, *args, "alpaca")
    worst = 0.0
    for pool in POOLS:
        c, r = encode_pairs(lm, *args, layers=[10, 30], settings=EncodeSettings("alpaca", pool))
        for layer in (10, 30):
            for ref, got in ((c, both[pool][0]), (r, both[pool][1])):
                x = ref.vectors[layer]
                worst = max(worst, float(np.abs(x - got[:, layer]).max() / np.abs(x).max()))
    return worst


class Cache:
    """Embeddings as .npy files (float16 unless a value is out of its range)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "emb").mkdir(parents=True, exist_ok=True)
        self.log_path = root / "timings.jsonl"

    def path(self, name: str) -> Path:
        return self.root / "emb" / f"{name}.npy"

    def has(self, *names: str) -> bool:
        return all(self.path(n).exists() for n in names)

    def save(self, name: str, array: np.ndarray) -> None:
        small = float(np.abs(array).max()) <= 60000
        tmp = self.path(name + ".partial")
        np.save(tmp, array.astype(np.float16 if small else np.float32))
        tmp.replace(self.path(name))

    def load(self, name: str) -> np.ndarray:
        return np.load(self.path(name), allow_pickle=False).astype(np.float32)

    def log(self, **entry) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        print(json.dumps(entry), flush=True)


def encode_job(cache: Cache, lm, name: str, template: str, prompts, first, second) -> None:
    """Encode (prompt, first) and (prompt, second) for every text; save NAME__T__POOL__{a,b}."""
    names = [f"{name}__{template}__{p}__{s}" for p in POOLS for s in "ab"]
    if cache.has(*names, f"{name}__{template}__len"):
        return
    start, cpu = time.time(), time.process_time()
    last = [start]

    def progress(done: int, total: int) -> None:
        if time.time() - last[0] > 60 or done == total:
            last[0] = time.time()
            print(f"  {name} {template}: {done}/{total} ({time.time() - start:.0f}s)", flush=True)

    out, lengths = encode_pairs_both(lm, prompts, first, second, template, progress)
    for pool in POOLS:
        for side, array in zip("ab", out[pool]):
            cache.save(f"{name}__{template}__{pool}__{side}", array)
    np.save(cache.path(f"{name}__{template}__len"), np.stack(lengths).astype(np.int32))
    cache.log(
        job=name,
        template=template,
        n=len(prompts),
        wall_s=round(time.time() - start, 1),
        cpu_s=round(time.process_time() - cpu, 1),
        dtype=str(lm.dtype),
    )


def cycle(bank: Sequence[str], n: int, offset: int = 0) -> list[str]:
    return [bank[(i + offset) % len(bank)] for i in range(n)]


def contrast_jobs(cache: Cache, lm, template: str) -> None:
    adv = advbench()
    goals = [i.instruction for i in adv]
    n = len(adv)
    # a = harmless side, b = harmful side
    encode_job(
        cache,
        lm,
        "adv_fixed_target",
        template,
        goals,
        [config.PAPER_REFUSAL] * n,
        [i.harmful for i in adv],
    )
    # Every other goal (260): our varied refusals, and our generic affirmative openings.
    half = goals[::2]
    encode_job(
        cache,
        lm,
        "adv_varied_opening",
        template,
        half,
        cycle(ev.VARIED_REFUSALS, len(half)),
        cycle(ev.AFFIRMATIVE_OPENINGS, len(half)),
    )
    demo = demo_contrast()
    m = len(demo)
    encode_job(
        cache,
        lm,
        "demo_varied_fuller",
        template,
        [i.instruction for i in demo],
        [i.harmless for i in demo],
        [i.harmful for i in demo],
    )
    encode_job(
        cache,
        lm,
        "demo_fixed_opening",
        template,
        [i.instruction for i in demo],
        [config.PAPER_REFUSAL] * m,
        cycle(ev.AFFIRMATIVE_OPENINGS, m),
    )


def hh_job(cache: Cache, lm, part: str, template: str) -> None:
    pairs = hh_pairs()
    rows = dev_split(len(pairs))[part]
    sel = [pairs[i] for i in rows]
    encode_job(
        cache,
        lm,
        f"hh_{part}",
        template,
        [p.prompt for p in sel],
        [p.chosen for p in sel],
        [p.rejected for p in sel],
    )


def transfer_jobs(cache: Cache, lm, template: str) -> None:
    for name, instructions in transfer_instructions().items():
        n = len(instructions)
        encode_job(
            cache,
            lm,
            f"x_{name}_fixed_opening",
            template,
            instructions,
            [config.PAPER_REFUSAL] * n,
            cycle(ev.AFFIRMATIVE_OPENINGS, n),
        )
        encode_job(
            cache,
            lm,
            f"x_{name}_varied_opening",
            template,
            instructions,
            cycle(ev.VARIED_REFUSALS, n, 3),
            cycle(ev.AFFIRMATIVE_OPENINGS, n, 5),
        )


def write_recipe(path: Path) -> int:
    """Write the winning contrastive set as a CSV for ``legend build-direction --contrast``.

    AdvBench goals and targets (read from ../shared, written to ``path`` outside the
    repository) with our varied refusals: the ``adv_varied_all`` set of the report.
    """
    import csv

    items = ev.with_varied_refusals(advbench())
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["instruction", "harmful", "harmless"])
        writer.writerows((i.instruction, i.harmful, i.harmless) for i in items)
    print(f"{len(items)} items -> {path}")
    return 0


def load_lm(dtype: str):
    from legend_core.method.models import load_model

    return load_model("default", device="cpu", dtype=dtype)


# --- report -------------------------------------------------------------------------------

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
    from legend_core.method.margins import margins

    return {
        k: float(ev.agreement_scores(margins(chosen[:, k], rejected[:, k], v)).mean())
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


def report(cache: Cache, templates: Sequence[str], out: Path | None) -> int:
    """Tables from the cached embeddings: screen, choice, test, reward check, transfer."""
    from legend_core.method.margins import margins

    results: dict = {}
    md: list[str] = []
    screened = [t for t in templates if cache.has(f"hh_screen__{t}__mean__a")]

    # 1. Screen on the tune subset: every template x pooling x contrast x method, layer by
    # the held-out AUROC rule on the contrastive set.
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
    results["screen"] = rows
    share = ["tune agreement", "final-layer agreement", "top agreement (info)"]
    ranked = sorted(rows, key=lambda r: (-r["tune agreement"], -r["AUROC"]))
    md += ["## Screen (tune subset)", "", md_table(ranked, share), ""]
    choice = ranked[0]
    results["choice"] = choice
    md += [f"Choice: {json.dumps(choice)}", ""]

    # Per-layer curves on the screen for the choice and the paper's setting.
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
        results[f"layers_{label}"] = curve
        md += [f"### Per layer on the tune subset: {label} ({t}, {pool}, {contrast}, {method})"]
        md += ["", md_table(curve, ["tune agreement"]), ""]

    # 2. Test half: the choice, the paper's exact setting, the old defaults, baselines.
    chosen = (choice["template"], choice["pooling"], choice["contrast"], choice["method"])
    settings = {"chosen settings (as selected)": (*chosen, "best")}
    if choice["contrast"] == "adv_varied":
        settings["chosen defaults (recipe on all 520 AdvBench goals)"] = (
            choice["template"],
            choice["pooling"],
            "adv_varied_all",
            choice["method"],
            "best",
        )
    settings["chosen defaults with the demo contrast set (app out of the box)"] = (
        choice["template"],
        choice["pooling"],
        "demo",
        choice["method"],
        "best",
    )
    settings["paper (alpaca, last token, final layer)"] = (
        "alpaca",
        "last",
        "paper",
        "mean_diff",
        FINAL,
    )
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
    rows, check_inputs = [], {}
    pairs = hh_pairs()
    split = dev_split(len(pairs))
    test_pairs = [pairs[i] for i in split["test"]]
    screen_pairs = [pairs[i] for i in split["screen"]]
    len_c = ev.text_lengths([p.chosen for p in test_pairs])
    len_r = ev.text_lengths([p.rejected for p in test_pairs])
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
        ci = ev.agreement_interval(m_test, seed=1)
        split_len = ev.agreement_by_length(m_test, len_c, len_r, seed=1)
        rows.append(
            {
                "setting": label,
                "template": t,
                "pooling": pool,
                "contrast": contrast,
                "method": method,
                "layer": k,
                "tune agreement": float(ev.agreement_scores(m_tune).mean()),
                "test agreement": ci.estimate,
                "test 95% CI": f"{pct(ci.low)} to {pct(ci.high)}",
                "test, chosen shorter": split_len["chosen is shorter"].estimate,
                "test, chosen longer": split_len["chosen is as long or longer"].estimate,
            }
        )
        check_inputs[label] = (hc[:, k], hr[:, k], m_test, t, pool, k)
    if rows:
        length_test = ev.agreement_interval(
            ev.shorter_is_safer(
                ev.text_lengths([p.chosen for p in test_pairs]),
                ev.text_lengths([p.rejected for p in test_pairs]),
            ),
            seed=1,
        )
        length_tune = ev.agreement_scores(
            ev.shorter_is_safer(
                ev.text_lengths([p.chosen for p in screen_pairs]),
                ev.text_lengths([p.rejected for p in screen_pairs]),
            )
        ).mean()
        rows.append(
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
                "test, chosen longer": float(
                    ev.agreement_scores(ev.shorter_is_safer(len_c, len_r)[len_c >= len_r]).mean()
                ),
            }
        )
        first = next(iter(check_inputs.values()))
        rb = ev.random_baseline(
            first[0], first[1], 500, seed=1, reference=rows[0]["test agreement"]
        )
        rows.append(
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
            }
        )
        results["test"] = rows
        share = ["tune agreement", "test agreement", "test, chosen shorter", "test, chosen longer"]
        md += ["## Test half", "", md_table(rows, share), ""]
        md += [
            f"{int((len_c < len_r).sum())} test pairs where the chosen response is shorter, "
            f"{int((len_c >= len_r).sum())} where it is not.",
            "",
        ]

        # Paired differences on the same test pairs.
        length_margins = ev.shorter_is_safer(len_c, len_r)
        paper_label = "paper (alpaca, last token, final layer)"
        diffs = []
        for label, inputs in check_inputs.items():
            for other, other_m in (
                ("paper", check_inputs.get(paper_label, (None, None, None))[2]),
                ("shorter is safer", length_margins),
            ):
                if other_m is None or label == paper_label and other == "paper":
                    continue
                d = ev.paired_difference(inputs[2], other_m, seed=2)
                diffs.append(
                    {
                        "setting": label,
                        "minus": other,
                        "difference": d.estimate,
                        "95% CI": f"{d.low * 100:+.1f} to {d.high * 100:+.1f} points",
                    }
                )
        results["test_differences"] = diffs
        md += ["### Paired differences of test agreement", "", md_table(diffs), ""]
        label = next((k for k in check_inputs if k.startswith("chosen defaults (")), None)
        if label is None and "chosen settings (as selected)" in check_inputs:
            label = "chosen settings (as selected)"
        if label in check_inputs:
            c, r, m_test = check_inputs[label][:3]
            rep = ev.agreement_report(m_test, bins=5, seed=1)
            results["test_bins"] = rep.bin_rows()
            md += ["### Chosen defaults by |margin| bin (test half)", ""]
            md += [md_table(rep.bin_rows(), ["agreement", "low", "high"]), ""]

            # 3. Reward-model check on the test half's embeddings at the chosen layer.
            checks = []
            for head, lam in (("linear", 1.0), ("mlp", 1.0), ("linear", 0.25), ("linear", 4.0)):
                res = ev.reward_model_check(
                    c,
                    r,
                    m_test,
                    # RMS, as when section 3 of EVALUATION.md was measured.
                    ev.RewardSettings(head=head, lam=lam, seeds=10, margin_scale="rms"),
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
                print(ev.reward_text(res), flush=True)
            results["reward_check"] = checks
            md += ["## Reward-model check (test half, chosen layer)", ""]
            md += [
                md_table(
                    checks, ["held-out accuracy (mean)", "min", "max", "train accuracy (mean)"]
                ),
                "",
            ]

    # 4. Direction transfer at the choice's template and pooling.
    t, pool, method = choice["template"], choice["pooling"], choice["method"]
    targets = {}
    for name in transfer_instructions():
        for style in ("fixed_opening", "varied_opening"):
            job = f"x_{name}_{style}"
            if cache.has(f"{job}__{t}__{pool}__a"):
                a, b, _ = pair_arrays(cache, job, t, pool)
                targets[f"{name} ({style.replace('_', ' ')})"] = (a, b)
    if targets:
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
            for row in ev.transfer_matrix({f"{contrast} (layer {best})": vectors[best]}, judged):
                rows.append(row)
        results["transfer"] = rows
        md += [f"## Direction transfer ({t}, {pool}, {method})", ""]
        md += [md_table(rows, ["paired_accuracy"]), ""]

    # 5. float32 against bfloat16: the same 48 test pairs, margins on the same directions.
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
        results["dtype_check"] = rows
        md += ["## float32 vs bfloat16 (pair embeddings)", "", md_table(rows, ["same margin sign"])]

    text = "\n".join(md)
    print(text)
    (cache.root / "report.md").write_text(text + "\n", encoding="utf-8")
    (out or cache.root / "report.json").write_text(
        json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8"
    )
    return 0


# --- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "stage", choices=["screen", "test", "transfer", "check", "report", "recipe"]
    )
    parser.add_argument("--cache", type=Path, default=Path("/tmp/legend-eval"))
    parser.add_argument("--templates", default=",".join(TEMPLATES))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--out", type=Path, default=None, help="report: JSON file of the tables")
    args = parser.parse_args(argv)
    cache = Cache(args.cache)
    templates = [t for t in args.templates.split(",") if t]
    split = dev_split(len(hh_pairs()))
    np.save(cache.root / "split.npy", np.stack([split["tune"], split["test"]]))

    if args.stage == "report":
        return report(cache, templates, args.out)
    if args.stage == "recipe":
        return write_recipe(args.out or cache.root / "advbench_varied_refusals.csv")
    lm = load_lm(args.dtype)
    if args.stage == "screen":
        worst = self_check(lm, hh_pairs())
        cache.log(job="self_check", max_relative_difference=worst)
        for template in templates:
            contrast_jobs(cache, lm, template)
            hh_job(cache, lm, "screen", template)
    elif args.stage == "test":
        for template in templates:
            adv = advbench()
            n = len(adv)
            # The recipe on all 520 goals: target openings vs our varied refusals.
            encode_job(
                cache,
                lm,
                "adv_varied_all",
                template,
                [i.instruction for i in adv],
                cycle(ev.VARIED_REFUSALS, n),
                cycle(ev.AFFIRMATIVE_OPENINGS, n),
            )
            hh_job(cache, lm, "test", template)
    elif args.stage == "transfer":
        for template in templates:
            transfer_jobs(cache, lm, template)
    elif args.stage == "check":
        pairs = hh_pairs()
        test = split["test"]
        sel = [pairs[test[j]] for j in CHECK_ROWS]
        for template in templates:
            encode_job(
                cache,
                lm,
                f"hh_check_{args.dtype}",
                template,
                [p.prompt for p in sel],
                [p.chosen for p in sel],
                [p.rejected for p in sel],
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
