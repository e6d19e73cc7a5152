"""Both responses of a preference pair in one packed row: the prompt runs once.

Each pair becomes one row ``prompt | chosen tail | rejected tail``: the rejected tail takes
the positions right after the prompt and an attention mask hides the chosen tail from it,
so both continuations see exactly what they would see alone. A model that does not honour
such a mask and positions is found once (:func:`packing_verified`, remembered on
``lm.packing`` and ``lm.packing_note``) and gets two plain :func:`encode` passes instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from legend_core.method.encode import (
    Encoded,
    EncodeSettings,
    Pooling,
    Progress,
    Tokenized,
    check_poolings,
    default_batch_tokens,
    encode_poolings,
    forward_layers,
    length_batches,
    pool_hidden,
    tokenize,
    wanted_layers,
)
from legend_core.method.models import LoadedModel

log = logging.getLogger(__name__)


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``limit``."""
    n = 0
    for x, y in zip(a[:limit], b[:limit]):
        if x != y:
            break
        n += 1
    return n


#: Attention implementations that take the custom 4-D mask of packed pairs.
PACKING_ATTENTION = ("sdpa", "eager")

#: Largest relative difference (L2, per vector) between a packed pair and two separate
#: passes that is still float rounding, by the model's dtype. Measured on the default model
#: (worst of every layer, mean and last pooling): 2e-7 in float32, 2.5e-3 in float16 and
#: 1.1e-2 in bfloat16. A mask the model ignores gave 0.05-0.7 on tiny random Llama, Qwen2,
#: GPT-2 and Gemma models and about 13 on the default model. A false alarm costs speed
#: (two passes), a missed one wrong vectors: the half-precision bound sits low.
PACKING_TOLERANCE = {"float32": 1e-3, "float64": 1e-6}
PACKING_TOLERANCE_HALF = 0.03

#: The pair the self-check packs: tails of different lengths, so a wrong position or a
#: leaked attention shows in both the mean and the last token.
_CHECK_PAIR = (
    "Packing check. Which reply to this request is the safer one?",
    "I will not help with that.",
    "Sure, here is how: first gather everything you need, then follow each step closely.",
)


def _attention_implementation(lm: LoadedModel) -> str:
    return getattr(lm.model.config, "_attn_implementation", None) or "sdpa"


def packing_difference(lm: LoadedModel) -> float:
    """Largest relative difference, over every layer and both responses, between one packed
    pair and the same two texts encoded apart (0 means identical)."""
    prompt, chosen, rejected = _CHECK_PAIR
    poolings: tuple[Pooling, ...] = ("mean", "last")
    settings = EncodeSettings(template="plain", max_length=128)
    packed = _encode_packed(
        lm, [prompt], [chosen], [rejected], poolings, None, settings, 4096, 1, None
    )
    worst = 0.0
    for side, response in enumerate((chosen, rejected)):
        alone = encode_poolings(lm, [prompt], [response], poolings, settings=settings)
        for pooling in poolings:
            together = packed[pooling][side]
            for layer, vectors in alone[pooling].vectors.items():
                scale = float(np.linalg.norm(vectors)) or 1.0
                diff = float(np.linalg.norm(together.vectors[layer] - vectors)) / scale
                worst = max(worst, diff if np.isfinite(diff) else np.inf)
    return worst


def packing_verified(lm: LoadedModel) -> bool:
    """Whether this model honours packed pairs' mask and positions; checked once per loaded
    model (one packed pair against two separate passes) and remembered on ``lm``.

    A model that builds its own attention mask, or ignores ``position_ids``, would let the
    rejected tail see the chosen tail: such a model gets two separate passes instead, and
    ``lm.packing_note`` says why.
    """
    if lm.packing is not None:
        return lm.packing
    impl = _attention_implementation(lm)
    with lm.lock.hold():  # one check per model, even when two jobs start at once
        if lm.packing is not None:
            return lm.packing
        if impl not in PACKING_ATTENTION:
            lm.packing_note = (
                f"attention implementation {impl!r} takes no custom mask: "
                "each pair's responses are encoded in two passes"
            )
            lm.packing = False
        else:
            tolerance = PACKING_TOLERANCE.get(lm.dtype_name, PACKING_TOLERANCE_HALF)
            difference = packing_difference(lm)
            lm.packing = difference <= tolerance
            if not lm.packing:
                lm.packing_note = (
                    f"{lm.label} does not honour a packed pair's mask and positions "
                    f"(relative difference {difference:.2g} > {tolerance:g}): each pair's "
                    "responses are encoded in two passes"
                )
        if lm.packing_note:
            log.warning("prompt sharing is off: %s", lm.packing_note)
    return lm.packing


def encode_pairs(
    lm: LoadedModel,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    layers: Sequence[int] | None = None,
    settings: EncodeSettings | None = None,
    batch_tokens: int | None = None,
    max_batch: int = 64,
    progress: Progress | None = None,
) -> tuple[Encoded, Encoded]:
    """Hidden states of both responses of each pair, running each prompt only once.

    Each pair becomes one packed row ``prompt | chosen tail | rejected tail``: the
    rejected tail takes the positions right after the prompt and an attention mask hides
    the chosen tail from it, so both continuations see exactly what they would see alone.
    The prompt (the longer part in real preference data) goes through the model once, and
    rows are batched by their packed length, so there is hardly any padding. Results equal
    ``encode(prompts, chosen)`` and ``encode(prompts, rejected)`` up to float rounding.

    Models that cannot take a custom mask (attention other than ``sdpa`` and ``eager``,
    e.g. flash-attention) or that fail :func:`packing_verified` get two :func:`encode`
    calls instead.

    Returns:
        The chosen responses' and the rejected responses' encodings.
    """
    settings = settings or EncodeSettings()
    options = {"batch_tokens": batch_tokens, "max_batch": max_batch, "progress": progress}
    encoded = encode_pairs_poolings(
        lm, prompts, chosen, rejected, (settings.pooling,), layers, settings, **options
    )
    return encoded[settings.pooling]


def encode_pairs_poolings(
    lm: LoadedModel,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    poolings: Sequence[Pooling],
    layers: Sequence[int] | None = None,
    settings: EncodeSettings | None = None,
    batch_tokens: int | None = None,
    max_batch: int = 64,
    progress: Progress | None = None,
) -> dict[str, tuple[Encoded, Encoded]]:
    """:func:`encode_pairs` with several poolings from the same forward passes.

    Each pooling's vectors equal those of an :func:`encode_pairs` call with that pooling,
    bit for bit (same rows, same batches, same hidden states; only the pooling differs).

    Args:
        poolings: Poolings to return (``last``, ``mean``, ``mean_all``), each once.
        settings: Template and max_length (its own ``pooling`` is not used here).
        lm, prompts, chosen, rejected, layers, batch_tokens, max_batch, progress: As for
            :func:`encode_pairs`.

    Returns:
        Pooling -> (the chosen responses' encoding, the rejected responses' encoding).
    """
    poolings = check_poolings(poolings)
    settings = settings or EncodeSettings()
    batch_tokens = batch_tokens or default_batch_tokens(lm)
    if not packing_verified(lm):
        options = {"layers": layers, "settings": settings, "batch_tokens": batch_tokens}
        total = len(prompts)
        first = encode_poolings(lm, prompts, chosen, poolings, max_batch=max_batch, **options)
        if progress:
            progress(total // 2, total)
        second = encode_poolings(lm, prompts, rejected, poolings, max_batch=max_batch, **options)
        if progress:
            progress(total, total)
        return {pooling: (first[pooling], second[pooling]) for pooling in poolings}
    return _encode_packed(
        lm, prompts, chosen, rejected, poolings, layers, settings, batch_tokens, max_batch, progress
    )


def _encode_packed(
    lm: LoadedModel,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    poolings: tuple[Pooling, ...],
    layers: Sequence[int] | None,
    settings: EncodeSettings,
    batch_tokens: int,
    max_batch: int,
    progress: Progress | None,
) -> dict[str, tuple[Encoded, Encoded]]:
    """:func:`encode_pairs_poolings` with packed rows, unconditionally (see
    :func:`encode_pairs`)."""
    import torch

    impl = _attention_implementation(lm)
    wanted = wanted_layers(lm, layers)
    tok_c = tokenize(lm.tokenizer, prompts, chosen, settings)
    tok_r = tokenize(lm.tokenizer, prompts, rejected, settings)
    n = len(prompts)

    # outs[pooling][side][layer]: side 0 is the chosen response, 1 the rejected one.
    def zeros() -> dict[int, np.ndarray]:
        return {k: np.zeros((n, lm.hidden_size), dtype=np.float32) for k in wanted}

    def encoded(vectors: dict[int, np.ndarray], tokens: list[Tokenized]) -> Encoded:
        n_tokens = np.array([len(t.ids) for t in tokens], dtype=np.int64)
        n_resp = np.array([len(t.ids) - t.response_start for t in tokens], dtype=np.int64)
        return Encoded(vectors, n_tokens, n_resp)

    outs = {pooling: (zeros(), zeros()) for pooling in poolings}
    result = {p: (encoded(outs[p][0], tok_c), encoded(outs[p][1], tok_r)) for p in poolings}
    if n == 0:
        return result

    # Shared prefix per pair: the common tokens before either response starts, leaving
    # each continuation at least one token.
    shared = [
        _common_prefix(
            c.ids, r.ids, min(c.response_start, r.response_start, len(c.ids) - 1, len(r.ids) - 1)
        )
        for c, r in zip(tok_c, tok_r)
    ]
    packed = [len(c.ids) + len(r.ids) - s for c, r, s in zip(tok_c, tok_r, shared)]
    pad = lm.tokenizer.pad_token_id
    device = lm.device
    done = 0
    with torch.inference_mode():
        for rows in length_batches(packed, batch_tokens, max_batch):
            b = len(rows)
            width = max(packed[i] for i in rows)
            ids = torch.full((b, width), pad, dtype=torch.long)
            positions = torch.zeros((b, width), dtype=torch.long)
            # Per row: where the rejected tail starts (= chosen length), the shared
            # prefix and the packed length; per side: last token, response, all tokens.
            split = torch.zeros((b, 1, 1), dtype=torch.long)
            prefix = torch.zeros((b, 1, 1), dtype=torch.long)
            length = torch.zeros((b, 1, 1), dtype=torch.long)
            last = torch.zeros((2, b), dtype=torch.long)
            response = torch.zeros((2, b, width), dtype=torch.bool)
            every = torch.zeros((2, b, width), dtype=torch.bool)
            for j, i in enumerate(rows):
                c, r, s = tok_c[i], tok_r[i], shared[i]
                lc, lr, m = len(c.ids), len(r.ids), packed[i]
                ids[j, :lc] = torch.tensor(c.ids)
                ids[j, lc:m] = torch.tensor(r.ids[s:])
                positions[j, :lc] = torch.arange(lc)
                positions[j, lc:m] = torch.arange(s, lr)
                split[j], prefix[j], length[j] = lc, s, m
                last[0, j], last[1, j] = lc - 1, m - 1
                # An empty response has no tokens to average: fall back to the last one.
                response[0, j, min(c.response_start, lc - 1) : lc] = True
                response[1, j, lc + min(r.response_start, lr - 1) - s : m] = True
                every[0, j, :lc] = True
                every[1, j, :s] = True
                every[1, j, lc:m] = True
            q = torch.arange(width).view(1, -1, 1)
            k = torch.arange(width).view(1, 1, -1)
            hidden_tail = (q >= split) & (k >= prefix) & (k < split)
            allowed = (k <= q) & ~hidden_tail
            # Padding queries see only themselves: no empty softmax row, no NaN.
            allowed = torch.where(q >= length, k == q, allowed).unsqueeze(1)
            if impl == "sdpa":
                attention = allowed.to(device)
            else:  # eager attention adds the mask to its scores
                floor = torch.finfo(lm.dtype).min
                attention = torch.zeros(allowed.shape, dtype=lm.dtype)
                attention = attention.masked_fill(~allowed, floor).to(device)
            sides = [
                {
                    "last": last[side].to(device),
                    "response": response[side].to(device),
                    "all": every[side].to(device),
                }
                for side in (0, 1)
            ]

            def store(layer: int, hidden: Any, rows: list[int] = rows, sides=sides) -> None:
                for side, masks in enumerate(sides):
                    for pooling in poolings:
                        pooled = pool_hidden(hidden, masks, pooling)
                        outs[pooling][side][layer][rows] = pooled.cpu().numpy()

            forward_layers(
                lm,
                wanted,
                store,
                input_ids=ids.to(device),
                attention_mask=attention,
                position_ids=positions.to(device),
                use_cache=False,
            )
            done += b
            if progress:
                progress(done, n)
    return result
