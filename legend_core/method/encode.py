"""Texts in, hidden states out: templates, tokenization, batching and pooling.

A text is a (prompt, response) pair rendered with a template. Hidden-state index 0 is the
embedding output, index k (1..N-1) the output of block k, and index N the final hidden
state after the model's last norm, the paper's choice. Hooks take every asked-for layer
from one forward pass, pool it at once (so full sequences never pile up in memory), and
the pass stops after the deepest layer asked for; several poolings can come out of the
same pass (:func:`encode_poolings`). Both responses of a preference pair in one packed row,
sharing the prompt, are :mod:`legend_core.method.packing`'s.
"""

from __future__ import annotations

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


def check_poolings(poolings: Sequence[str]) -> tuple[Pooling, ...]:
    """The poolings asked for, each once and in order; refuses an unknown or empty list."""
    wanted = tuple(dict.fromkeys(poolings))
    if not wanted:
        raise ValueError(f"no pooling asked for; use one or more of {', '.join(POOLINGS)}")
    for pooling in wanted:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; use {', '.join(POOLINGS)}")
    return wanted  # type: ignore[return-value]


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


def pool_hidden(hidden: Any, masks: dict[str, Any], pooling: Pooling) -> Any:
    """One pooling of a batch's hidden states (batch, tokens, hidden) -> (batch, hidden).

    ``masks`` holds, per row, the index of the ``last`` token, the ``response`` tokens and
    ``all`` real tokens (the encoder builds them; :mod:`legend_core.method.packing` builds
    them per side of a packed row).
    """
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


def wanted_layers(lm: LoadedModel, layers: Sequence[int] | None) -> list[int]:
    """The asked-for hidden-state indices, sorted and checked (None means every one)."""
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
    the model, so they must only exist while their own pass runs: see :func:`forward_layers`.
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


def forward_layers(
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
    settings = settings or EncodeSettings()
    options = {"batch_tokens": batch_tokens, "max_batch": max_batch, "progress": progress}
    poolings = (settings.pooling,)
    encoded = encode_poolings(lm, prompts, responses, poolings, layers, settings, **options)
    return encoded[settings.pooling]


def encode_poolings(
    lm: LoadedModel,
    prompts: Sequence[str],
    responses: Sequence[str],
    poolings: Sequence[Pooling],
    layers: Sequence[int] | None = None,
    settings: EncodeSettings | None = None,
    batch_tokens: int | None = None,
    max_batch: int = 64,
    progress: Progress | None = None,
) -> dict[str, Encoded]:
    """:func:`encode` with several poolings from the same forward passes.

    Each pooling's vectors equal those of an :func:`encode` call with that pooling, bit for
    bit: the batches and the hidden states are the same, only the pooling differs, so a
    sweep over poolings costs one pass instead of one per pooling.

    Args:
        poolings: Poolings to return (``last``, ``mean``, ``mean_all``), each once.
        settings: Template and max_length (its own ``pooling`` is not used here).
        lm, prompts, responses, layers, batch_tokens, max_batch, progress: As for
            :func:`encode`.

    Returns:
        Pooling -> its :class:`Encoded`, in the order asked.
    """
    import torch

    poolings = check_poolings(poolings)
    settings = settings or EncodeSettings()
    batch_tokens = batch_tokens or default_batch_tokens(lm)
    wanted = wanted_layers(lm, layers)
    tokens = tokenize(lm.tokenizer, prompts, responses, settings)
    n = len(tokens)
    outs = {
        pooling: {layer: np.zeros((n, lm.hidden_size), dtype=np.float32) for layer in wanted}
        for pooling in poolings
    }
    n_tokens = np.array([len(t.ids) for t in tokens], dtype=np.int64)
    n_response = np.array([len(t.ids) - t.response_start for t in tokens], dtype=np.int64)
    result = {p: Encoded(outs[p], n_tokens.copy(), n_response.copy()) for p in poolings}
    if n == 0:
        return result

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
                for pooling in poolings:
                    outs[pooling][layer][rows] = pool_hidden(hidden, masks, pooling).cpu().numpy()

            # Padding sits at the right end of each row, after every real token, so the
            # plain causal mask already keeps it out of every real token's view: no
            # padding mask, which lets attention take its causal fast path.
            forward_layers(
                lm, wanted, store, input_ids=ids.to(device), attention_mask=None, use_cache=False
            )
            done += len(rows)
            if progress:
                progress(done, n)
    return result
