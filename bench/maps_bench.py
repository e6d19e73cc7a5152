"""Benchmark 5: 2-D maps (``legend_core.maps``) of 10,000 and 50,000 embeddings.

Synthetic embeddings (576 dimensions, 20 Gaussian clusters of different sizes and
spreads, deterministic) stand in for a data set's response vectors. Each measurement runs
in a fresh interpreter so that its time and peak memory are its own:

- ``maps.umap`` on every point (PCA to 50 dimensions first, then UMAP), 10,000 and
  50,000 points; a 500-point UMAP runs first in the same interpreter so that numba's
  one-off compilation is timed apart (reported as ``warm-up``, also for the sampled runs);
- the fallback for larger sets, as ``maps.embed_2d`` does it: UMAP of a fixed random
  sample of ``DEFAULT_MAX_POINTS`` points (the app's default), and PCA of all points;
- baseline in the same run: PCA of the same points (``maps.pca``).

``python -m bench.maps_bench [--quick]``; results in ``bench/out/maps.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from bench.common import (
    cpu_seconds,
    current_rss_mib,
    fmt,
    in_subprocess,
    peak_rss_mib,
    print_machine,
    table,
    write_result,
)

DIM = 576
SIZES = (10_000, 50_000)
LARGE = 200_000


def synthetic_embeddings(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM)).astype(np.float32) * 3
    weights = rng.dirichlet(np.ones(20))
    labels = rng.choice(20, size=n, p=weights)
    spread = rng.uniform(0.5, 2.0, size=20).astype(np.float32)
    noise = rng.standard_normal((n, DIM), dtype=np.float32)
    return centres[labels] + noise * spread[labels, None]


def worker(kind: str, n: int) -> dict[str, Any]:
    from legend_core import maps

    x = synthetic_embeddings(n)
    out: dict[str, Any] = {"kind": kind, "points": n}
    if kind in ("umap", "sampled"):  # numba compiles UMAP's kernels once per process
        start = time.perf_counter()
        maps.umap(synthetic_embeddings(500, seed=1))
        out["warmup_s"] = time.perf_counter() - start
    before, peak_before = current_rss_mib(), peak_rss_mib()
    wall, cpu = time.perf_counter(), cpu_seconds()
    if kind == "umap":
        coords = maps.umap(x)
    elif kind == "sampled":
        coords = maps.embed_2d(x, "umap").coords
    else:
        coords = maps.pca(x)
    out.update(
        seconds=time.perf_counter() - wall,
        cpu_s=cpu_seconds() - cpu,
        rss_before_mib=before,
        peak_rss_mib=max(peak_rss_mib(), peak_before),
        input_mib=x.nbytes / 2**20,
        laid_out=int(len(coords)),
        finite=bool(np.isfinite(coords).all()),
    )
    return out


def run(quick: bool = False) -> dict[str, Any]:
    from legend_core.maps import DEFAULT_MAX_POINTS

    print("== maps: UMAP of 10,000 and 50,000 embeddings, and the fallback ==")
    info = print_machine()
    sizes = (2_000,) if quick else SIZES
    results = []
    for n in sizes:
        for kind in ("pca", "umap"):
            r = in_subprocess("bench.maps_bench", "--worker", kind, str(n), timeout=1800)
            results.append(r)
            print(f"  {kind} {n:,}: {r['seconds']:.1f}s")
    for kind, n in (("sampled", sizes[-1]), ("sampled", LARGE), ("pca", LARGE)):
        if quick and n == LARGE:
            continue
        r = in_subprocess("bench.maps_bench", "--worker", kind, str(n), timeout=1800)
        results.append(r)
        print(f"  {kind} {n:,}: {r['seconds']:.1f}s")
    pca_time = {r["points"]: r["seconds"] for r in results if r["kind"] == "pca"}
    rows = []
    for r in results:
        name = {
            "umap": "UMAP of every point",
            "pca": "PCA of every point (baseline)",
            "sampled": f"UMAP of a {DEFAULT_MAX_POINTS:,}-point sample (embed_2d default)",
        }[r["kind"]]
        base = pca_time.get(r["points"])
        rows.append(
            [
                name,
                f"{r['points']:,}",
                fmt(r["seconds"]),
                fmt(r["cpu_s"]),
                fmt(r["peak_rss_mib"]),
                fmt(r["rss_before_mib"]),
                fmt(r["seconds"] / base) if base else "",
                fmt(r["warmup_s"]) if "warmup_s" in r else "",
            ]
        )
    print(
        table(
            rows,
            [
                "map",
                "points",
                "wall s",
                "cpu s",
                "peak RSS MiB",
                "RSS before",
                "x PCA",
                "warm-up s",
            ],
        )
    )
    result = {"machine": info, "max_points_default": DEFAULT_MAX_POINTS, "runs": results}
    write_result("maps", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 points, to check it runs")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1])), default=float))
        sys.stdout.flush()
        return
    run(args.quick)


if __name__ == "__main__":
    main()
