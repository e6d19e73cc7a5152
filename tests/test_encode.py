"""The encoder on a tiny random Llama: pooling, padding, truncation, layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from legend_core.method.encode import (
    ALPACA,
    EncodeSettings,
    decoder_blocks,
    encode,
    length_batches,
    render_prompt,
    tokenize,
)

PROMPTS = ["Tell me a joke", "How do I pick a lock on a door that is not mine?", "hi"]
RESPONSES = ["Sure, here is one.", "I cannot help with that.", ""]


def reference_states(lm, ids: list[int]) -> tuple:
    """Hidden states of one unpadded text from transformers itself."""
    with torch.no_grad():
        return lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states


@pytest.mark.parametrize("pooling", ["last", "mean", "mean_all"])
def test_batched_pooling_matches_unpadded_reference(tiny_lm, pooling):
    settings = EncodeSettings(pooling=pooling)
    encoded = encode(tiny_lm, PROMPTS, RESPONSES, settings=settings, batch_tokens=10_000)
    tokens = tokenize(tiny_lm.tokenizer, PROMPTS, RESPONSES, settings)
    assert len({len(t.ids) for t in tokens}) == 3, "texts must differ in length to test padding"
    for i, t in enumerate(tokens):
        states = reference_states(tiny_lm, t.ids)
        assert len(states) == tiny_lm.num_layers + 1
        for layer in range(tiny_lm.num_layers + 1):
            h = states[layer][0]
            if pooling == "last":
                expected = h[-1]
            elif pooling == "mean":
                expected = h[t.response_start :].mean(0)
            else:
                expected = h.mean(0)
            np.testing.assert_allclose(encoded.vectors[layer][i], expected.numpy(), atol=1e-5)


def test_last_token_is_last_non_padding_token(tiny_lm):
    settings = EncodeSettings(pooling="last")
    together = encode(tiny_lm, PROMPTS, RESPONSES, layers=[2], settings=settings)
    for i in range(len(PROMPTS)):
        alone = encode(tiny_lm, [PROMPTS[i]], [RESPONSES[i]], layers=[2], settings=settings)
        np.testing.assert_allclose(together.vectors[2][i], alone.vectors[2][0], atol=1e-5)


def test_stopping_early_gives_the_same_states(tiny_lm):
    full = encode(tiny_lm, PROMPTS, RESPONSES)
    early = encode(tiny_lm, PROMPTS, RESPONSES, layers=[1])
    assert list(early.vectors) == [1]
    np.testing.assert_array_equal(full.vectors[1], early.vectors[1])


def test_truncation_cuts_prompt_from_the_left_and_keeps_response_end(tiny_lm):
    tok = tiny_lm.tokenizer
    prompt = "the quick brown fox " * 40
    response = "I cannot help with that. Sorry, no."
    settings = EncodeSettings(template="plain", max_length=30)
    (t,) = tokenize(tok, [prompt], [response], settings)
    assert len(t.ids) == 30
    full_response = tok("\n" + response, add_special_tokens=False)["input_ids"]
    assert t.ids[t.response_start :] == full_response
    full_prompt = tok(prompt)["input_ids"]
    assert t.ids[: t.response_start] == full_prompt[-t.response_start :]


def test_truncation_of_a_response_longer_than_the_budget_keeps_its_end(tiny_lm):
    tok = tiny_lm.tokenizer
    response = "Sure, here is how you could do it. " * 20
    (t,) = tokenize(tok, ["x"], [response], EncodeSettings(template="plain", max_length=16))
    full_response = tok("\n" + response, add_special_tokens=False)["input_ids"]
    assert len(t.ids) == 16 and t.response_start == 0
    assert t.ids == full_response[-16:]


def test_templates(tiny_lm):
    tok = tiny_lm.tokenizer
    assert render_prompt(tok, "do X", "alpaca") == ALPACA.format(input="do X")
    chat = render_prompt(tok, "do X", "chat")
    assert chat.startswith("<|im_start|>user\ndo X") and chat.endswith("<|im_start|>assistant\n")
    assert render_prompt(tok, "do X", "plain") == "do X"


def test_progress_and_order(tiny_lm):
    seen = []
    prompts = [f"prompt {'x ' * i}" for i in range(9)]
    encoded = encode(
        tiny_lm,
        prompts,
        ["ok"] * 9,
        layers=[3],
        batch_tokens=64,
        max_batch=4,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1] == (9, 9) and len(seen) >= 3
    alone = encode(tiny_lm, prompts[4:5], ["ok"], layers=[3])
    np.testing.assert_allclose(encoded.vectors[3][4], alone.vectors[3][0], atol=1e-5)


def test_length_batches_respect_budget_and_cover_everything():
    lengths = [5, 50, 7, 49, 3, 20, 21, 2]
    batches = length_batches(lengths, batch_tokens=60, max_batch=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 60


def test_bad_settings_and_layers(tiny_lm):
    with pytest.raises(ValueError, match="pooling"):
        EncodeSettings(pooling="max")
    with pytest.raises(ValueError, match="layers"):
        encode(tiny_lm, ["a"], ["b"], layers=[99])
    assert len(decoder_blocks(tiny_lm.model)) == tiny_lm.num_layers


@pytest.mark.parametrize("template", ["alpaca", "chat", "plain"])
@pytest.mark.parametrize("pooling", ["last", "mean", "mean_all"])
@pytest.mark.parametrize("max_length", [512, 40])
def test_shared_prompt_pass_equals_separate_passes(tiny_lm, template, pooling, max_length):
    from legend_core.method.packing import encode_pairs

    prompts = PROMPTS + ["x " * 100]
    chosen = RESPONSES + ["ok fine"]
    rejected = ["No.", "Sure thing, first you get a wrench, then the pins", "hello", "no " * 30]
    settings = EncodeSettings(template=template, pooling=pooling, max_length=max_length)
    c, r = encode_pairs(tiny_lm, prompts, chosen, rejected, settings=settings, batch_tokens=200)
    alone_c = encode(tiny_lm, prompts, chosen, settings=settings)
    alone_r = encode(tiny_lm, prompts, rejected, settings=settings)
    for layer in range(tiny_lm.num_layers + 1):
        np.testing.assert_allclose(c.vectors[layer], alone_c.vectors[layer], atol=1e-5)
        np.testing.assert_allclose(r.vectors[layer], alone_r.vectors[layer], atol=1e-5)
    np.testing.assert_array_equal(c.n_tokens, alone_c.n_tokens)
    early_c, _ = encode_pairs(tiny_lm, prompts, chosen, rejected, layers=[1], settings=settings)
    np.testing.assert_allclose(early_c.vectors[1], alone_c.vectors[1], atol=1e-5)


PAIR_PROMPTS = PROMPTS + ["x " * 100, "a longer prompt about locks " * 6]
PAIR_CHOSEN = RESPONSES + ["ok fine", "I would rather not help with that."]
PAIR_REJECTED = [
    "No.",
    "Sure thing, first you get a wrench, then the pins",
    "hello",
    "no " * 30,
    "Sure: " + "step " * 12,
]


@pytest.fixture()
def eager_lm(tiny_model_dir):
    from legend_core.method.models import load_model

    lm = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    lm.model.config._attn_implementation = "eager"
    return lm


@pytest.mark.parametrize("pooling", ["last", "mean", "mean_all"])
def test_packed_pairs_with_eager_attention_equal_separate_passes(eager_lm, pooling):
    from legend_core.method.packing import encode_pairs

    settings = EncodeSettings(pooling=pooling)
    args = (PAIR_PROMPTS, PAIR_CHOSEN, PAIR_REJECTED)
    c, r = encode_pairs(eager_lm, *args, settings=settings, batch_tokens=300)
    alone_c = encode(eager_lm, PAIR_PROMPTS, PAIR_CHOSEN, settings=settings)
    alone_r = encode(eager_lm, PAIR_PROMPTS, PAIR_REJECTED, settings=settings)
    for layer in range(eager_lm.num_layers + 1):
        np.testing.assert_allclose(c.vectors[layer], alone_c.vectors[layer], atol=1e-5)
        np.testing.assert_allclose(r.vectors[layer], alone_r.vectors[layer], atol=1e-5)


def test_pairs_fall_back_to_separate_passes_without_a_custom_mask(tiny_lm, monkeypatch):
    import legend_core.method.packing as packing

    settings = EncodeSettings(pooling="mean")
    args = (PAIR_PROMPTS, PAIR_CHOSEN, PAIR_REJECTED)
    packed = packing.encode_pairs(tiny_lm, *args, settings=settings)
    monkeypatch.setattr(packing, "PACKING_ATTENTION", ())
    # The session's model has passed its packing check already; forget the verdict so the
    # check runs again and sees an attention that takes no custom mask.
    monkeypatch.setattr(tiny_lm, "packing", None)
    monkeypatch.setattr(tiny_lm, "packing_note", "")
    seen = []
    c, r = packing.encode_pairs(
        tiny_lm, *args, settings=settings, progress=lambda d, t: seen.append((d, t))
    )
    assert tiny_lm.packing is False  # the fallback ran
    assert seen[-1] == (len(PAIR_PROMPTS), len(PAIR_PROMPTS))
    for layer in c.vectors:
        np.testing.assert_allclose(c.vectors[layer], packed[0].vectors[layer], atol=1e-5)
        np.testing.assert_allclose(r.vectors[layer], packed[1].vectors[layer], atol=1e-5)


def test_pairs_run_each_prompt_once_in_one_pass_per_batch(tiny_lm):
    """The prompt is shared and padding stays small, also when long prompts come with short
    responses and short prompts with long ones (a key/value-cache design that pads prompts
    and responses apart ran 1.8x the tokens needed here)."""
    from legend_core.method.packing import _common_prefix, encode_pairs

    settings = EncodeSettings(template="plain")
    prompts = [f"question {'x ' * (4 + 6 * i)}" for i in range(12)]
    chosen = [f"answer {'y ' * (40 - 3 * i)}" for i in range(12)]
    rejected = [f"no {'z ' * (38 - 3 * i)}" for i in range(12)]
    from legend_core.method.packing import packing_verified

    assert packing_verified(tiny_lm)  # the once-per-model check runs its own passes
    calls = []
    hook = tiny_lm.model.register_forward_pre_hook(
        lambda _m, _a, kwargs: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        encode_pairs(tiny_lm, prompts, chosen, rejected, settings=settings, batch_tokens=4096)
        assert len(calls) == 1, "one forward pass for a batch of pairs"
        encode_pairs(tiny_lm, prompts, chosen, rejected, settings=settings, batch_tokens=256)
    finally:
        hook.remove()
    tok_c = tokenize(tiny_lm.tokenizer, prompts, chosen, settings)
    tok_r = tokenize(tiny_lm.tokenizer, prompts, rejected, settings)
    separate = sum(len(t.ids) for t in tok_c + tok_r)
    needed = sum(
        len(c.ids) + len(r.ids) - _common_prefix(c.ids, r.ids, c.response_start)
        for c, r in zip(tok_c, tok_r)
    )
    assert needed < 0.8 * separate, "prompts must be long enough for sharing to matter"
    rows, width = calls[0]
    assert rows * width <= 1.25 * needed, f"{rows * width} tokens run for {needed} needed"
    assert all(r * w <= 256 or r == 1 for r, w in calls[1:])


def test_default_batch_tokens_grow_with_cpu_threads(tiny_lm, monkeypatch):
    from legend_core.method.encode import CPU_MIN_BATCH_TOKENS, default_batch_tokens

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert default_batch_tokens(tiny_lm) == CPU_MIN_BATCH_TOKENS
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert default_batch_tokens(tiny_lm) == 16 * 512


@pytest.fixture(scope="module", params=["qwen2", "gpt2", "gemma"])
def other_lm(request, tmp_path_factory):
    """Tiny random models of other architectures than Llama (own masks, own positions)."""
    from legend_core.method.models import load_model
    from tests.conftest import make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param)
    return load_model(str(folder), device="cpu", dtype="float32")


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_packed_pairs_equal_separate_passes_on_other_architectures(other_lm, pooling):
    from legend_core.method.packing import encode_pairs, packing_verified

    assert packing_verified(other_lm), other_lm.packing_note
    settings = EncodeSettings(pooling=pooling)
    c, r = encode_pairs(other_lm, PAIR_PROMPTS, PAIR_CHOSEN, PAIR_REJECTED, settings=settings)
    alone_c = encode(other_lm, PAIR_PROMPTS, PAIR_CHOSEN, settings=settings)
    alone_r = encode(other_lm, PAIR_PROMPTS, PAIR_REJECTED, settings=settings)
    for layer in range(other_lm.num_layers + 1):
        np.testing.assert_allclose(c.vectors[layer], alone_c.vectors[layer], atol=1e-5)
        np.testing.assert_allclose(r.vectors[layer], alone_r.vectors[layer], atol=1e-5)


@pytest.mark.parametrize("ignores", ["mask", "mask and positions"])
def test_a_model_that_ignores_the_packed_mask_gets_separate_passes(tiny_model_dir, ignores):
    """Such a model would let the rejected tail see the chosen tail: the self-check finds it
    once, says so, and every later call encodes the two responses apart."""
    from legend_core.method.models import load_model
    from legend_core.method.packing import encode_pairs, packing_verified

    lm = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    forward = lm.model.forward

    def own_mask(*args, attention_mask=None, position_ids=None, **kwargs):
        if ignores == "mask":
            kwargs["position_ids"] = position_ids
        return forward(*args, **kwargs)

    lm.model.forward = own_mask
    assert packing_verified(lm) is False
    assert "does not honour a packed pair" in lm.packing_note
    settings = EncodeSettings(pooling="mean")
    c, r = encode_pairs(lm, PAIR_PROMPTS, PAIR_CHOSEN, PAIR_REJECTED, settings=settings)
    alone_r = encode(lm, PAIR_PROMPTS, PAIR_REJECTED, settings=settings)
    for layer in r.vectors:
        np.testing.assert_array_equal(r.vectors[layer], alone_r.vectors[layer])


def test_flash_attention_is_not_packed(tiny_model_dir):
    from legend_core.method.models import load_model
    from legend_core.method.packing import packing_verified

    lm = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    lm.model.config._attn_implementation = "flash_attention_2"
    assert packing_verified(lm) is False
    assert "flash_attention_2" in lm.packing_note


def _count_passes(lm):
    """A list that gets one entry per forward pass of ``lm``'s model, and its hook."""
    calls: list[tuple] = []
    hook = lm.model.register_forward_pre_hook(
        lambda _m, _a, kwargs: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    return calls, hook


@pytest.mark.parametrize("template", ["alpaca", "chat", "plain"])
def test_several_poolings_from_one_pass_equal_single_pooling_calls(tiny_lm, template):
    """The evaluation sweep reads every pooling from one pass: bit for bit what one call per
    pooling gives, in as many forward passes as one such call."""
    from dataclasses import replace

    from legend_core.method.encode import POOLINGS, encode_poolings

    settings = EncodeSettings(template=template, max_length=40)
    prompts, responses = PAIR_PROMPTS, PAIR_CHOSEN
    calls, hook = _count_passes(tiny_lm)
    try:
        many = encode_poolings(
            tiny_lm, prompts, responses, POOLINGS, settings=settings, batch_tokens=100
        )
        passes = len(calls)
        for pooling in POOLINGS:
            calls.clear()
            one = replace(settings, pooling=pooling)
            alone = encode(tiny_lm, prompts, responses, settings=one, batch_tokens=100)
            assert len(calls) == passes > 1
            assert list(many[pooling].vectors) == list(alone.vectors)
            for layer, vectors in alone.vectors.items():
                np.testing.assert_array_equal(many[pooling].vectors[layer], vectors)
            np.testing.assert_array_equal(many[pooling].n_tokens, alone.n_tokens)
            np.testing.assert_array_equal(many[pooling].n_response_tokens, alone.n_response_tokens)
    finally:
        hook.remove()
    assert list(many) == list(POOLINGS)
    assert not np.array_equal(many["last"].vectors[2], many["mean"].vectors[2])
    with pytest.raises(ValueError, match="pooling"):
        encode_poolings(tiny_lm, prompts, responses, ("mean", "max"))
    with pytest.raises(ValueError, match="no pooling"):
        encode_poolings(tiny_lm, prompts, responses, ())


@pytest.mark.parametrize("packed", [True, False])
def test_several_poolings_of_pairs_equal_single_pooling_calls(tiny_model_dir, packed):
    """Packed pairs (and the two-pass fallback) with several poolings from the same passes:
    bit for bit what ``encode_pairs`` gives for each pooling."""
    from dataclasses import replace

    from legend_core.method.models import load_model
    from legend_core.method.packing import encode_pairs, encode_pairs_poolings

    lm = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    if not packed:  # as a model that failed the packing self-check
        lm.packing, lm.packing_note = False, "test: two passes"
    settings = EncodeSettings(template="alpaca", max_length=48)
    args = (PAIR_PROMPTS, PAIR_CHOSEN, PAIR_REJECTED)
    poolings = ("mean", "last")
    seen = []
    many = encode_pairs_poolings(
        lm,
        *args,
        poolings,
        layers=[0, 1, 3],
        settings=settings,
        batch_tokens=150,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1] == (len(PAIR_PROMPTS), len(PAIR_PROMPTS))
    assert lm.packing is packed
    for pooling in poolings:
        one = replace(settings, pooling=pooling)
        alone = encode_pairs(lm, *args, layers=[0, 1, 3], settings=one, batch_tokens=150)
        for side in (0, 1):
            got, want = many[pooling][side], alone[side]
            assert list(got.vectors) == [0, 1, 3]
            for layer in want.vectors:
                np.testing.assert_array_equal(got.vectors[layer], want.vectors[layer])
            np.testing.assert_array_equal(got.n_tokens, want.n_tokens)
            np.testing.assert_array_equal(got.n_response_tokens, want.n_response_tokens)
    assert not np.array_equal(many["mean"][0].vectors[3], many["mean"][1].vectors[3])


@pytest.mark.parametrize("pooling", ["last", "mean", "mean_all"])
def test_pooling_moves_masks_to_the_layer_device(pooling):
    """With layers spread over devices a hidden state may live elsewhere than the masks
    (built on the input device). Here the layer sits on the meta device, the masks on the
    CPU: pooling must follow the hidden state (this machine has one real device)."""
    from legend_core.method.encode import pool_hidden

    hidden = torch.empty((2, 5, 8), device="meta")
    masks = {
        "last": torch.tensor([4, 2]),
        "response": torch.ones((2, 5), dtype=torch.bool),
        "all": torch.ones((2, 5), dtype=torch.long),
    }
    pooled = pool_hidden(hidden, masks, pooling)
    assert pooled.device.type == "meta" and tuple(pooled.shape) == (2, 8)
