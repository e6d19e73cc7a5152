"""Pair embeddings through the store's embedding cache, for pairs that are not stored.

``legend evaluate --pairs FILE`` measures a preference file on a direction file: its
embeddings go to the same content-addressed cache a margin run uses (keyed by
:func:`legend_core.util.text_key` in the direction's :class:`EmbeddingSpace`), so a
second run on the same pairs and encoder settings runs no forward pass and loads no model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from legend_core.data.store import EmbeddingSpace
from legend_core.method.margins import vector_problem
from legend_core.method.pipeline import check_compatible, local_engine
from legend_core.util import pair_text_keys
from legend_core.workflows.annotate import encode_into_cache, run_settings

if TYPE_CHECKING:
    from legend_core.data.store import Store
    from legend_core.method.directions import Direction
    from legend_core.method.encode import Progress
    from legend_core.method.models import LoadedModel
    from legend_core.types import PreferencePair


@dataclass(frozen=True)
class PairEmbeddings:
    """The chosen and rejected vectors of some pairs at a direction's layer (float32, as
    the cache holds them), and how many pairs needed a forward pass."""

    chosen: np.ndarray
    rejected: np.ndarray
    encoded: int


def cached_pair_embeddings(
    store: Store,
    pairs: Sequence[PreferencePair],
    direction: Direction,
    model_dtype: str,
    load_model: Callable[[], LoadedModel],
    progress: Progress | None = None,
    chunk_size: int = 256,
) -> PairEmbeddings:
    """Embeddings of ``pairs`` at ``direction``'s layer and encoder settings, from the
    store's cache, encoding (and caching) only the pairs it lacks.

    Every vector returned is read back from the cache, so a first and a second run give
    the same numbers (the cache keeps float16).

    Args:
        store: The database whose cache is used.
        pairs: The pairs, in the order the result keeps.
        direction: Its model, fingerprint, layer, template, pooling and length limit
            pick the cache's space.
        model_dtype: The dtype the model runs in (part of the space), known before loading.
        load_model: Called only when some pair is not cached (or the direction does not
            record its weights' fingerprint, which the space needs).
        progress: ``progress(done, total)`` over the pairs encoded.
        chunk_size: Pairs per forward-pass chunk and cache write (an interrupted run
            keeps the chunks it finished).

    Raises:
        ValueError: The model does not fit the direction, runs in another dtype, or
            yields a hidden state no correct pass yields.
    """
    if not pairs:
        raise ValueError("no pairs to embed")
    lm: LoadedModel | None = None

    def model() -> LoadedModel:
        nonlocal lm
        if lm is None:
            lm = load_model()
            check_compatible(lm, direction)
            if lm.dtype_name != model_dtype:
                raise ValueError(f"the model runs in {lm.dtype_name}, not {model_dtype}")
        return lm

    if not direction.model_fingerprint:  # the space must name the weights
        direction = replace(direction, model_fingerprint=model().fingerprint)
    space = EmbeddingSpace.from_settings(run_settings(direction, model_dtype))
    both = [pair_text_keys(p.prompt, p.chosen, p.rejected) for p in pairs]
    chosen_keys, rejected_keys = [c for c, _ in both], [r for _, r in both]
    keys = chosen_keys + rejected_keys

    cached = store.get_embeddings(space, keys)
    refused = [key for key, vector in cached.items() if vector_problem(vector)]
    if refused:  # cached before the cache checked its input: encode them again
        store.forget_embeddings(space, refused)
        for key in refused:
            del cached[key]
    todo = [
        p
        for p, kc, kr in zip(pairs, chosen_keys, rejected_keys)
        if kc not in cached or kr not in cached
    ]
    if todo:
        engine = local_engine(model(), direction, chunk_size)
        encode_into_cache(store, space, todo, engine, progress, shared_chunk=chunk_size)
        cached = store.get_embeddings(space, keys)
    lost = [key for key in keys if key not in cached]
    if lost:
        raise RuntimeError(
            f"{len(lost)} texts left the embedding cache during this run "
            "(forgotten by another job); run it again to encode them"
        )
    return PairEmbeddings(
        chosen=np.stack([cached[k] for k in chosen_keys]).astype(np.float32),
        rejected=np.stack([cached[k] for k in rejected_keys]).astype(np.float32),
        encoded=len(todo),
    )
