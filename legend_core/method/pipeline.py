"""The Legend method end to end: contrastive set -> direction, preference pairs -> margins.

This is where the model meets the maths: ``encode`` makes vectors, ``directions`` and
``margins`` work on them. Engines (:data:`PairEncoder`) run the forward passes for
``workflows.annotate``, which annotates stored data sets through the store's cache; this
module never imports storage (pairs are anything with three texts: ``types.TextPair``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from legend_core.method import directions as dirs
from legend_core.method.crossfit import direction_margins
from legend_core.method.directions import Direction, Method
from legend_core.method.encode import EncodeSettings, Progress, encode
from legend_core.method.margins import vector_problem
from legend_core.method.models import LoadedModel
from legend_core.method.packing import encode_pairs
from legend_core.types import ContrastItem, PreferencePair, TextPair
from legend_core.util import chunks


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
    pairs: Sequence[TextPair],
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
    pairs: Sequence[TextPair],
    chosen: np.ndarray,
    rejected: np.ndarray,
) -> None:
    """Refuse hidden states that no correct forward pass yields (not finite, all zeros),
    naming the text, so that no margin is ever computed from one."""
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
    (each from the fold direction that never saw the pair: ``crossfit.direction_margins``),
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
    [Sequence[TextPair]], Iterator[tuple[Sequence[TextPair], np.ndarray, np.ndarray]]
]


def local_engine(
    lm: LoadedModel, direction: Direction, chunk_size: int = 256, **encode_options: Any
) -> PairEncoder:
    """Encode pairs in this process, ``chunk_size`` pairs at a time."""

    def run(
        pairs: Sequence[TextPair],
    ) -> Iterator[tuple[Sequence[TextPair], np.ndarray, np.ndarray]]:
        for chunk in chunks(pairs, chunk_size):
            yield chunk, *pair_embeddings(lm, chunk, direction, **encode_options)

    return run
