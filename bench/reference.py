"""The paper's published method as a baseline, written again here (our code, same behaviour).

Feng et al. (arXiv 2406.08124) embed with ``AutoModelForCausalLM.from_pretrained(path,
output_hidden_states=True)`` in the default float32, and call the whole model on one text
at a time under ``torch.no_grad()``: every layer's hidden states and the vocabulary logits
are computed for every text, and the vector is ``hidden_states[-1][0, -1]`` (or the mean
over tokens). That is what :class:`ReferenceEncoder` does.

One deliberate difference, so that vectors can be compared number by number: it takes the
token ids from :func:`legend_core.method.encode.tokenize` (prompt and response tokenized apart,
the same truncation) instead of tokenizing the joined string, and it pools the way
:class:`legend_core.method.encode.EncodeSettings` says (response mean by default, ``last`` is
the paper's), reading the pooled states out of its all-layers output.

Run alone: ``python -m bench.reference`` embeds 8 texts and prints their agreement with
the library encoder in float32 (it should be ~1e-6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from legend_core.method.encode import EncodeSettings, Tokenized, tokenize


class ReferenceEncoder:
    """Full causal LM, float32, one text at a time, all hidden states and logits."""

    def __init__(self, folder: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, local_files_only=True
        )
        self.model.eval()
        self.num_layers = int(self.model.config.num_hidden_layers)

    def states(self, ids: list[int]) -> tuple[Any, Any]:
        """All hidden states (num_layers + 1 tensors) and the logits of one text."""
        torch = self.torch
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        return out.hidden_states, out.logits

    def embed(
        self, tokens: Sequence[Tokenized], layers: Sequence[int], pooling: str
    ) -> dict[int, np.ndarray]:
        """Pooled vectors per layer for already tokenized texts, one forward pass each."""
        rows: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
        for t in tokens:
            hidden, _logits = self.states(t.ids)
            for layer in layers:
                h = hidden[layer][0]
                if pooling == "last":
                    v = h[-1]
                elif pooling == "mean":  # response tokens; the last token if it is empty
                    v = h[min(t.response_start, len(t.ids) - 1) :].mean(0)
                else:
                    v = h.mean(0)
                rows[layer].append(v.float().numpy())
        width = int(self.model.config.hidden_size)
        return {
            layer: np.stack(v) if v else np.zeros((0, width), dtype=np.float32)
            for layer, v in rows.items()
        }


def reference_folder() -> str:
    """The default model's dequantized weights (the folder our encoder loads)."""
    from legend_core.method.models import dequantized_default

    folder, _ = dequantized_default()
    return str(folder)


def main() -> None:
    from bench.common import hh_pairs, model, print_machine
    from legend_core.method.encode import encode

    print_machine()
    pairs = hh_pairs()[:4]
    lm = model("float32")
    settings = EncodeSettings()
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    tokens = tokenize(lm.tokenizer, prompts, responses, settings)
    ref = ReferenceEncoder(reference_folder())
    layer = lm.num_layers
    ours = encode(lm, prompts, responses, layers=[layer], settings=settings)
    theirs = ref.embed(tokens, [layer], settings.pooling)
    diff = np.abs(ours.vectors[layer] - theirs[layer]).max() / np.abs(theirs[layer]).max()
    print(f"largest relative difference, library float32 vs reference: {diff:.2e}")


if __name__ == "__main__":
    main()
