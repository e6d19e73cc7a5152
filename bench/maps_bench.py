"""Benchmark 5: 2-D maps (``legend_core.app.maps``) of 10,000 and 50,000 embeddings.

Synthetic embeddings (576 dimensions, 20 Gaussian clusters of different sizes and
spreads, deterministic) stand in for a data set's response vectors. Each measurement runs
in a fresh interpreter so that its time and peak memory are its own:

- ``maps.umap`` on every point (PCA to 50 dimensions first, then UMAP), 10,000 and
  50,000 points; a 500-point UMAP runs first in the same interpreter so that numba's
  one-off compilation is timed apart (reported as ``warm-up``, also for the sampled runs);
- the fallback for larger sets, as ``maps.embed_2d`` does it: UMAP of a fixed random
  sample of ``DEFAULT_MAX_POINTS`` points (the app's default), and PCA of all points;
- baseline in the same run: PCA of the same points (``maps.pca``);
- UMAP settings at 10,000 points (issue 15: under 15 s, the same picture): each variant
  against today's settings (pynndescent's approximate neighbours, 200 epochs, spectral
  init) timed in the same run, each in a fresh interpreter after the same 500-point
  warm-up; seeds 0 and 1 of both, so that "the same picture" is judged against what a
  change of seed does. Quality: trustworthiness (``sklearn.manifold.trustworthiness``'s
  formula, k = 15, against the 576-dimensional input) and the overlap of each point's 15
  and 150 nearest neighbours in the layout with today's layout.

``python -m bench.maps_bench [--quick] [--no-variants]``; results in ``bench/out/maps.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from bench.common import (
    OUT,
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


#: UMAP variants at 10,000 points: name -> (what it is, options of ``maps.umap``).
#: ``precomputed_knn`` left empty makes umap-learn run pynndescent, as before issue 15.
PYNNDESCENT = {"precomputed_knn": (None, None, None)}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "today": ("today's settings: pynndescent neighbours (baseline)", PYNNDESCENT),
    "today_warm": ("today's settings, pynndescent compiled in the warm-up", PYNNDESCENT),
    "today_fullmem": ("pynndescent with low_memory=False", {**PYNNDESCENT, "low_memory": False}),
    "exact": ("exact neighbours (maps.nearest_neighbours): the new default", {}),
    "exact_e100": ("exact neighbours, 100 epochs", {"n_epochs": 100}),
    "exact_pca_init": ("exact neighbours, PCA init", {"init": "pca"}),
    "exact_k10": ("exact neighbours, n_neighbors=10", {"n_neighbors": 10}),
}
VARIANT_POINTS = 10_000
#: Layouts of the variants, kept between the workers and the quality measures.
LAYOUTS = OUT / "maps_layouts"


def worker(kind: str, n: int, seed: int = 0) -> dict[str, Any]:
    from legend_core.app import maps

    x = synthetic_embeddings(n)
    out: dict[str, Any] = {"kind": kind, "points": n}
    if kind in VARIANTS:
        return variant_worker(kind, x, seed)
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


def variant_worker(kind: str, x: np.ndarray, seed: int) -> dict[str, Any]:
    """One UMAP variant in this fresh process: warm-up, then timed; the layout is saved."""
    from legend_core.app import maps

    out: dict[str, Any] = {"kind": kind, "points": len(x), "seed": seed}
    start = time.perf_counter()
    maps.umap(synthetic_embeddings(500, seed=1))  # numba compiles UMAP's kernels
    if kind == "today_warm":  # ... and pynndescent's, which a 500-point UMAP never runs
        from umap.umap_ import nearest_neighbors

        small = maps.pca(synthetic_embeddings(500, seed=1), maps.PCA_DIMS)
        nearest_neighbors(small, 15, "euclidean", {}, False, np.random.RandomState(0), n_jobs=1)
    out["warmup_s"] = time.perf_counter() - start
    before, peak_before = current_rss_mib(), peak_rss_mib()
    wall, cpu = time.perf_counter(), cpu_seconds()
    coords = maps.umap(x, seed=seed, **VARIANTS[kind][1])
    out.update(
        seconds=time.perf_counter() - wall,
        cpu_s=cpu_seconds() - cpu,
        peak_rss_mib=max(peak_rss_mib(), peak_before),
        rss_before_mib=before,
    )
    if kind == "today_warm":  # how close pynndescent's neighbours are to the exact ones
        from umap.umap_ import nearest_neighbors

        reduced = maps.pca(x, maps.PCA_DIMS)
        approx, _, _ = nearest_neighbors(
            reduced, 15, "euclidean", {}, False, np.random.RandomState(seed), n_jobs=1
        )
        exact, _ = maps.nearest_neighbours(reduced, 15)
        found = [len(set(a[1:]) & set(b[1:])) for a, b in zip(approx, exact, strict=True)]
        out["pynndescent_recall"] = float(np.mean(found) / 14)
    LAYOUTS.mkdir(parents=True, exist_ok=True)
    np.save(LAYOUTS / f"{kind}_s{seed}.npy", coords)
    return out


def knn_sets(y: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest other rows (exact)."""
    from sklearn.neighbors import NearestNeighbors
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return NearestNeighbors(n_neighbors=k).fit(y).kneighbors(return_distance=False)


def trustworthiness(x: np.ndarray, y: np.ndarray, k: int = 15, block: int = 256) -> float:
    """``sklearn.manifold.trustworthiness(x, y, n_neighbors=k)``, by blocks of rows.

    sklearn's holds n × n float64 distances and two n × n int64 rank matrices (2.4 GB at
    10,000 points); this computes each row's ranks from one block of distances at a time.
    ``run`` checks that both agree on a subset.
    """
    from threadpoolctl import threadpool_limits

    n = len(x)
    embedded = knn_sets(y, k)
    xd = np.asarray(x, dtype=np.float64)
    sq = (xd * xd).sum(1)
    total = 0.0
    with threadpool_limits(1):
        for lo in range(0, n, block):
            rows = np.arange(lo, min(n, lo + block))
            d = sq[rows, None] + sq[None, :] - 2 * xd[rows] @ xd.T
            d[np.arange(len(rows)), rows] = np.inf
            near = d[np.arange(len(rows))[:, None], embedded[rows]]
            ranks = (d[:, None, :] < near[:, :, None]).sum(-1) + 1 - k  # rank in x, minus k
            total += ranks[ranks > 0].sum()
    return float(1 - total * 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0)))


def overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean share of each point's ``k`` nearest neighbours that two layouts have in common."""
    na, nb = knn_sets(a, k), knn_sets(b, k)
    return float(np.mean([len(set(p) & set(q)) / k for p, q in zip(na, nb, strict=True)]))


def run_variants(n: int = VARIANT_POINTS) -> list[dict[str, Any]]:
    """Time every variant (seeds 0 and 1 of today's and the new default), then judge them."""
    from sklearn.manifold import trustworthiness as sklearn_trustworthiness

    print(f"== UMAP variants at {n:,} points, against today's settings in the same run ==")
    plan = [(kind, 0) for kind in VARIANTS] + [("today", 1), ("exact", 1)]
    results = []
    for kind, seed in plan:
        r = in_subprocess("bench.maps_bench", "--worker", kind, str(n), str(seed), timeout=1800)
        results.append(r)
        print(f"  {kind} seed {seed}: {r['seconds']:.1f}s wall, {r['cpu_s']:.1f}s CPU")
    x = synthetic_embeddings(n)
    today = np.load(LAYOUTS / "today_s0.npy")
    sub = np.random.default_rng(0).choice(n, 2000, replace=False)
    ours = trustworthiness(x[sub], today[sub])
    theirs = sklearn_trustworthiness(x[sub].astype(np.float64), today[sub], n_neighbors=15)
    assert abs(ours - theirs) < 1e-9, (ours, theirs)
    base = next(r for r in results if (r["kind"], r["seed"]) == ("today", 0))
    rows = []
    for r in results:
        y = np.load(LAYOUTS / f"{r['kind']}_s{r['seed']}.npy")
        r["trustworthiness"] = trustworthiness(x, y)
        r["overlap15_today"] = overlap(y, today, 15)
        r["overlap150_today"] = overlap(y, today, 150)
        r["x_today_wall"] = r["seconds"] / base["seconds"]
        r["x_today_cpu"] = r["cpu_s"] / base["cpu_s"]
        rows.append(
            [
                f"{VARIANTS[r['kind']][0]}, seed {r['seed']}",
                fmt(r["seconds"]),
                fmt(r["cpu_s"]),
                fmt(r["x_today_wall"]),
                fmt(r["x_today_cpu"]),
                f"{r['trustworthiness']:.4f}",
                f"{r['overlap15_today']:.3f}",
                f"{r['overlap150_today']:.3f}",
                fmt(r["peak_rss_mib"]),
            ]
        )
    header = ["variant", "wall s", "cpu s", "x today wall", "x today cpu", "trust k=15"]
    print(table(rows, header + ["overlap k=15", "overlap k=150", "peak RSS MiB"]))
    recall = next(r["pynndescent_recall"] for r in results if r["kind"] == "today_warm")
    print(f"  pynndescent's neighbours: {recall:.2%} of the exact 14 nearest (self left out)")
    return results


def run(quick: bool = False, variants: bool = True) -> dict[str, Any]:
    from legend_core.app.maps import DEFAULT_MAX_POINTS

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
    if variants and not quick:
        result["variants"] = run_variants()
    write_result("maps", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 points, to check it runs")
    parser.add_argument("--no-variants", action="store_true", help="skip the UMAP variants")
    parser.add_argument("--only-variants", action="store_true", help="only the UMAP variants")
    parser.add_argument("--worker", nargs="+", metavar="KIND N [SEED]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, n, *seed = args.worker
        print(json.dumps(worker(kind, int(n), *map(int, seed)), default=float))
        sys.stdout.flush()
        return
    if args.only_variants:
        print_machine()
        write_result("maps_variants", {"variants": run_variants()})
        return
    run(args.quick, variants=not args.no_variants)


if __name__ == "__main__":
    main()
