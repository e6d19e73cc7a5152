"""Shared fixtures: a tiny random Llama built from a config, with a real tokenizer.

Nothing is downloaded: the tokenizer is a byte-level BPE trained in milliseconds on a few
sentences, and the model's weights are random. Tests that need the real default model
use ``default_lm`` (it dequantizes the bundled GGUF once per machine).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
HH_DEV = SHARED_DATA / "hh-rlhf-harmless-base" / "dev.jsonl"
ADVBENCH = SHARED_DATA / "advbench" / "harmful_behaviors.csv"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Below is an instruction that describes a task. Write a response that completes the request.",
    "### Instruction: ### Response: Human: Assistant: user assistant system",
    "I cannot help with that. Sure, here is how you could do it. Sorry, no.",
    "The quick brown fox jumps over the lazy dog 0123456789 <>&\"' !?.,;:",
]


#: Architectures the tiny-model factory builds (each one's own model class and config).
ARCHITECTURES = ("llama", "qwen2", "gpt2", "gemma")


def tiny_config(arch: str, vocab: int, pad: int, layers: int, hidden: int):
    """A tiny random config of one architecture (no weights, nothing downloaded)."""
    import transformers

    common = {"vocab_size": vocab, "pad_token_id": pad}
    if arch == "gpt2":
        return transformers.GPT2Config(
            n_embd=hidden, n_layer=layers, n_head=4, n_positions=1024, **common
        )
    classes = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "gemma": transformers.GemmaConfig,
    }
    extra = {"head_dim": hidden // 4} if arch == "gemma" else {}
    return classes[arch](
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        **extra,
        **common,
    )


def make_tiny_model(
    folder: Path, layers: int = 3, hidden: int = 32, seed: int = 0, arch: str = "llama"
) -> Path:
    """Write a random tiny model (Llama unless ``arch`` says otherwise) and a trained BPE
    tokenizer into ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModel, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = tiny_config(arch, len(tokenizer), tokenizer.pad_token_id, layers, hidden)
    model = AutoModel.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir: Path):
    from legend_core.method.models import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def default_lm():
    """The real default model (SmolLM2-135M-Instruct), loaded once for the session."""
    from legend_core.method.models import load_model

    return load_model("default", device="cpu", dtype="float32")


@pytest.fixture(autouse=True, scope="session")
def _offline_and_quiet() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
