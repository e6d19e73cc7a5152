"""`legend annotate` end to end against the paper's loop (issue 15, part 2).

What the issue measures: real held-out HH-RLHF pairs, every default, ``legend annotate
--pairs F --direction D --out X.jsonl`` run as a user runs it (a fresh process: imports,
model load, tokenisation, forward passes, margins, the output file), against the paper's
loop (:class:`bench.reference.ReferenceEncoder`: full causal LM in float32, one text per
forward pass, every hidden state and the vocabulary logits). Fixed costs (the model load,
imports, the packing self-check) are taken out by differencing: each side runs on the
first ``small`` and the first ``large`` pairs, and the cost per pair is
``(t_large - t_small) / (large - small)``. The two sides alternate (A B A B) so a change in
the machine's load hits both.

Variants (each a direction built with every default except what it names, and annotated
with every default) are timed the same way, so each idea is measured against the same
baseline in the same run. ``--variants`` names them:

- ``default``: ``legend build-direction --out D`` as a user runs it.
- ``max-length=K``: a context window for long dialogues: ``--max-length K`` keeps the last
  ``K`` tokens of prompt and response (the prompt loses its left end first).

Run: ``python -m bench.annotate_bench [--small 24 --large 72 --rounds 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import HH_DEV, ROOT, cpu_seconds, fmt, print_machine, table, write_result

LEGEND = [sys.executable, "-m", "legend_core"]


THREADS: dict[str, str] = {}
#: Directions are kept between runs (git-ignored): building one takes minutes on a CPU.
DIRECTIONS = ROOT / "bench" / "out" / "annotate_directions"


def _run(args: list[str]) -> float:
    """Wall seconds of one ``legend`` command in a fresh process (it must succeed)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **THREADS}
    start = time.perf_counter()
    done = subprocess.run(LEGEND + args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"legend {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return wall


def build_direction(folder: Path, name: str, extra: list[str]) -> Path:
    """``legend build-direction`` with every default but ``extra``; the direction's path."""
    out = folder / name
    if not out.with_suffix(".json").is_file():  # built by an earlier run: the same command
        _run(["build-direction", "--out", str(out), *extra])
    return out


def annotate_seconds(direction: Path, pairs: Path, limit: int, out: Path) -> float:
    """Wall seconds of ``legend annotate`` on the first ``limit`` pairs."""
    args = ["annotate", "--pairs", str(pairs), "--direction", str(direction)]
    return _run([*args, "--out", str(out), "--limit", str(limit)])


def reference_seconds(reference: Any, pairs: list[Any], settings: Any, layer: int) -> float:
    """Seconds of the paper's loop over both responses of ``pairs`` (CPU-time basis too)."""
    from legend_core.method.encode import tokenize

    tokens = tokenize(
        reference.tokenizer,
        [p.prompt for p in pairs] * 2,
        [p.chosen for p in pairs] + [p.rejected for p in pairs],
        settings,
    )
    start = time.perf_counter()
    reference.embed(tokens, [layer], settings.pooling)
    return time.perf_counter() - start


def run(
    quick: bool = False,
    small: int = 24,
    large: int = 72,
    rounds: int = 2,
    variants: tuple[str, ...] = ("default",),
) -> dict[str, Any]:
    """The table above; ``quick`` only checks that it runs (2 and 6 pairs, one round)."""
    if quick:
        small, large, rounds = 2, 6, 1
    from transformers import AutoTokenizer

    from bench.reference import ReferenceEncoder, reference_folder
    from legend_core.data.formats import read_pairs
    from legend_core.method.directions import load_direction
    from legend_core.method.pipeline import settings_of

    info = print_machine()
    pairs = read_pairs(HH_DEV, format="hh-rlhf").pairs[:large]
    work = Path(tempfile.mkdtemp(prefix="legend-annotate-bench-"))
    pair_file = work / "pairs.jsonl"
    with open(pair_file, "w", encoding="utf-8") as handle:
        for p in pairs:
            row = {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
            handle.write(json.dumps(row) + "\n")

    directions: dict[str, Path] = {}
    for variant in variants:
        extra = (
            [] if variant == "default" else ["--" + variant.split("=")[0], variant.split("=")[1]]
        )
        print(f"building the {variant} direction ...", flush=True)
        directions[variant] = build_direction(DIRECTIONS, variant.replace("=", "-"), extra)
    variants = list(variants)
    default = load_direction(directions[variants[0]])
    settings = settings_of(default)
    print(f"{variants[0]} direction: layer {default.layer}, {settings}")

    folder = reference_folder()
    reference = ReferenceEncoder(folder)
    reference.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)

    times: dict[str, dict[int, list[float]]] = {
        name: {small: [], large: []} for name in ["reference", *variants]
    }
    cpu_start = cpu_seconds()
    for round_ in range(rounds):
        for n in (small, large) if round_ % 2 == 0 else (large, small):
            t = reference_seconds(reference, pairs[:n], settings, default.layer)
            times["reference"][n].append(t)
            print(f"reference {n} pairs: {t:.1f} s", flush=True)
            for variant in variants:
                t = annotate_seconds(directions[variant], pair_file, n, work / "out.jsonl")
                times[variant][n].append(t)
                print(f"legend annotate ({variant}) {n} pairs: {t:.1f} s", flush=True)
    own_cpu = cpu_seconds() - cpu_start

    def per_pair(name: str) -> float:
        med = {n: sorted(v)[len(v) // 2] for n, v in times[name].items()}
        return (med[large] - med[small]) / (large - small)

    ref = per_pair("reference")
    rows, result_rows = [], []
    for name in ["reference", *variants]:
        cost = per_pair(name)
        layer = "" if name == "reference" else str(load_direction(directions[name]).layer)
        rows.append([name, layer, fmt(cost), fmt(1 / cost), fmt(ref / cost)])
        result_rows.append({"name": name, "layer": layer, "s_per_pair": cost, "x": ref / cost})
    print(table(rows, ["run", "layer", "s / pair", "pairs / s", "× paper's loop"]))
    return {
        "machine": info,
        "small": small,
        "large": large,
        "rounds": rounds,
        "rows": result_rows,
        "times": {k: {str(n): v for n, v in d.items()} for k, d in times.items()},
        "reference_cpu_s_in_process": own_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=24)
    parser.add_argument("--large", type=int, default=72)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["default"])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads on both sides (see BENCHMARKS)"
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        THREADS["OMP_NUM_THREADS"] = str(args.threads)
    result = run(False, args.small, args.large, args.rounds, tuple(args.variants))
    write_result("annotate", result)


if __name__ == "__main__":
    main()
