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
token, response mean) come out of the same pass too (see :func:`encode_pairs_both`). The
report stage lives in ``scripts/evaluate_report.py``.
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

from legend_core import config  # noqa: E402

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
    """``encode_pairs`` at every layer with both poolings from one forward pass
    (``packing.encode_pairs_poolings``). Checked against two plain ``encode_pairs`` calls in
    :func:`self_check`.

    Returns:
        ``{pooling: (first, second)}``, each (n, layers + 1, hidden) float32, and the
        response lengths in tokens of ``first`` and ``second``.
    """
    from legend_core.method.encode import EncodeSettings
    from legend_core.method.packing import encode_pairs_poolings

    encoded = encode_pairs_poolings(
        lm,
        list(prompts),
        list(first),
        list(second),
        POOLS,
        layers=None,
        settings=EncodeSettings(template, "mean", MAX_LENGTH),
        progress=progress,
    )
    out = {
        pool: tuple(np.stack([e.vectors[k] for k in sorted(e.vectors)], 1) for e in encoded[pool])
        for pool in POOLS
    }
    a, b = encoded[POOLS[0]]
    return out, (a.n_response_tokens, b.n_response_tokens)


def self_check(lm, pairs) -> float:
    """Largest relative difference between the two-pooling pass and plain encode_pairs."""
    from legend_core.method.encode import EncodeSettings
    from legend_core.method.packing import encode_pairs

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
        cycle(config.VARIED_REFUSALS, len(half)),
        cycle(config.AFFIRMATIVE_OPENINGS, len(half)),
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
        cycle(config.AFFIRMATIVE_OPENINGS, m),
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
            cycle(config.AFFIRMATIVE_OPENINGS, n),
        )
        encode_job(
            cache,
            lm,
            f"x_{name}_varied_opening",
            template,
            instructions,
            cycle(config.VARIED_REFUSALS, n, 3),
            cycle(config.AFFIRMATIVE_OPENINGS, n, 5),
        )


def write_recipe(path: Path) -> int:
    """Write the winning contrastive set as a CSV for ``legend build-direction --contrast``.

    AdvBench goals and targets (read from ../shared, written to ``path`` outside the
    repository) with our varied refusals, cycled: the ``adv_varied_all`` set of the report.
    """
    import csv

    from legend_core.data.formats import read_contrast_set

    items = read_contrast_set(ADVBENCH, refusal=config.VARIED_REFUSALS)
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
        from evaluate_report import report

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
                cycle(config.VARIED_REFUSALS, n),
                cycle(config.AFFIRMATIVE_OPENINGS, n),
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
