"""Annotate a stored data set: the method's margins over the store's pairs and cache.

:func:`annotate_dataset` encodes what the embedding cache lacks (through an engine: this
process, ``method.pipeline.local_engine``, or Ray, ``method.distributed.ray_engine``), then
projects the cached vectors and commits margins chunk by chunk, resumably. Pairs that a
direction learned from labels was trained on get cross-fitted margins
(``method.crossfit``). The model-only half (building directions, annotating a file of
pairs) is ``method.pipeline``; this half needs the store, hence the workflows layer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from legend_core.data.store import EmbeddingSpace
from legend_core.method.crossfit import fold_directions, pair_folds
from legend_core.method.directions import Direction
from legend_core.method.pipeline import PairEncoder, check_compatible, check_vectors, local_engine
from legend_core.util import chunks, pair_text_keys, text_key

if TYPE_CHECKING:
    from legend_core.data.store import PairKeys, PairText, Store
    from legend_core.method.encode import Progress
    from legend_core.method.models import LoadedModel
    from legend_core.types import PreferencePair


def run_settings(direction: Direction, model_dtype: str) -> dict[str, Any]:
    """What identifies a margin run besides its data set and direction: everything that
    changes the vectors, including the dtype the forward passes ran in."""
    return {
        "model": direction.model,
        "model_fingerprint": direction.model_fingerprint,
        "layer": direction.layer,
        "template": direction.template,
        "pooling": direction.pooling,
        "max_length": direction.max_length,
        "model_dtype": model_dtype,
    }


#: Pairs per margin commit once vectors are cached (no forward pass: a lost chunk is cheap).
MARGIN_CHUNK = 8192


def annotate_dataset(
    store: Store,
    lm: LoadedModel | None,
    dataset_id: int,
    direction_id: int,
    chunk_size: int = 256,
    progress: Progress | None = None,
    engine: PairEncoder | None = None,
    model_dtype: str | None = None,
    **encode_options: Any,
) -> int:
    """Compute (or finish computing) a stored data set's margins on a stored direction.

    Two phases. First, every text not yet in the store's embedding cache (same model,
    weights, dtype and settings) is encoded and cached, chunk by chunk; a second direction
    on the same settings therefore runs no forward pass at all. Then margins are computed
    from the cached vectors and committed in large chunks. (In practice one pass over the
    cache projects every text it already holds first, and only what it lacks is encoded and
    projected after: :func:`cached_margins`. The pairs are read as ids and stored text keys;
    texts only for the pairs to encode.) A run killed in either phase resumes where it
    stopped and ends with the margins an uninterrupted run gives, since both use the same
    stored (float16) vectors.

    Args:
        store: The database.
        lm: The model, for the default local engine (None when ``engine`` is given).
        dataset_id: A stored data set.
        direction_id: A stored direction.
        chunk_size: Pairs per forward-pass chunk and cache write.
        progress: ``progress(done, total)`` over pairs to encode.
        engine: Where forward passes run; default: this process (see ``distributed``).
        model_dtype: The dtype the engine's model runs in (``float32``, ``bfloat16``, ...);
            required with ``engine``, taken from ``lm`` otherwise.
        **encode_options: Passed to the encoder (batch sizes).

    Returns:
        The margin run's id.
    """
    direction = store.get_direction(direction_id)
    # This process's chunks can be shared with another process on the same texts.
    shared_chunk = chunk_size if engine is None else None
    if engine is None:
        if lm is None:
            raise ValueError("annotate_dataset needs a model or an engine")
        check_compatible(lm, direction)
        if not direction.model_fingerprint:
            direction.model_fingerprint = lm.fingerprint
        engine = local_engine(lm, direction, chunk_size, **encode_options)
        model_dtype = model_dtype or lm.dtype_name
    if not model_dtype:
        raise ValueError("annotate_dataset with an engine needs the engine's model_dtype")
    settings = run_settings(direction, model_dtype)
    folds_of = crossfit_folds(store, dataset_id, direction)
    if folds_of:
        # Part of what the run is: its margins are not the plain projections.
        settings["crossfit"] = crossfit_settings(direction, len(folds_of))
    space = EmbeddingSpace.from_settings(settings)
    run_id = store.start_run(dataset_id, direction_id, settings)
    missing = store.missing_margin_keys(run_id)
    values = cached_margins(store, space, direction.vector, missing, engine, progress, shared_chunk)
    if folds_of:
        values = _crossfit(store, space, direction, missing, folds_of, values)
    for lo in range(0, len(missing), MARGIN_CHUNK):
        hi = min(lo + MARGIN_CHUNK, len(missing))
        ids, chunk = missing.ids[lo:hi], values[lo:hi].tolist()
        # Planner statistics once, by finish_run, not once per chunk.
        store.add_margins(run_id, ids, chunk, refresh_statistics=False)
    store.finish_run(run_id)
    return run_id


def crossfit_folds(store: Store, dataset_id: int, direction: Direction) -> dict[int, int]:
    """Pair id -> fold, for the pairs of a stored data set that ``direction`` learned from
    (empty for a contrastive direction, or a data set it never saw)."""
    if not direction.labels.get("fold_of"):
        return {}
    frame = store.dataset_frame(dataset_id)
    texts = [
        _PairTexts(p, c, r) for p, c, r in zip(frame["prompt"], frame["chosen"], frame["rejected"])
    ]
    folds = pair_folds(direction.labels, texts)
    k = len(fold_directions(direction.labels))
    bad = {f for f in folds if f is not None and not 0 <= f < k}
    if bad:  # a training pair must never get the final vector's (memorised) margin
        raise ValueError(f"direction's folds {sorted(bad)} have no fold direction ({k} given)")
    return {int(i): f for i, f in zip(frame["id"], folds) if f is not None}


def crossfit_settings(direction: Direction, n_pairs: int) -> dict[str, Any]:
    """What a margin run records when its margins are cross-fitted."""
    labels = direction.labels
    return {
        "k": int(labels.get("k_folds", len(fold_directions(labels)))),
        "pairs": int(n_pairs),
        "n_labels": int(labels.get("n_labels", 0)),
        "source": labels.get("source", {}),
    }


def _crossfit(
    store: Store,
    space: EmbeddingSpace,
    direction: Direction,
    missing: PairKeys,
    folds_of: dict[int, int],
    values: np.ndarray,
) -> np.ndarray:
    """Replace the margins of the direction's own training pairs by their fold directions'."""
    out = values.copy()
    vectors = fold_directions(direction.labels)
    for j in range(len(vectors)):
        rows = [i for i, p in enumerate(missing.ids) if folds_of.get(p) == j]
        if not rows:
            continue
        keys = [missing.chosen[i] for i in rows] + [missing.rejected[i] for i in rows]
        projected = store.project_embeddings(space, keys, vectors[j])
        if projected.refused or not projected.found.all():
            raise RuntimeError("cached vectors changed during this run; run it again")
        m = len(rows)
        out[rows] = projected.values[:m] - projected.values[m:]
    return out


def cached_margins(
    store: Store,
    space: EmbeddingSpace,
    vector: np.ndarray,
    pairs: PairKeys,
    engine: PairEncoder,
    progress: Progress | None = None,
    shared_chunk: int | None = None,
) -> np.ndarray:
    """The margins of ``pairs`` on ``vector`` from the cache, encoding what it lacks
    (``shared_chunk``: see :func:`encode_into_cache`).

    One pass over the cache projects every text it holds (its ``found`` mask says which);
    only the pairs with a text it lacks, or holds a vector no forward pass gives (cached
    before the cache checked its input: forgotten here), are read and encoded, and only
    their lacking texts are projected again. A text's projection is the same bit for bit
    in either pass (``Store.project_embeddings``), so margins equal a fresh run's.

    Raises:
        ValueError: A vector is refused again after it was encoded again.
        RuntimeError: A text left the cache between its encoding and its projection
            (forgotten by another job); running again encodes it.
    """
    n = len(pairs)
    keys = pairs.chosen + pairs.rejected
    projected = store.project_embeddings(space, keys, vector)
    values = projected.values.copy()
    if projected.refused:
        store.forget_embeddings(space, projected.refused)
    lacking = np.flatnonzero(~projected.found)  # refused ones are not found
    # Texts are read only for the pairs to encode (both of a pair's: the engine takes pairs).
    todo = [pairs.ids[i] for i in sorted({int(i) % n for i in lacking})]
    encode_into_cache(store, space, store.pair_texts(todo), engine, progress, shared_chunk)
    if len(lacking):
        again = store.project_embeddings(space, [keys[i] for i in lacking], vector)
        if again.refused:
            raise ValueError(f"{len(again.refused)} cached vectors stay refused after re-encoding")
        if not again.found.all():
            raise RuntimeError(
                f"{int((~again.found).sum())} texts left the embedding cache during this run "
                "(forgotten by another job); run it again to encode them"
            )
        values[lacking] = again.values
    return values[:n] - values[n:]


@dataclass(frozen=True)
class _PairTexts:
    prompt: str
    chosen: str
    rejected: str


def encode_into_cache(
    store: Store,
    space: EmbeddingSpace,
    pairs: Sequence[PairText] | Sequence[PreferencePair],
    engine: PairEncoder,
    progress: Progress | None = None,
    shared_chunk: int | None = None,
) -> None:
    """Run ``engine``'s forward passes over ``pairs`` and cache both responses' vectors in
    ``space``, a batch at a time (an interrupted run keeps the batches it finished).

    With ``shared_chunk`` (the local engine's chunk size), the pairs go to the engine one
    such chunk at a time, in an order of this process's own, and each chunk first drops
    the pairs whose two texts another process has cached meanwhile: two processes
    annotating the same texts share the forward passes instead of both running all of
    them. The chunks are the ones the engine would have made, so a process alone computes
    what it computed before.

    Raises:
        ValueError: A hidden state no correct forward pass yields (``check_vectors``).
    """
    done, total = 0, len(pairs)
    if progress:
        progress(0, total)
    parts: list[Sequence[Any]] = [pairs]
    if shared_chunk is not None and total > shared_chunk:
        parts = list(chunks(pairs, shared_chunk))
        random.Random().shuffle(parts)  # another process most likely starts elsewhere
    for part in parts:
        if len(parts) > 1:
            part, skipped = _still_uncached(store, space, part)
            done += skipped
            if progress and skipped:
                progress(done, total)
        for batch, chosen, rejected in engine(part) if part else ():
            check_vectors(batch, chosen, rejected)
            fresh: dict[bytes, np.ndarray] = {}
            for p, c, r in zip(batch, chosen, rejected):
                fresh[text_key(p.prompt, p.chosen)] = c
                fresh[text_key(p.prompt, p.rejected)] = r
            store.put_embeddings(space, fresh)
            done += len(batch)
            if progress:
                progress(done, total)


def _still_uncached(
    store: Store, space: EmbeddingSpace, pairs: Sequence[Any]
) -> tuple[list[Any], int]:
    """The pairs with a text not cached (yet), and how many were dropped."""
    keys = [pair_text_keys(p.prompt, p.chosen, p.rejected) for p in pairs]
    cached = store.cached_keys(space, [k for both in keys for k in both])
    todo = [p for p, (c, r) in zip(pairs, keys) if c not in cached or r not in cached]
    return todo, len(pairs) - len(todo)
