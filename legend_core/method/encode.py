"""Texts in, hidden states out: templates, tokenization, batching and pooling.

A text is a (prompt, response) pair rendered with a template. Hidden-state index 0 is the
embedding output, index k (1..N-1) the output of block k, and index N the final hidden
state after the model's last norm, the paper's choice. Hooks take every asked-for layer
from one forward pass, pool it at once (so full sequences never pile up in memory), and
the pass stops after the deepest layer asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from legend_core.method.models import LoadedModel

Template = Literal["alpaca", "chat", "plain"]
Pooling = Literal["last", "mean", "mean_all"]
TEMPLATES: tuple[str, ...] = get_args(Template)
POOLINGS: tuple[str, ...] = get_args(Pooling)

ALPACA = (
    "Below is an instruction that describes a task. Write a response that completes the "
    "request.\n\n### Instruction:\n{input}\n\n### Response:"
)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class EncodeSettings:
    """Everything about how a text becomes a vector, apart from the model and the layer.

    Attributes:
        template: ``alpaca`` (the paper), ``chat`` (the model's chat template) or ``plain``
            (prompt, newline, response: for prompts that are already dialogues).
        pooling: ``last`` (last non-padding token, the paper), ``mean`` (mean over the
            response tokens) or ``mean_all`` (mean over all tokens).
        max_length: Token budget per text; the prompt is cut from the left beyond it.
    """

    template: Template = "alpaca"
    pooling: Pooling = "mean"
    max_length: int = 512

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown template {self.template!r}; use {', '.join(TEMPLATES)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; use {', '.join(POOLINGS)}")
        if self.max_length < 2:
            raise ValueError("max_length must be at least 2 tokens")


@dataclass
class Tokenized:
    """Token ids of one text and where its response starts."""

    ids: list[int]
    response_start: int


@dataclass
class Encoded:
    """Pooled hidden states for a list of texts, in input order.

    Attributes:
        vectors: Layer index -> (n, hidden) float32 array.
        n_tokens: Tokens per text after truncation.
        n_response_tokens: Response tokens per text after truncation.
    """

    vectors: dict[int, np.ndarray]
    n_tokens: np.ndarray
    n_response_tokens: np.ndarray


def render_prompt(tokenizer: Any, prompt: str, template: Template) -> str:
    """The text that comes before the response."""
    if template == "alpaca":
        return ALPACA.format(input=prompt)
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("this model's tokenizer has no chat template; use alpaca or plain")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


def response_separator(template: Template) -> str:
    """What goes between the rendered prompt and the response."""
    return "" if template == "chat" else "\n"


def tokenize(
    tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], settings: EncodeSettings
) -> list[Tokenized]:
    """Tokenize prompt and response apart, so the response's span is exact, then truncate.

    Beyond ``max_length`` the prompt loses tokens from its left (a leading BOS token is
    kept): the end of the response, where ``last`` pooling reads, always survives.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    sep = response_separator(settings.template)
    rendered = [render_prompt(tokenizer, p, settings.template) for p in prompts]
    chat = settings.template == "chat"  # the chat template writes its own special tokens
    prompt_ids = tokenizer(rendered, add_special_tokens=not chat)["input_ids"]
    response_ids = tokenizer([sep + r for r in responses], add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    out = []
    for p, r in zip(prompt_ids, response_ids):
        p, r = list(p), list(r)
        if len(p) + len(r) > settings.max_length:
            head = p[:1] if bos is not None and p[:1] == [bos] else []
            room = settings.max_length - len(r) - len(head)
            if room > 0:
                p = head + p[len(p) - room :]
            else:  # the response alone fills the budget: keep its end
                r = r[len(r) - (settings.max_length - len(head)) :]
                p = head
        out.append(Tokenized(ids=p + r, response_start=len(p)))
    return out


def length_batches(lengths: Sequence[int], batch_tokens: int, max_batch: int) -> list[list[int]]:
    """Group indices of similar length so that padded batches stay under ``batch_tokens``.

    Longest first, so a batch that would not fit in memory shows up at the start.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * width > batch_tokens or len(current) >= max_batch:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


#: Padded tokens per forward pass by default on a CPU, per torch thread (at least
#: ``CPU_MIN_BATCH_TOKENS``): small batches keep each thread's activations in its caches.
#: On 2 cores, 1024 tokens ran 1.3x faster than 2048 and 1.6x faster than 4096 (see
#: BENCHMARKS.md). Other devices want large batches.
CPU_BATCH_TOKENS_PER_THREAD = 512
CPU_MIN_BATCH_TOKENS = 1024
DEVICE_BATCH_TOKENS = 8192


def default_batch_tokens(lm: LoadedModel) -> int:
    """Padded tokens per forward pass when the caller does not say."""
    if not str(lm.device).startswith("cpu"):
        return DEVICE_BATCH_TOKENS
    import torch

    return max(CPU_MIN_BATCH_TOKENS, CPU_BATCH_TOKENS_PER_THREAD * torch.get_num_threads())


class _Stop(Exception):
    """Raised by a hook once the deepest asked-for layer is captured."""


def decoder_blocks(model: Any) -> Any:
    """The model's list of transformer blocks (the ModuleList as long as the layer count)."""
    import torch

    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError("cannot find the model's transformer blocks")


def _pool(hidden: Any, masks: dict[str, Any], pooling: Pooling) -> Any:
    import torch

    # With a model spread over several devices each layer's hidden state lives on its own
    # device; the masks go to it (a no-op when they are already there).
    device = hidden.device
    if pooling == "last":
        index = masks["last"].to(device).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        return hidden.gather(1, index).squeeze(1).float()
    mask = masks["response" if pooling == "mean" else "all"]
    mask = mask.to(device=device, dtype=hidden.dtype).unsqueeze(-1)
    total = (hidden * mask).sum(1, dtype=torch.float32)
    return total / mask.sum(1).clamp(min=1).float()


def _prepare(lm: LoadedModel, layers: Sequence[int] | None) -> list[int]:
    n_layers = lm.num_layers
    wanted = sorted(set(range(n_layers + 1) if layers is None else layers))
    if not wanted or wanted[0] < 0 or wanted[-1] > n_layers:
        shown = "all" if layers is None else list(layers)
        raise ValueError(f"layers must lie in 0..{n_layers} for this model; got {shown}")
    return wanted


class _Capture:
    """Forward hooks that hand each asked-for layer's hidden states to ``on_layer``.

    ``on_layer(layer, hidden)`` is called for every wanted layer below the last; the
    final layer (after the model's norm) comes from the model's output. Once the deepest
    wanted layer is seen the forward pass is stopped. The hooks fire on every pass through
    the model, so they must only exist while their own pass runs: see :func:`_forward`.
    """

    def __init__(
        self, lm: LoadedModel, wanted: list[int], on_layer: Callable[[int, Any], None]
    ) -> None:
        self.wanted = wanted
        self.deepest = wanted[-1]
        self.on_layer = on_layer
        self._hooks = []
        blocks = decoder_blocks(lm.model)
        if 0 in wanted:
            self._hooks.append(
                blocks[0].register_forward_pre_hook(
                    lambda _m, args, kwargs: self._seen(
                        0, args[0] if args else kwargs["hidden_states"]
                    ),
                    with_kwargs=True,
                )
            )
        for k in range(1, min(self.deepest, lm.num_layers - 1) + 1):
            self._hooks.append(
                blocks[k - 1].register_forward_hook(
                    lambda _m, _a, output, k=k: self._seen(
                        k, output[0] if isinstance(output, tuple) else output
                    )
                )
            )

    def _seen(self, layer: int, hidden: Any) -> None:
        if layer in self.wanted:
            self.on_layer(layer, hidden)
        if layer == self.deepest:
            raise _Stop

    def run(self, lm: LoadedModel, **inputs: Any) -> None:
        """One forward pass; the final hidden state counts as layer ``lm.num_layers``."""
        try:
            result = lm.model(**inputs)
            self._seen(lm.num_layers, result.last_hidden_state)
        except _Stop:
            pass

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _forward(
    lm: LoadedModel, wanted: list[int], on_layer: Callable[[int, Any], None], **inputs: Any
) -> None:
    """One forward pass with its hooks, holding the model (jobs share one loaded model, and
    hooks on it fire on every thread's passes): hooks exist only while this pass runs."""
    with lm.lock.hold():
        capture = _Capture(lm, wanted, on_layer)
        try:
            capture.run(lm, **inputs)
        finally:
            capture.remove()


def encode(
    lm: LoadedModel,
    prompts: Sequence[str],
    responses: Sequence[str],
    layers: Sequence[int] | None = None,
    settings: EncodeSettings | None = None,
    batch_tokens: int | None = None,
    max_batch: int = 64,
    progress: Progress | None = None,
) -> Encoded:
    """Pooled hidden states of ``template(prompt) + response`` for each pair of texts.

    Args:
        lm: A loaded model.
        prompts: Instructions or dialogues, one per text.
        responses: The response to each prompt (may be empty).
        layers: Hidden-state indices to return; None means all, 0..num_layers.
        settings: Template, pooling and max_length.
        batch_tokens: Upper bound on padded tokens per forward pass; by default
            :func:`default_batch_tokens` (small on a CPU, where it keeps a batch's
            activations in cache).
        max_batch: Upper bound on texts per forward pass.
        progress: Called as ``progress(done, total)`` after each batch.
    """
    import torch

    settings = settings or EncodeSettings()
    batch_tokens = batch_tokens or default_batch_tokens(lm)
    wanted = _prepare(lm, layers)
    tokens = tokenize(lm.tokenizer, prompts, responses, settings)
    n = len(tokens)
    out = {layer: np.zeros((n, lm.hidden_size), dtype=np.float32) for layer in wanted}
    n_tokens = np.array([len(t.ids) for t in tokens], dtype=np.int64)
    n_response = np.array([len(t.ids) - t.response_start for t in tokens], dtype=np.int64)
    if n == 0:
        return Encoded(out, n_tokens, n_response)

    pad = lm.tokenizer.pad_token_id
    done = 0
    with torch.inference_mode():
        for rows in length_batches(n_tokens.tolist(), batch_tokens, max_batch):
            width = int(n_tokens[rows].max())
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            response = torch.zeros((len(rows), width), dtype=torch.bool)
            for j, i in enumerate(rows):
                t = tokens[i]
                ids[j, : len(t.ids)] = torch.tensor(t.ids)
                attention[j, : len(t.ids)] = 1
                # An empty response has no tokens to average: fall back to the last one.
                response[j, min(t.response_start, len(t.ids) - 1) : len(t.ids)] = True
            device = lm.device
            masks = {
                "last": torch.as_tensor(n_tokens[rows] - 1, device=device),
                "response": response.to(device),
                "all": attention.to(device),
            }

            def store(layer: int, hidden: Any, rows: list[int] = rows, masks=masks) -> None:
                out[layer][rows] = _pool(hidden, masks, settings.pooling).cpu().numpy()

            # Padding sits at the right end of each row, after every real token, so the
            # plain causal mask already keeps it out of every real token's view: no
            # padding mask, which lets attention take its causal fast path.
            _forward(
                lm, wanted, store, input_ids=ids.to(device), attention_mask=None, use_cache=False
            )
            done += len(rows)
            if progress:
                progress(done, n)
    return Encoded(out, n_tokens, n_response)


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
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

log = logging.getLogger(__name__)


def _attention_implementation(lm: LoadedModel) -> str:
    return getattr(lm.model.config, "_attn_implementation", None) or "sdpa"


def packing_difference(lm: LoadedModel) -> float:
    """Largest relative difference, over every layer and both responses, between one packed
    pair and the same two texts encoded apart (0 means identical)."""
    prompt, chosen, rejected = _CHECK_PAIR
    worst = 0.0
    for pooling in ("mean", "last"):
        settings = EncodeSettings(template="plain", pooling=pooling, max_length=128)
        packed = _encode_packed(lm, [prompt], [chosen], [rejected], None, settings, 4096, 1, None)
        for response, together in zip((chosen, rejected), packed):
            alone = encode(lm, [prompt], [response], settings=settings)
            for layer, vectors in alone.vectors.items():
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
    batch_tokens = batch_tokens or default_batch_tokens(lm)
    if not packing_verified(lm):
        options = {"layers": layers, "settings": settings, "batch_tokens": batch_tokens}
        total = len(prompts)
        first = encode(lm, prompts, chosen, max_batch=max_batch, **options)
        if progress:
            progress(total // 2, total)
        second = encode(lm, prompts, rejected, max_batch=max_batch, **options)
        if progress:
            progress(total, total)
        return first, second
    return _encode_packed(
        lm, prompts, chosen, rejected, layers, settings, batch_tokens, max_batch, progress
    )


def _encode_packed(
    lm: LoadedModel,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    layers: Sequence[int] | None,
    settings: EncodeSettings,
    batch_tokens: int,
    max_batch: int,
    progress: Progress | None,
) -> tuple[Encoded, Encoded]:
    """:func:`encode_pairs` with packed rows, unconditionally (see its docstring)."""
    import torch

    impl = _attention_implementation(lm)
    wanted = _prepare(lm, layers)
    tok_c = tokenize(lm.tokenizer, prompts, chosen, settings)
    tok_r = tokenize(lm.tokenizer, prompts, rejected, settings)
    n = len(prompts)
    outs = [{k: np.zeros((n, lm.hidden_size), dtype=np.float32) for k in wanted} for _ in "cr"]
    encoded = []
    for tokens, out in zip((tok_c, tok_r), outs):
        n_tokens = np.array([len(t.ids) for t in tokens], dtype=np.int64)
        n_resp = np.array([len(t.ids) - t.response_start for t in tokens], dtype=np.int64)
        encoded.append(Encoded(out, n_tokens, n_resp))
    if n == 0:
        return encoded[0], encoded[1]

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
                    pooled = _pool(hidden, masks, settings.pooling)
                    outs[side][layer][rows] = pooled.cpu().numpy()

            _forward(
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
    return encoded[0], encoded[1]
