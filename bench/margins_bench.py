"""Benchmark 3: margins of 100,000 pairs from cached embeddings with a new direction.

No forward pass: the embeddings are already cached (a new direction on the same model,
layer, pooling and template reuses them). Two measurements:

- **in memory**: ``legend_core.method.margins.margins`` on (100,000 x 576) float32 arrays, as the
  cache hands them out; baseline in the same run: the paper's loop, one pair at a time,
  ``(pred1 - pred2).dot(SV) / norm(SV)`` (their ``annotation.py``).
- **from the database**: ``annotate.annotate_dataset`` for a new direction on a stored data
  set whose embeddings are all cached (read keys, fetch vectors, project, store margins).
  A stand-in model object carries only the name and fingerprint: any forward pass would
  fail, which proves none runs. This one needs a database of N pairs and 2N cached vectors,
  built first (not timed); ``--db-pairs`` sets N (default 100,000).

``python -m bench.margins_bench [--quick]``; results in ``bench/out/margins.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.common import Timing, fmt, interleave, print_machine, table, timed, write_result

N_PAIRS = 100_000
DIM = 576


def paper_loop(chosen: np.ndarray, rejected: np.ndarray, sv: np.ndarray) -> np.ndarray:
    """The reference's per-pair margin, as its annotation loop computes it."""
    norm = np.linalg.norm(sv)
    return np.array([(c - r).dot(sv) / norm for c, r in zip(chosen, rejected)])


def cached_vectors(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float16-rounded vectors (what the cache stores), handed out as float32."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal((n, DIM), dtype=np.float32)
    chosen = (common + 0.3 * rng.standard_normal((n, DIM), dtype=np.float32)).astype(np.float16)
    rejected = (common + 0.3 * rng.standard_normal((n, DIM), dtype=np.float32)).astype(np.float16)
    return chosen.astype(np.float32), rejected.astype(np.float32)


def from_database(n: int) -> dict[str, Any]:
    """Build a store with ``n`` pairs and their cached embeddings; time a new direction's run."""
    from legend_core.data.store import EmbeddingSpace, Store
    from legend_core.method.directions import Direction
    from legend_core.types import PreferencePair
    from legend_core.util import text_key
    from legend_core.workflows.annotate import annotate_dataset

    fingerprint, layer = "bench:0", 15
    with tempfile.TemporaryDirectory(prefix="legend-bench-") as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'margins.db'}")
        start = time.perf_counter()
        pairs = [PreferencePair(f"prompt {i}", f"chosen {i}", f"rejected {i}") for i in range(n)]
        dataset_id = store.add_dataset("cached", pairs)
        space = EmbeddingSpace("bench-model", fingerprint, "alpaca", "mean", layer, 512, "float32")
        chosen, rejected = cached_vectors(n)
        for lo in range(0, n, 10_000):
            batch = {}
            for i in range(lo, min(n, lo + 10_000)):
                batch[text_key(pairs[i].prompt, pairs[i].chosen)] = chosen[i]
                batch[text_key(pairs[i].prompt, pairs[i].rejected)] = rejected[i]
            store.put_embeddings(space, batch)
        setup = time.perf_counter() - start

        vector = np.random.default_rng(7).standard_normal(DIM).astype(np.float32)
        direction = Direction(vector, "bench-model", layer, "mean", "alpaca", "mean_diff")
        direction.model_fingerprint = fingerprint
        direction_id = store.add_direction(direction)
        # Only what annotate_dataset reads; a forward pass would need .model and fail.
        stub = SimpleNamespace(
            fingerprint=fingerprint,
            hidden_size=DIM,
            num_layers=30,
            label="bench-model",
            dtype_name="float32",
        )
        run_id, wall, cpu = timed(lambda: annotate_dataset(store, stub, dataset_id, direction_id))
        got = store.run_frame(run_id)["computed_margin"].to_numpy()
        expected = (chosen @ vector - rejected @ vector) / np.linalg.norm(vector)
        error = float(np.abs(got - expected).max())
        store.close()
    return {"pairs": n, "setup_s": setup, "wall_s": wall, "cpu_s": cpu, "max_abs_error": error}


def run(quick: bool = False, db_pairs: int | None = None) -> dict[str, Any]:
    print("== margins: 100,000 cached pairs, a new direction, no forward pass ==")
    info = print_machine()
    n = 5_000 if quick else N_PAIRS
    from legend_core.method.margins import margins

    chosen, rejected = cached_vectors(n)
    direction = np.random.default_rng(7).standard_normal(DIM).astype(np.float32)
    ours = Timing()
    loop = Timing()
    (result, _, _) = timed(lambda: margins(chosen, rejected, direction))
    for _ in range(1 if quick else 3):
        interleave({"ours": lambda: margins(chosen, rejected, direction)}, 3, {"ours": ours})
        interleave({"loop": lambda: paper_loop(chosen, rejected, direction)}, 1, {"loop": loop})
    check = float(
        np.abs(result[:1000] - paper_loop(chosen[:1000], rejected[:1000], direction)).max()
    )
    in_memory = {
        "pairs": n,
        "ours": ours.as_dict(),
        "paper_loop": loop.as_dict(),
        "ratio_wall": loop.median_wall / ours.median_wall,
        "max_abs_difference_first_1000": check,
    }
    db = from_database(db_pairs or (2_000 if quick else N_PAIRS))
    print(
        table(
            [
                [f"margins(), {n:,} pairs in memory", fmt(ours.median_wall * 1000), "1"],
                [
                    "  baseline: the paper's per-pair loop",
                    fmt(loop.median_wall * 1000),
                    fmt(in_memory["ratio_wall"]),
                ],
                [
                    f"annotate_dataset, {db['pairs']:,} stored pairs, all cached",
                    fmt(db["wall_s"] * 1000),
                    "",
                ],
            ],
            ["step", "ms (median)", "time / ours"],
        )
    )
    print(
        f"database set-up (not timed above): {db['setup_s']:.1f}s; "
        f"max |error| {db['max_abs_error']:.2e}"
    )
    out = {"machine": info, "in_memory": in_memory, "from_database": db}
    write_result("margins", out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check it runs")
    parser.add_argument("--db-pairs", type=int, default=None, help="pairs in the database part")
    args = parser.parse_args()
    run(args.quick, args.db_pairs)


if __name__ == "__main__":
    main()
