"""2-D maps of embeddings for the app: UMAP with a fixed seed, and PCA where UMAP does not fit.

- ``pca``: every point, instant, deterministic (components sign-fixed).
- ``umap``: a deterministic random sample of at most ``max_points`` points (UMAP is slow
  on large sets), first reduced to ``PCA_DIMS`` dimensions by PCA, with exact nearest
  neighbours up to ``EXACT_KNN_MAX`` points (see :func:`umap`). Sets smaller than
  ``MIN_UMAP_POINTS`` get PCA instead: UMAP has no neighbourhood structure to find there.

The result says what was done in one sentence (:attr:`Map2D.note`) for the page to show.
:func:`response_map` lays out a margin run's responses from the embedding cache.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from legend_core.app.views import snippet

if TYPE_CHECKING:
    from legend_core.data.store import RunInfo, Store
    from legend_core.method.directions import Direction

MapMethod = Literal["umap", "pca"]
MAP_METHODS: tuple[str, ...] = ("umap", "pca")
#: UMAP above this many points is sampled down (UMAP's exact-neighbour path stays fast).
DEFAULT_MAX_POINTS = 2000
#: Below this, UMAP is replaced by PCA.
MIN_UMAP_POINTS = 30
#: Dimensions kept by the PCA step before UMAP.
PCA_DIMS = 50
#: Up to this many points, UMAP gets an exact distance matrix.
EXACT_MAX = 6000
#: Up to this many points, UMAP gets exact nearest neighbours found by brute force (BLAS,
#: by blocks) instead of pynndescent's approximate ones, which numba compiles in each new
#: process (~25 s CPU). UMAP of 10,000 points: 6.0 s CPU against 34.4 s; of 50,000: 39 s
#: against 58 s cold, but 30 s once pynndescent is compiled (BENCHMARKS.md, section 5). The
#: search grows as n², so beyond this pynndescent is left to do it.
EXACT_KNN_MAX = 50_000
#: Rows per float64 block in ``pca``: memory stays near the input's, not 2-3 copies of it.
PCA_CHUNK = 8192


@dataclass
class Map2D:
    """A 2-D layout of (some of) the rows of an embedding matrix.

    Attributes:
        coords: (k, 2) float32 coordinates.
        index: (k,) row numbers of the input that were laid out, ascending.
        method: ``umap`` or ``pca``: what was actually run.
        n_total: Rows in the input.
        note: One sentence for the page (what was run, on how many points).
    """

    coords: np.ndarray
    index: np.ndarray
    method: str
    n_total: int
    note: str

    @property
    def sampled(self) -> bool:
        return len(self.index) < self.n_total


def sample_indices(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted row numbers of a deterministic random sample of at most ``max_points`` of ``n``."""
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_points, replace=False))


def pca(x: np.ndarray, k: int = 2) -> np.ndarray:
    """The first ``k`` principal-component scores of ``x`` (zero-padded if rank is lower).

    Each component's sign is fixed (its largest-magnitude loading positive), so the same
    input always gives the same picture.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array; got shape {x.shape}")
    n = x.shape[0]
    out = np.zeros((n, k), dtype=np.float32)
    if n < 2:
        return out
    mean = x.mean(0, dtype=np.float64)
    # One BLAS thread: multi-threaded LAPACK can be orders of magnitude slower on small
    # shared machines, and these decompositions are small.
    with threadpool_limits(1):
        if n >= x.shape[1]:  # tall: eigenvectors of the (d, d) scatter matrix, by chunks
            scatter = np.zeros((x.shape[1], x.shape[1]))
            for lo in range(0, n, PCA_CHUNK):
                centred = x[lo : lo + PCA_CHUNK] - mean  # float64, one chunk at a time
                scatter += centred.T @ centred
            _, vectors = np.linalg.eigh(scatter)
            vt = vectors[:, ::-1].T
        else:
            _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    m = min(k, vt.shape[0])
    components = vt[:m]
    signs = np.sign(components[np.arange(m), np.abs(components).argmax(1)])
    signs[signs == 0] = 1.0
    loadings = (components * signs[:, None]).T
    for lo in range(0, n, PCA_CHUNK):
        out[lo : lo + PCA_CHUNK, :m] = (x[lo : lo + PCA_CHUNK] - mean) @ loadings
    return out


def nearest_neighbours(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``k`` nearest neighbours of every row of ``x``, in UMAP's convention.

    Returns:
        (indices, distances), each (n, k): row ``i`` starts with ``i`` itself at distance 0,
        then its ``k - 1`` nearest other rows, nearest first (Euclidean, in float64).
    """
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    with threadpool_limits(1):  # one BLAS thread, as in pca
        dist, idx = NearestNeighbors(n_neighbors=k - 1, algorithm="brute").fit(x).kneighbors()
    # kneighbors() without a query leaves each row out of its own neighbours; UMAP expects
    # it first at distance 0 (a brute-force distance to itself may come out as 1e-4).
    indices = np.hstack([np.arange(n)[:, None], idx]).astype(np.int32)
    distances = np.hstack([np.zeros((n, 1)), dist]).astype(np.float32)
    return indices, distances


def umap(x: np.ndarray, seed: int = 0, n_neighbors: int = 15, **extra: Any) -> np.ndarray:
    """UMAP of ``x`` to 2-D with a fixed seed (PCA to ``PCA_DIMS`` dimensions first).

    Up to ``EXACT_MAX`` points, the exact distance matrix is computed with BLAS and handed
    to UMAP as precomputed: umap-learn's own exact path calls a Python function per pair.
    Up to ``EXACT_KNN_MAX``, the exact nearest neighbours are (:func:`nearest_neighbours`):
    pynndescent's approximate ones agree on 99.3% of them at 10,000 points, but it takes
    longer, and numba compiles it in every new process.

    Args:
        x: (n, d) points.
        seed: UMAP's random state.
        n_neighbors: UMAP's neighbourhood size (at most n - 1).
        **extra: Other options of ``umap.UMAP``, over ours (the benchmark's variants).
    """
    import umap as umap_learn  # slow import (numba): only when a map is asked for

    x = np.asarray(x, dtype=np.float32)
    if x.shape[1] > PCA_DIMS and x.shape[0] > PCA_DIMS:
        x = pca(x, PCA_DIMS)
    options = {
        "n_components": 2,
        "n_neighbors": max(2, min(n_neighbors, x.shape[0] - 1)),
        "random_state": seed,
        "n_jobs": 1,
        "n_epochs": 200,
    }
    options |= extra
    data = x
    if x.shape[0] <= EXACT_MAX:
        from sklearn.metrics import pairwise_distances

        with threadpool_limits(1):
            data = pairwise_distances(x).astype(np.float32)
        options["metric"] = "precomputed"
    elif x.shape[0] <= EXACT_KNN_MAX and "precomputed_knn" not in options:
        options["precomputed_knn"] = nearest_neighbours(x, options["n_neighbors"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs/seed notices, spectral-init fallbacks
        with threadpool_limits(1):
            coords = umap_learn.UMAP(**options).fit_transform(data)
    return np.asarray(coords, dtype=np.float32)


def embed_2d(
    x: np.ndarray,
    method: MapMethod = "umap",
    max_points: int = DEFAULT_MAX_POINTS,
    seed: int = 0,
    what: str = "points",
) -> Map2D:
    """Lay out the rows of ``x`` in 2-D.

    Args:
        x: (n, d) embeddings.
        method: ``umap`` (sampled to ``max_points``) or ``pca`` (every row).
        max_points: Largest number of rows UMAP is run on.
        seed: Seed of the sample and of UMAP; the same inputs give the same map.
        what: What a row is, for the note ("responses", "texts").
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array; got shape {x.shape}")
    if method not in MAP_METHODS:
        raise ValueError(f"unknown map method {method!r}; use umap or pca")
    n = x.shape[0]
    if method == "pca" or n < MIN_UMAP_POINTS:
        index = np.arange(n)
        why = "" if method == "pca" else f" (too few for UMAP, which needs {MIN_UMAP_POINTS})"
        note = f"PCA of all {n:,} {what}{why}."
        return Map2D(pca(x), index, "pca", n, note)
    index = sample_indices(n, max_points, seed)
    coords = umap(x[index], seed=seed)
    if len(index) < n:
        note = (
            f"UMAP of a random sample of {len(index):,} of {n:,} {what} (seed {seed}); "
            "choose PCA to see them all."
        )
    else:
        note = f"UMAP of all {n:,} {what} (seed {seed})."
    return Map2D(coords, index, "umap", n, note)


# --- the response map of a margin run ----------------------------------------------------------


@dataclass
class ResponseMap:
    """The response map's table and what the page should say about it.

    ``frame`` has one row per laid-out response: x, y, pair_id, side (chosen/rejected),
    projection (on the direction), margin (effective), and text (a plain snippet).
    """

    frame: pd.DataFrame
    note: str
    n_pairs: int
    n_missing: int


def response_map(
    store: Store,
    run: RunInfo,
    direction: Direction,
    frame: pd.DataFrame,
    method: MapMethod = "umap",
    max_points: int = DEFAULT_MAX_POINTS,
    seed: int = 0,
) -> ResponseMap:
    """Lay out the chosen and rejected responses of a run's pairs from the embedding cache.

    No forward pass: pairs whose embeddings are not cached are left out (and counted).
    UMAP runs on a random sample of pairs (both responses of each) so that at most
    ``max_points`` responses are laid out; PCA lays out all of them.

    Args:
        store: The store holding the cache.
        run: The margin run (its settings name the embedding space).
        direction: The run's direction (for each response's projection).
        frame: The run's pairs (``Store.run_frame``), those with margins are mapped.
        method: ``umap`` or ``pca``.
        max_points: Most responses UMAP lays out.
        seed: Seed of the sample and of UMAP.
    """
    from legend_core.data.store import EmbeddingSpace
    from legend_core.util import text_key

    pairs = frame[frame["computed_margin"].notna()]
    if method == "umap" and len(pairs) * 2 > max_points:
        keep = sample_indices(len(pairs), max(1, max_points // 2), seed)
        pairs = pairs.iloc[keep]
    keys_c = [text_key(p, c) for p, c in zip(pairs["prompt"], pairs["chosen"])]
    keys_r = [text_key(p, r) for p, r in zip(pairs["prompt"], pairs["rejected"])]
    cached = store.get_embeddings(EmbeddingSpace.from_settings(run.settings), keys_c + keys_r)
    ok = np.array([c in cached and r in cached for c, r in zip(keys_c, keys_r)], dtype=bool)
    n_missing = int((~ok).sum())
    pairs = pairs[ok]
    columns = ["x", "y", "pair_id", "side", "projection", "margin", "text"]
    if pairs.empty:
        note = "No cached embeddings for this run: compute its margins to fill the cache."
        return ResponseMap(pd.DataFrame(columns=columns), note, 0, n_missing)
    keys_c = [k for k, good in zip(keys_c, ok) if good]
    keys_r = [k for k, good in zip(keys_r, ok) if good]
    x = np.stack([cached[k] for k in keys_c] + [cached[k] for k in keys_r])
    n = len(pairs)
    layout = embed_2d(x, method, max_points=max(len(x), 1), seed=seed, what="responses")
    if method == "umap" and n < len(frame[frame["computed_margin"].notna()]):
        total = int(frame["computed_margin"].notna().sum())
        layout.note = (
            f"UMAP of the {2 * n:,} responses of a random sample of {n:,} of {total:,} pairs "
            f"(seed {seed}); choose PCA to see them all."
        )
    sides = np.array(["chosen"] * n + ["rejected"] * n)
    pair_ids = np.concatenate([pairs["pair_id"].to_numpy()] * 2)
    margins = np.concatenate([pairs["effective_margin"].to_numpy(dtype=np.float64)] * 2)
    texts = list(pairs["chosen"]) + list(pairs["rejected"])
    idx = layout.index
    out = pd.DataFrame(
        {
            "x": layout.coords[:, 0],
            "y": layout.coords[:, 1],
            "pair_id": pair_ids[idx].astype(np.int64),
            "side": sides[idx],
            "projection": (x @ direction.vector)[idx].astype(np.float64),
            "margin": margins[idx],
            "text": [snippet(texts[i]) for i in idx],
        }
    )
    return ResponseMap(out, layout.note, n, n_missing)
