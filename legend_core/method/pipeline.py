"""The Legend method end to end: contrastive set -> direction, preference pairs -> margins.

This is where the model meets the maths: ``encode`` makes vectors, ``directions`` and
``margins`` work on them, and (for stored data sets) ``store`` caches them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from legend_core.method import directions as dirs
from legend_core.method.directions import Direction, Method
from legend_core.method.encode import EncodeSettings, Progress, encode, encode_pairs
from legend_core.method.labelled import direction_margins, fold_directions, pair_folds
from legend_core.method.models import LoadedModel
from legend_core.types import ContrastItem, PreferencePair
from legend_core.util import chunks

if TYPE_CHECKING:
    from legend_core.data.store import PairText, Store


@dataclass
class BuildResult:
    """A direction plus what the app shows to judge it.

    Attributes:
        direction: The direction at the chosen layer, fitted on the training split only,
            so its quality numbers are honest for exactly this vector.
        train: Indices of the contrastive items used for fitting.
        test: Indices held out for the quality numbers.
        harmless: (n, d) embeddings of every harmless response at the chosen layer.
        harmful: (n, d) embeddings of every harmful response at the chosen layer.
        harmless_tokens: Response length in tokens of each harmless response.
        harmful_tokens: Response length in tokens of each harmful response.
        vectors: Layer -> the direction fitted at that layer (on the training split): the
            priors of a direction then learned from labels (``legend_core.workflows.learning``).
    """

    direction: Direction
    train: np.ndarray
    test: np.ndarray
    harmless: np.ndarray
    harmful: np.ndarray
    harmless_tokens: np.ndarray
    harmful_tokens: np.ndarray
    vectors: dict[int, np.ndarray] = field(default_factory=dict)

    def held_out_projections(self) -> tuple[np.ndarray, np.ndarray]:
        """Projections of the held-out harmless and harmful responses on the direction."""
        v = self.direction.vector
        return self.harmless[self.test] @ v, self.harmful[self.test] @ v


def build_direction(
    lm: LoadedModel,
    items: Sequence[ContrastItem],
    settings: EncodeSettings | None = None,
    method: Method = "mean_diff",
    layer: int | str = "best",
    test_fraction: float = 0.25,
    seed: int = 0,
    name: str = "",
    contrast_name: str = "",
    progress: Progress | None = None,
    **encode_options: Any,
) -> BuildResult:
    """Build a safety direction from a contrastive set and measure it on every layer.

    Args:
        lm: The model whose hidden states define the direction.
        items: Contrastive items (instruction, harmful response, harmless response).
        settings: Template, pooling and max_length.
        method: ``mean_diff`` (the paper), ``pca`` or ``logistic``.
        layer: A hidden-state index, or ``best``: the best AUROC by cross-validation inside
            the training split (ties: separation), so the held-out numbers stay honest.
        test_fraction: Share of items held out (split by instruction).
        seed: Seed of the split.
        name: A name for the direction.
        contrast_name: Where the contrastive set came from, kept as metadata.
        progress: ``progress(done, total)`` during encoding.
        **encode_options: Passed to :func:`legend_core.method.encode.encode` (batch sizes).
    """
    settings = settings or EncodeSettings()
    if len(items) < 4:
        raise ValueError(f"a contrastive set needs at least 4 items; this one has {len(items)}")
    if layer != "best" and not (isinstance(layer, int) and 1 <= layer <= lm.num_layers):
        raise ValueError(f"layer must be 'best' or an index in 1..{lm.num_layers}; got {layer!r}")

    instructions = [item.instruction for item in items]
    encoded = encode(
        lm,
        instructions * 2,
        [item.harmless for item in items] + [item.harmful for item in items],
        layers=range(1, lm.num_layers + 1),
        settings=settings,
        progress=progress,
        **encode_options,
    )
    n = len(items)
    tokens_harmless, tokens_harmful = encoded.n_response_tokens[:n], encoded.n_response_tokens[n:]
    train, test = dirs.split_indices(n, test_fraction, seed)

    fitted: dict[int, np.ndarray] = {}
    quality = []
    for k, vectors in encoded.vectors.items():
        fitted[k], q = dirs.layer_quality(
            k,
            vectors[:n],
            vectors[n:],
            train,
            test,
            method,
            tokens_harmless,
            tokens_harmful,
            seed=seed,
        )
        quality.append(q)
    chosen = dirs.best_layer(quality) if layer == "best" else int(layer)

    direction = Direction(
        vector=fitted[chosen],
        model=lm.name,
        model_fingerprint=lm.fingerprint,
        layer=chosen,
        pooling=settings.pooling,
        template=settings.template,
        method=method,
        max_length=settings.max_length,
        name=name,
        contrast_name=contrast_name,
        n_train=len(train),
        n_test=len(test),
        seed=seed,
        quality=quality,
    )
    return BuildResult(
        direction=direction,
        train=train,
        test=test,
        harmless=encoded.vectors[chosen][:n],
        harmful=encoded.vectors[chosen][n:],
        harmless_tokens=tokens_harmless,
        harmful_tokens=tokens_harmful,
        vectors=fitted,
    )


def settings_of(direction: Direction) -> EncodeSettings:
    """The encoder settings a direction was built with (margins must use the same)."""
    return EncodeSettings(
        template=direction.template,  # type: ignore[arg-type]
        pooling=direction.pooling,  # type: ignore[arg-type]
        max_length=direction.max_length,
    )


def check_compatible(lm: LoadedModel, direction: Direction) -> None:
    """Refuse to project one model's hidden states on another model's direction."""
    if direction.vector.shape[0] != lm.hidden_size or direction.layer > lm.num_layers:
        raise ValueError(
            f"direction {direction.name or ''} was built on {direction.model} "
            f"(width {direction.vector.shape[0]}, layer {direction.layer}); "
            f"the loaded model {lm.label} has width {lm.hidden_size} and {lm.num_layers} layers"
        )
    if direction.model_fingerprint and direction.model_fingerprint != lm.fingerprint:
        raise ValueError(
            f"direction was built on weights {direction.model_fingerprint}, "
            f"but the loaded model's weights are {lm.fingerprint}"
        )


def pair_embeddings(
    lm: LoadedModel,
    pairs: Sequence[PreferencePair] | Sequence[PairText],
    direction: Direction,
    progress: Progress | None = None,
    **encode_options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the chosen and rejected responses at the direction's layer."""
    chosen, rejected = encode_pairs(
        lm,
        [p.prompt for p in pairs],
        [p.chosen for p in pairs],
        [p.rejected for p in pairs],
        layers=[direction.layer],
        settings=settings_of(direction),
        progress=progress,
        **encode_options,
    )
    return chosen.vectors[direction.layer], rejected.vectors[direction.layer]


def check_vectors(
    pairs: Sequence[PreferencePair] | Sequence[PairText],
    chosen: np.ndarray,
    rejected: np.ndarray,
) -> None:
    """Refuse hidden states that no correct forward pass yields (not finite, all zeros),
    naming the text, so that no margin is ever computed from one."""
    from legend_core.data.store import vector_problem

    good = np.isfinite(chosen).all(1) & chosen.any(1) & np.isfinite(rejected).all(1)
    good &= rejected.any(1)
    for i in np.flatnonzero(~good):
        pair = pairs[int(i)]
        for side, vectors, response in (
            ("chosen", chosen, pair.chosen),
            ("rejected", rejected, pair.rejected),
        ):
            problem = vector_problem(vectors[i])
            if problem:
                where = f"pair {pair.idx}" if hasattr(pair, "idx") else f"pair {int(i) + 1}"
                raise ValueError(
                    f"the hidden state of {where}'s {side} response is refused: {problem} "
                    f"(prompt {_snippet(pair.prompt)}, response {_snippet(response)})"
                )


def _snippet(text: str, size: int = 60) -> str:
    return repr(text if len(text) <= size else text[:size] + "…")


def annotate_pairs(
    lm: LoadedModel,
    pairs: Sequence[PreferencePair],
    direction: Direction,
    progress: Progress | None = None,
    **encode_options: Any,
) -> np.ndarray:
    """Margins of preference pairs on a direction, in input order.

    Pairs that a direction learned from labels was trained on get cross-fitted margins
    (each from the fold direction that never saw the pair: ``labelled.direction_margins``),
    so annotating a direction's own training pairs never reports what it memorised.
    """
    check_compatible(lm, direction)
    chosen, rejected = pair_embeddings(lm, pairs, direction, progress, **encode_options)
    check_vectors(pairs, chosen, rejected)
    values, _ = direction_margins(pairs, chosen, rejected, direction.vector, direction.labels)
    return values


# An engine turns pairs into (pairs, chosen vectors, rejected vectors) batches at one
# layer; it may yield them in any order and in any batch sizes.
PairEncoder = Callable[
    [Sequence["PairText"]], Iterator[tuple[Sequence["PairText"], np.ndarray, np.ndarray]]
]


def local_engine(
    lm: LoadedModel, direction: Direction, chunk_size: int = 256, **encode_options: Any
) -> PairEncoder:
    """Encode pairs in this process, ``chunk_size`` pairs at a time."""

    def run(pairs: Sequence[PairText]):
        for chunk in chunks(pairs, chunk_size):
            yield chunk, *pair_embeddings(lm, chunk, direction, **encode_options)

    return run


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
    from the cached vectors and committed in large chunks. A run killed in either phase
    resumes where it stopped and ends with the margins an uninterrupted run gives, since
    both use the same stored (float16) vectors.

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
    from legend_core.data.store import EmbeddingSpace
    from legend_core.util import text_key

    direction = store.get_direction(direction_id)
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
    missing = store.pairs_missing_margins(run_id)
    chosen_keys = [text_key(p.prompt, p.chosen) for p in missing]
    rejected_keys = [text_key(p.prompt, p.rejected) for p in missing]

    keys = chosen_keys + rejected_keys
    # A second round only re-encodes vectors the cache held from before it checked them.
    for _round in range(2):
        cached = store.cached_keys(space, keys)
        todo = [
            p
            for p, kc, kr in zip(missing, chosen_keys, rejected_keys)
            if kc not in cached or kr not in cached
        ]
        done = 0
        if progress:
            progress(0, len(todo))
        for pairs, chosen, rejected in engine(todo):
            check_vectors(pairs, chosen, rejected)
            fresh: dict[bytes, np.ndarray] = {}
            for p, c, r in zip(pairs, chosen, rejected):
                fresh[text_key(p.prompt, p.chosen)] = c
                fresh[text_key(p.prompt, p.rejected)] = r
            store.put_embeddings(space, fresh)
            done += len(pairs)
            if progress:
                progress(done, len(todo))

        # One pass over the cache's blocks, keeping each text's projection, not its vector.
        projected = store.project_embeddings(space, keys, direction.vector)
        if not projected.refused:
            break
        store.forget_embeddings(space, projected.refused)
    else:
        raise ValueError(f"{len(projected.refused)} cached vectors stay refused after re-encoding")
    if not projected.found.all():
        raise RuntimeError(
            f"{int((~projected.found).sum())} texts left the embedding cache during this run "
            "(forgotten by another job); run it again to encode them"
        )
    n = len(missing)
    values = projected.values[:n] - projected.values[n:]
    if folds_of:
        values = _crossfit(
            store, space, direction, missing, chosen_keys, rejected_keys, folds_of, values
        )
    for lo in range(0, n, MARGIN_CHUNK):
        hi = min(lo + MARGIN_CHUNK, n)
        store.add_margins(run_id, [p.id for p in missing[lo:hi]], values[lo:hi].tolist())
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
    space: Any,
    direction: Direction,
    missing: Sequence[PairText],
    chosen_keys: list[bytes],
    rejected_keys: list[bytes],
    folds_of: dict[int, int],
    values: np.ndarray,
) -> np.ndarray:
    """Replace the margins of the direction's own training pairs by their fold directions'."""
    out = values.copy()
    vectors = fold_directions(direction.labels)
    for j in range(len(vectors)):
        rows = [i for i, p in enumerate(missing) if folds_of.get(p.id) == j]
        if not rows:
            continue
        keys = [chosen_keys[i] for i in rows] + [rejected_keys[i] for i in rows]
        projected = store.project_embeddings(space, keys, vectors[j])
        if projected.refused or not projected.found.all():
            raise RuntimeError("cached vectors changed during this run; run it again")
        m = len(rows)
        out[rows] = projected.values[:m] - projected.values[m:]
    return out


@dataclass(frozen=True)
class _PairTexts:
    prompt: str
    chosen: str
    rejected: str
