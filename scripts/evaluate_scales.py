"""Which margin scale should ``legend export`` use by default? The reward-model check on
margins exactly as exported (issue 11).

Protocol (the one of EVALUATION.md): ``../shared/data/hh-rlhf-harmless-base/dev.jsonl``
split once by the seeded permutation of ``evaluate_defaults.dev_split`` into a *tune* half
(the scale is chosen there) and a *test* half (reported, never chosen on). Rows are read
from that file and stored only in a throwaway database under ``--work`` (``/tmp`` by
default), never in the project.

Stages:

    encode   load the demo (our contrastive set, the app's default direction), store the
             two halves as data sets and compute their margins through
             ``annotate.annotate_dataset`` (bfloat16 on CPU, as EVALUATION.md); embeddings
             land in the store's cache
    report   for each half and each scale: ``exports.export_dataset`` writes a JSONL file
             (the CLI's own export path, default filters), the file is read back, each row's
             embeddings are looked up by its exported prompt and responses, and reward heads
             are trained on them with TRL's loss ``-log σ(r_c - r_r - margin)`` (no λ: the
             margin column as it is), against the plain loss and the same scale's margins
             shuffled among the training pairs (the control)

The choice rule, fixed before any number was computed: on the tune half, the scale with the
highest held-out accuracy averaged over the linear and the MLP head; where the best scales
are within one standard error of the paired difference of each other, the simplest one in
the order rms, std, minmax, bins, none (rms first: it keeps every margin's sign and zero,
has one parameter and puts a typical margin at 1, the size of a reward gap the loss already
works with).

Usage:

    python scripts/evaluate_scales.py encode
    python scripts/evaluate_scales.py report --seeds 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from evaluate_defaults import HH_DEV, dev_split, hh_pairs  # noqa: E402

from legend_core.evaluation.reward_check import (  # noqa: E402
    RewardSettings,
    pair_accuracy,
    train_reward_head,
)
from legend_core.method.directions import split_indices  # noqa: E402
from legend_core.method.margins import SCALES  # noqa: E402

HALVES = ("tune", "test")


def _store(work: Path):
    from legend_core.data.store import Store

    work.mkdir(parents=True, exist_ok=True)
    return Store(f"sqlite:///{work / 'scales.db'}")


def encode(work: Path, dtype: str, threads: int) -> int:
    """Store both halves and compute their margins on the demo direction (cached)."""
    import torch

    from legend_core.method.models import load_model
    from legend_core.workflows.annotate import annotate_dataset
    from legend_core.workflows.demo import load_demo

    torch.set_num_threads(threads)
    store = _store(work)
    lm = load_model("default", device="cpu", dtype=dtype)
    start = time.time()
    ids = load_demo(store, lm)
    print(f"demo direction {ids.direction_id} ({time.time() - start:.0f} s)", flush=True)
    pairs = hh_pairs()
    split = dev_split(len(pairs))
    names = {d.name: d.id for d in store.list_datasets()}
    runs = {}
    for half in HALVES:
        name = f"hh-dev-{half}"
        dataset_id = names.get(name)
        if dataset_id is None:
            dataset_id = store.add_dataset(
                name, [pairs[i] for i in split[half]], source=str(HH_DEV), format="hh"
            )
        t0 = time.time()

        def progress(done: int, total: int, half: str = half, t0: float = t0) -> None:
            if done == total or done % 64 == 0:
                print(f"{half}: {done}/{total} pairs, {time.time() - t0:.0f} s", flush=True)

        runs[half] = annotate_dataset(store, lm, dataset_id, ids.direction_id, progress=progress)
    (work / "runs.json").write_text(json.dumps(runs) + "\n", encoding="utf-8")
    print(f"runs {runs}; {time.time() - start:.0f} s in all", flush=True)
    return 0


def _runs(store) -> dict[str, int]:
    """The finished margin run of each half (encode may still be running the other)."""
    names = {d.id: d.name for d in store.list_datasets()}
    return {
        names[r.dataset_id].removeprefix("hh-dev-"): r.id
        for r in store.list_runs()
        if names[r.dataset_id].startswith("hh-dev-") and r.status == "finished"
    }


def exported(store, run_id: int, scale: str, out: Path) -> tuple[np.ndarray, ...]:
    """Export a run with ``scale`` through ``export_dataset``, read the file back, and
    return (chosen embeddings, rejected embeddings, margins, manifest) row by row."""
    from legend_core.data.exports import export_dataset
    from legend_core.data.store import EmbeddingSpace
    from legend_core.util import text_key

    path = out / f"run{run_id}-{scale}.jsonl"
    manifest = export_dataset(store, run_id, path, scale=scale)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    space = EmbeddingSpace.from_settings(store.get_run(run_id).settings)
    keys_c = [text_key(r["prompt"], r["chosen"]) for r in rows]
    keys_r = [text_key(r["prompt"], r["rejected"]) for r in rows]
    cached = store.get_embeddings(space, keys_c + keys_r)
    chosen = np.stack([cached[k] for k in keys_c]).astype(np.float32)
    rejected = np.stack([cached[k] for k in keys_r]).astype(np.float32)
    margins = np.array([r["margin"] for r in rows], dtype=np.float64)
    return chosen, rejected, margins, manifest


def check(
    chosen: np.ndarray,
    rejected: np.ndarray,
    margins: dict[str, np.ndarray],
    settings: RewardSettings,
) -> dict[str, list[float]]:
    """Held-out accuracy per seed of the plain head and of each scale and its control.

    Same protocol as ``reward_check.reward_model_check`` (a seeded split per seed, features
    standardized on the training pairs, all heads from the same initial weights), but the
    margins are the exported ones, used as they are (λ = 1, TRL's loss).
    """
    import torch

    out: dict[str, list[float]] = {"plain": []}
    for scale in margins:
        out[scale] = []
        out[f"{scale} shuffled"] = []
    torch.set_num_threads(1)
    for seed in range(settings.seeds):
        train, test = split_indices(len(chosen), settings.test_fraction, seed)
        both = np.concatenate([chosen[train], rejected[train]])
        mean, sd = both.mean(0), both.std(0) + 1e-6
        xc, xr = (chosen[train] - mean) / sd, (rejected[train] - mean) / sd
        tc = torch.as_tensor((chosen[test] - mean) / sd)
        tr = torch.as_tensor((rejected[test] - mean) / sd)
        order = np.random.default_rng(10_000 + seed).permutation(len(train))
        head = train_reward_head(xc, xr, None, settings, seed)
        out["plain"].append(pair_accuracy(head, tc, tr))
        for scale, m in margins.items():
            for name, values in ((scale, m[train]), (f"{scale} shuffled", m[train][order])):
                head = train_reward_head(xc, xr, values, settings, seed)
                out[name].append(pair_accuracy(head, tc, tr))
    return out


def summary(acc: dict[str, list[float]]) -> list[dict]:
    """One row per variant: mean and sd of held-out accuracy, and the paired differences
    against the plain loss and against the same scale's shuffled control."""
    plain = np.array(acc["plain"])
    rows = []
    for name, values in acc.items():
        a = np.array(values)
        row = {"variant": name, "mean": a.mean(), "sd": a.std(ddof=1)}
        if name != "plain":
            d = a - plain
            row.update({"minus plain": d.mean(), "se plain": d.std(ddof=1) / np.sqrt(len(d))})
            row.update({"wins": int((d > 0).sum()), "losses": int((d < 0).sum())})
        if name in SCALES:
            d = a - np.array(acc[f"{name} shuffled"])
            row.update({"minus shuffled": d.mean(), "se shuffled": d.std(ddof=1) / np.sqrt(len(d))})
            row.update({"wins shuf": int((d > 0).sum()), "losses shuf": int((d < 0).sum())})
        rows.append(row)
    return rows


def table(rows: Sequence[dict]) -> str:
    """Rows as a markdown table; shares in %, differences in points."""
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def cell(key: str, value) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        if key in ("mean", "sd"):
            return f"{value:.1%}"
        if isinstance(value, float):
            return f"{value * 100:+.2f}" if "minus" in key else f"{value * 100:.2f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def report(work: Path, seeds: int, heads: Sequence[str], halves: Sequence[str]) -> int:
    """The check on both halves; prints markdown tables and writes ``scales.json``."""
    store = _store(work)
    runs = _runs(store)
    out = work / "exports"
    out.mkdir(exist_ok=True)
    results: dict = {}
    for half in halves:
        run_id = runs[half]
        margins, manifests = {}, {}
        chosen = rejected = None
        for scale in SCALES:
            c, r, m, manifest = exported(store, run_id, scale, out)
            if chosen is None:
                chosen, rejected = c, r
            elif not (np.array_equal(c, chosen) and np.array_equal(r, rejected)):
                raise RuntimeError("exports of one run differ in their rows")
            margins[scale], manifests[scale] = m, manifest["margin"]
        raw = margins["none"]
        print(
            f"\n## {half} half: {len(raw)} pairs exported; raw margins: positive "
            f"{(raw > 0).mean():.1%}, median |m| {np.median(np.abs(raw)):.2f}, "
            f"RMS {np.sqrt(np.mean(raw**2)):.2f}, max |m| {np.abs(raw).max():.2f}",
            flush=True,
        )
        results[half] = {"n": len(raw), "manifest_margin": manifests, "heads": {}}
        for head in heads:
            settings = RewardSettings(head=head, lam=1.0, seeds=seeds)
            t0 = time.time()
            acc = check(chosen, rejected, margins, settings)
            rows = summary(acc)
            results[half]["heads"][head] = {"accuracies": acc, "rows": rows}
            print(f"\n### {half}, {head} head ({seeds} seeds, {time.time() - t0:.0f} s)\n")
            print(table(rows), flush=True)
        both = {
            s: np.mean([np.mean(results[half]["heads"][h]["accuracies"][s]) for h in heads])
            for s in SCALES
        }
        results[half]["mean_over_heads"] = both
        print(f"\n{half}: mean over heads " + ", ".join(f"{s} {v:.2%}" for s, v in both.items()))
    path = work / f"scales-{'-'.join(halves)}.json"
    path.write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")
    print(f"\nwritten {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["encode", "report"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/legend-scales"))
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--heads", default="linear,mlp")
    parser.add_argument("--halves", default="tune,test", help="tune first: the choice")
    args = parser.parse_args(argv)
    if args.stage == "encode":
        return encode(args.work, args.dtype, args.threads)
    return report(args.work, args.seeds, args.heads.split(","), args.halves.split(","))


if __name__ == "__main__":
    raise SystemExit(main())
