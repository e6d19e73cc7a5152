"""The experiments behind EVALUATION.md section 6 (issue 13): directions that learn from labels.

Data: ``../shared/data/hh-rlhf-harmless-base/dev.jsonl`` split into the tune and test halves
of ``evaluate_defaults.dev_split`` (seed 6). Default model and settings (plain template,
response-mean pooling, max_length 512, dtype auto). Every layer of every pair is encoded
once (one forward pass per pair) and cached; every stage below reuses the cache.

Stages (results as JSON under ``CACHE/results``):

    encode       dev.jsonl pairs and the demo contrastive set, every layer (resumable)
    contrastive  the demo set's direction per layer (as build-direction fits it), the layer
                 rules (held-out AUROC as before; cross-validated, ``directions.best_layer``),
                 agreement on both halves, label-free length projections
    estimators   probe variants: nested CV on the tune half (the choice), then fitted on the
                 tune half and scored on the test half
    layer-rule   free layer vs contrastive layer vs the 2-SE switch, on the tune half alone
    final        the chosen procedure (``learned_direction.learn_direction``): test half,
                 all 1156 labels (nested, cross-fitted, in-sample) and the learning curve
    fallback     falling back to the contrastive direction when labels do not clearly help
    reward       reward-model check: contrastive vs learned margins, shuffled controls

Usage:

    python scripts/evaluate_labelled.py encode
    python scripts/evaluate_labelled.py contrastive
    python scripts/evaluate_labelled.py estimators
    python scripts/evaluate_labelled.py layer-rule
    python scripts/evaluate_labelled.py final
    python scripts/evaluate_labelled.py fallback
    python scripts/evaluate_labelled.py reward
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Small fits: one BLAS thread each (see probe.single_threaded); set before numpy loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from evaluate_defaults import demo_contrast, dev_split, hh_pairs  # noqa: E402

from legend_core.method.label_agreement import agreement_interval, agreement_scores  # noqa: E402
from legend_core.method.label_quality import length_split, safer_longer  # noqa: E402
from legend_core.method.learned_direction import learn_direction  # noqa: E402
from legend_core.method.probe import (  # noqa: E402
    DEFAULT_CS,
    ProbeSettings,
    best_candidate,
    choose_candidate,
    cv_candidates,
    fit_probe,
    kfold_ids,
    length_basis,
    length_features,
)

CHUNK = 96
LAYERS = list(range(1, 31))
PROBE = ProbeSettings(0.01, prior_weight=1.0, debias_length=True)
FREE_CS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)  # the estimators stage (before the 1e-6)
ESTIMATORS = {
    "plain": ("single", 0.0, False, False),
    "debias": ("single", 0.0, True, False),
    "balance": ("single", 0.0, False, True),
    "prior": ("single", 1.0, False, False),
    "prior+debias": ("single", 1.0, True, False),
    "prior+balance": ("single", 1.0, False, True),
    "debias+balance": ("single", 0.0, True, True),
    "avg2+debias": ("avg2", 0.0, True, False),
    "cat4+debias": ("cat4", 0.0, True, False),
}


# --- encoding --------------------------------------------------------------------------------


def encode(cache: Path) -> None:
    """Every layer of the dev pairs and of the demo contrastive set, in resumable chunks."""
    import torch

    from legend_core.method.encode import EncodeSettings
    from legend_core.method.models import load_model
    from legend_core.method.packing import encode_pairs

    torch.set_num_threads(2)
    lm = load_model("default")
    settings = EncodeSettings("plain", "mean", 512)
    demo = demo_contrast()
    pairs = hh_pairs()
    jobs = {
        "demo": (
            [i.instruction for i in demo],
            [i.harmless for i in demo],
            [i.harmful for i in demo],
        ),
        "hh": ([p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs]),
    }
    for name, (prompts, first, second) in jobs.items():
        if (cache / f"{name}_a.npy").exists():
            continue
        parts = cache / f"{name}_parts"
        parts.mkdir(parents=True, exist_ok=True)
        for lo in range(0, len(prompts), CHUNK):
            part = parts / f"{lo:05d}.npz"
            if part.exists():
                continue
            hi = min(len(prompts), lo + CHUNK)
            start, cpu = time.time(), time.process_time()
            a, b = encode_pairs(
                lm, prompts[lo:hi], first[lo:hi], second[lo:hi], layers=None, settings=settings
            )

            def stack(e):
                return np.stack([e.vectors[k] for k in sorted(e.vectors)], 1).astype(np.float16)

            tmp = parts / f"{lo:05d}.tmp.npz"
            np.savez(tmp, a=stack(a), b=stack(b), ta=a.n_response_tokens, tb=b.n_response_tokens)
            tmp.replace(part)
            entry = {"job": name, "lo": lo, "hi": hi, "wall_s": round(time.time() - start, 1)}
            entry["cpu_s"] = round(time.process_time() - cpu, 1)
            print(json.dumps(entry), flush=True)
        loaded = [np.load(p) for p in sorted(parts.glob("[0-9]*.npz"))]
        np.save(cache / f"{name}_a.npy", np.concatenate([p["a"] for p in loaded]))
        np.save(cache / f"{name}_b.npy", np.concatenate([p["b"] for p in loaded]))
        tokens = [np.concatenate([p[t] for p in loaded]) for t in ("ta", "tb")]
        np.save(cache / f"{name}_tokens.npy", np.stack(tokens))


# --- data ------------------------------------------------------------------------------------


class Data:
    """The cached embeddings, the split, the lengths and the demo set's per-layer directions."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.results = cache / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        pairs = hh_pairs()
        chosen = np.load(cache / "hh_a.npy").astype(np.float32)
        rejected = np.load(cache / "hh_b.npy").astype(np.float32)
        self.chosen, self.rejected = chosen, rejected
        self.diffs = chosen - rejected
        self.n = len(pairs)
        split = dev_split(self.n)
        self.tune, self.test = split["tune"], split["test"]
        self.clen = np.array([len(p.chosen) for p in pairs])
        self.rlen = np.array([len(p.rejected) for p in pairs])
        self.longer = safer_longer(self.clen, self.rlen)
        self.lengths = length_features(self.clen, self.rlen)
        self.harmless = np.load(cache / "demo_a.npy").astype(np.float32)
        self.harmful = np.load(cache / "demo_b.npy").astype(np.float32)
        self.contrast_tokens = np.load(cache / "demo_tokens.npy")

    def d(self, layer: int, rows: np.ndarray | None = None) -> np.ndarray:
        x = self.diffs[:, layer].astype(np.float64)
        return x if rows is None else x[rows]

    def contrastive(self) -> tuple[dict[int, np.ndarray], list, int, int]:
        """The demo set's direction per layer as build_direction fits it (75/25 split, seed
        0, logistic), its quality, the old layer rule's choice and the current one's."""
        from legend_core.method import directions as dirs

        train, test = dirs.split_indices(len(self.harmless), 0.25, 0)
        vectors, quality = {}, []
        for k in LAYERS:
            vectors[k], q = dirs.layer_quality(
                k,
                self.harmless[:, k],
                self.harmful[:, k],
                train,
                test,
                "logistic",
                self.contrast_tokens[0],
                self.contrast_tokens[1],
                seed=0,
            )
            quality.append(q)
        old = max(quality, key=lambda q: (round(q.auroc, 6), q.separation, q.layer)).layer
        return vectors, quality, old, dirs.best_layer(quality)

    def save(self, name: str, obj: object) -> None:
        path = self.results / f"{name}.json"
        path.write_text(json.dumps(obj, indent=1, default=float) + "\n", encoding="utf-8")
        print(f"written {path}")


def agree(values: np.ndarray) -> float:
    return float(agreement_scores(values).mean())


def split_numbers(m: np.ndarray, longer: np.ndarray) -> dict[str, list[float]]:
    iv = agreement_interval(m, seed=1)
    shorter, longer_iv = length_split(m, longer, seed=1)
    return {
        "agreement": [iv.estimate, iv.low, iv.high, iv.n],
        "safer_shorter": [shorter.estimate, shorter.low, shorter.high, shorter.n],
        "safer_longer": [longer_iv.estimate, longer_iv.low, longer_iv.high, longer_iv.n],
    }


# --- stages ----------------------------------------------------------------------------------


def stage_contrastive(data: Data) -> None:
    vectors, quality, old, new = data.contrastive()
    rows = []
    for q in quality:
        v = vectors[q.layer].astype(np.float64)
        m = data.d(q.layer) @ v
        row = {**vars(q), "tune": agree(m[data.tune]), "test": agree(m[data.test])}
        row["test_longer"] = agree(m[data.test][data.longer[data.test] > 0])
        # Label-free length projections: the contrastive set's own length directions, and
        # those of the unlabelled dev pairs.
        basis = length_basis(data.d(q.layer), data.lengths)
        u = v - basis @ (basis.T @ v)
        mt = data.d(q.layer) @ (u / np.linalg.norm(u))
        row["unlabelled_projection_test"] = agree(mt[data.test])
        row["unlabelled_projection_test_longer"] = agree(mt[data.test][data.longer[data.test] > 0])
        rows.append(row)
        print(
            f"layer {q.layer:2d}  auroc {q.auroc:.3f}  cv_auroc {q.cv_auroc:.3f}  "
            f"cv_sep {q.cv_separation:5.2f}  tune {row['tune']:.3f}  test {row['test']:.3f}"
        )
    print(f"old rule: layer {old}; cross-validated rule: layer {new}")
    data.save("contrastive", {"rows": rows, "old_rule": old, "cv_rule": new})


def _features(data: Data, kind: str, rows: np.ndarray) -> dict[int, np.ndarray]:
    if kind == "single":
        return {k: data.d(k, rows) for k in LAYERS}
    width = int(kind[3:])
    sub = data.diffs[rows]
    if kind.startswith("avg"):
        return {
            k: sub[:, k - width : k + width + 1].mean(1).astype(np.float64)
            for k in LAYERS
            if k - width >= 1 and k + width <= LAYERS[-1]
        }
    return {
        k: sub[:, [k - width, k, k + width]].reshape(len(rows), -1).astype(np.float64)
        for k in LAYERS
        if k - width >= 1 and k + width <= LAYERS[-1]
    }


def stage_estimators(data: Data) -> None:
    vectors, *_ = data.contrastive()
    out = {}
    for name, (kind, prior, debias, balance) in ESTIMATORS.items():
        settings = ProbeSettings(0.01, prior, debias, balance)
        priors = vectors if prior and kind == "single" else None
        tune = learn_direction(
            _features(data, kind, data.tune),
            settings,
            FREE_CS,
            priors,
            data.lengths[data.tune],
            data.longer[data.tune],
        )
        m = tune.nested_margins
        longer = data.longer[data.tune]
        test_m = _features(data, kind, data.test)[tune.layer] @ tune.vector.astype(np.float64)
        out[name] = {
            "tune_nested": agree(m),
            "tune_nested_longer": agree(m[longer > 0]),
            "test": split_numbers(test_m, data.longer[data.test]),
            "layer": tune.layer,
            "c": tune.c,
        }
        print(name, json.dumps(out[name]), flush=True)
    data.save("estimators", out)


def stage_layer_rule(data: Data) -> None:
    vectors, _, _, c_layer = data.contrastive()
    out = {}
    for size, repeats in [(25, 10), (50, 8), (100, 8), (200, 8), (289, 8)]:
        scores: dict[str, list[float]] = {"free": [], "contrastive layer": [], "2-SE switch": []}
        for rep in range(repeats):
            perm = np.random.default_rng(500 + rep).permutation(data.tune)
            pool, held = perm[:289], perm[289:]
            rows = np.sort(np.random.default_rng(100 + rep).choice(pool, size, replace=False))
            by_layer = {k: data.d(k, rows) for k in LAYERS}
            cands = cv_candidates(
                by_layer,
                kfold_ids(size, 5, 0),
                PROBE,
                DEFAULT_CS,
                vectors,
                data.lengths[rows],
                data.longer[rows],
            )
            picks = {
                "free": best_candidate(cands),
                "contrastive layer": best_candidate([c for c in cands if c.layer == c_layer]),
                "2-SE switch": choose_candidate(cands, c_layer),
            }
            for rule, c in picks.items():
                settings = ProbeSettings(c.c, 1.0, True)
                fit = fit_probe(
                    by_layer[c.layer],
                    settings,
                    vectors[c.layer],
                    data.lengths[rows],
                    data.longer[rows],
                )
                scores[rule].append(agree(data.d(c.layer, held) @ fit.vector.astype(np.float64)))
        out[size] = {rule: float(np.mean(v)) for rule, v in scores.items()}
        print(size, out[size], flush=True)
    data.save("layer_rule", out)


def _learn(data: Data, rows: np.ndarray, vectors: dict, c_layer: int, nested: bool):
    start = time.time()
    learned = learn_direction(
        {k: data.d(k, rows) for k in LAYERS},
        PROBE,
        DEFAULT_CS,
        vectors,
        data.lengths[rows],
        data.longer[rows],
        nested=nested,
        default_layer=c_layer,
    )
    return learned, time.time() - start


def stage_final(data: Data) -> None:
    from legend_core.method.label_agreement import (
        paired_difference,
        random_baseline,
        shorter_is_safer,
    )

    vectors, _, old, c_layer = data.contrastive()
    out: dict[str, object] = {"contrastive_layer": c_layer, "old_rule_layer": old}
    learned, secs = _learn(data, data.tune, vectors, c_layer, nested=True)
    out["tune"] = {"layer": learned.layer, "c": learned.c, "seconds": secs}
    out["tune_nested"] = split_numbers(learned.nested_margins, data.longer[data.tune])
    test_longer = data.longer[data.test]
    m_learned = data.d(learned.layer, data.test) @ learned.vector.astype(np.float64)
    np.save(data.results / "learned_vector.npy", learned.vector)
    m_cv = data.d(c_layer, data.test) @ vectors[c_layer].astype(np.float64)
    m_old = data.d(old, data.test) @ vectors[old].astype(np.float64)
    length = shorter_is_safer(data.clen[data.test], data.rlen[data.test])
    out["test"] = {
        "learned": split_numbers(m_learned, test_longer),
        "contrastive": split_numbers(m_cv, test_longer),
        "contrastive_old_rule": split_numbers(m_old, test_longer),
        "shorter_is_safer": split_numbers(length, test_longer)["agreement"],
    }
    for name, other in (("contrastive", m_cv), ("contrastive_old_rule", m_old), ("length", length)):
        d = paired_difference(m_learned, other, seed=2)
        out["test"][f"learned_minus_{name}"] = [d.estimate, d.low, d.high]
    rb = random_baseline(
        data.chosen[data.test, learned.layer], data.rejected[data.test, learned.layer], 500, 1
    )
    out["test"]["random"] = [rb.mean, rb.low, rb.high]
    every = np.arange(data.n)
    learned_all, secs_all = _learn(data, every, vectors, c_layer, nested=True)
    out["all"] = {
        "layer": learned_all.layer,
        "c": learned_all.c,
        "seconds": secs_all,
        "nested": split_numbers(learned_all.nested_margins, data.longer),
        "crossfit": split_numbers(learned_all.crossfit_margins, data.longer),
        "in_sample": split_numbers(
            data.d(learned_all.layer) @ learned_all.vector.astype(np.float64), data.longer
        ),
    }
    curve = {}
    for size, repeats in [(25, 10), (50, 8), (100, 6), (200, 5), (400, 5), (len(data.tune), 1)]:
        vals, longs, secs_l = [], [], []
        for rep in range(repeats):
            rows = np.sort(np.random.default_rng(100 + rep).choice(data.tune, size, replace=False))
            fit, secs = _learn(data, rows, vectors, c_layer, nested=False)
            m = data.d(fit.layer, data.test) @ fit.vector.astype(np.float64)
            vals.append(agree(m))
            longs.append(agree(m[test_longer > 0]))
            secs_l.append(secs)
        curve[size] = {
            "mean": float(np.mean(vals)),
            "sd": float(np.std(vals)),
            "longer": float(np.mean(longs)),
            "seconds": float(np.mean(secs_l)),
            "repeats": repeats,
        }
        print("curve", size, curve[size], flush=True)
    out["curve"] = curve
    print(json.dumps({k: v for k, v in out.items() if k != "curve"}, indent=1, default=float))
    data.save("final", out)


def stage_fallback(data: Data) -> None:
    vectors, _, _, c_layer = data.contrastive()
    out = {}
    for size in (25, 50, 100, 200, 289):
        scores: dict[str, list[float]] = {"learned": [], "fallback 2 SE": [], "contrastive": []}
        for rep in range(8):
            perm = np.random.default_rng(500 + rep).permutation(data.tune)
            pool, held = perm[:289], perm[289:]
            rows = np.sort(np.random.default_rng(100 + rep).choice(pool, size, replace=False))
            by_layer = {k: data.d(k, rows) for k in LAYERS}
            cands = cv_candidates(
                by_layer,
                kfold_ids(size, 5, 0),
                PROBE,
                DEFAULT_CS,
                vectors,
                data.lengths[rows],
                data.longer[rows],
            )
            c = choose_candidate(cands, c_layer)
            fit = fit_probe(
                by_layer[c.layer],
                ProbeSettings(c.c, 1.0, True),
                vectors[c.layer],
                data.lengths[rows],
                data.longer[rows],
            )
            prior = vectors[c_layer].astype(np.float64)
            m_learned = agree(data.d(c.layer, held) @ fit.vector.astype(np.float64))
            m_prior = agree(data.d(c_layer, held) @ prior)
            diff = agreement_scores(c.margins) - agreement_scores(by_layer[c_layer] @ prior)
            switch = diff.mean() > 2 * diff.std(ddof=1) / np.sqrt(len(diff))
            scores["learned"].append(m_learned)
            scores["contrastive"].append(m_prior)
            scores["fallback 2 SE"].append(m_learned if switch else m_prior)
        out[size] = {k: float(np.mean(v)) for k, v in scores.items()}
        print(size, out[size], flush=True)
    data.save("fallback", out)


def stage_reward(data: Data) -> None:
    from legend_core.evaluation.reward_check import RewardSettings, reward_model_check

    vectors, _, old, c_layer = data.contrastive()
    path = data.results / "learned_vector.npy"
    if not path.exists():
        raise SystemExit("run the final stage first (it saves the learned direction)")
    final = json.loads((data.results / "final.json").read_text(encoding="utf-8"))
    learned_layer = final["tune"]["layer"]
    sources = {
        f"contrastive, old rule (layer {old})": (old, vectors[old]),
        f"contrastive (layer {c_layer})": (c_layer, vectors[c_layer]),
        f"learned on tune labels (layer {learned_layer})": (learned_layer, np.load(path)),
    }
    out = {}
    rows = data.test
    for head_layer in sorted({learned_layer, LAYERS[-1]}):
        xc, xr = data.chosen[rows, head_layer], data.rejected[rows, head_layer]
        for head in ("linear", "mlp"):
            for name, (layer, vector) in sources.items():
                margins = data.d(layer, rows) @ np.asarray(vector, dtype=np.float64)
                settings = RewardSettings(head=head, lam=1.0, seeds=10, margin_scale="rms")
                check = reward_model_check(xc, xr, margins, settings)
                key = f"head on layer {head_layer} | {head} | {name}"
                out[key] = {
                    "variants": {k: v.mean for k, v in check.variants.items()},
                    "differences": {
                        d.name: {"mean": d.mean, "sd": d.sd, "wins": d.wins, "losses": d.losses}
                        for d in check.differences
                    },
                }
                print(key, json.dumps(out[key]), flush=True)
    data.save("reward", out)


STAGES = {
    "contrastive": stage_contrastive,
    "estimators": stage_estimators,
    "layer-rule": stage_layer_rule,
    "final": stage_final,
    "fallback": stage_fallback,
    "reward": stage_reward,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["encode", *STAGES])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/legend-labelled"))
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.stage == "encode":
        encode(args.cache)
    else:
        STAGES[args.stage](Data(args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
