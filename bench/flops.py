"""Benchmark 2: the encoder's arithmetic rate against a plain matrix multiply, same run.

FLOPs of one forward pass are counted from the real token counts of the rows the encoder
runs (``encode_pairs``: one packed row ``prompt | chosen tail | rejected tail`` per pair):

- every linear layer of every block run: 2 x (its weight count) per token (no LM head);
- attention: 4 x heads x head_dim per (query, visible key) pair, with each query seeing the
  keys the causal mask (and, for the rejected tail, the pair mask) lets it see.

Three counts are reported: the useful work of the packed rows (**executed**, the basis of
the rate), the same plus padding and the masked-out attention entries the kernels compute
anyway (**as computed**), and the work two separate passes over the two full texts would
need (**text-equivalent**, what the reference does minus its LM head).

The machine's rate is measured on the model's own linear shapes (every ``nn.Linear`` of a
block) in the model's dtype, with the same threads, interleaved with the encoder runs, at
``MATMUL_ROWS`` rows (one of our CPU batches, and a larger one); the faster is the basis.

``python -m bench.flops [--quick]``.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.common import fmt, hh_pairs, interleave, model, print_machine, table, write_result

SUBSET = 64
#: Pairs the paper's loop runs (one text per forward pass: slow).
REFERENCE_PAIRS = 8
#: Row counts of the matrix-multiply reference: one of our CPU batches and larger ones.
MATMUL_ROWS = (1024, 4096)


def block_linear_shapes(lm: Any) -> list[tuple[int, int]]:
    """(in_features, out_features) of every linear layer in one decoder block."""
    import torch

    from legend_core.method.encode import decoder_blocks

    block = decoder_blocks(lm.model)[0]
    return [
        (m.in_features, m.out_features) for m in block.modules() if isinstance(m, torch.nn.Linear)
    ]


def count_flops(lm: Any, tok_c: list[Any], tok_r: list[Any], batch_widths: list[tuple[int, int]]):
    """Executed, as-computed and text-equivalent FLOPs of ``encode_pairs`` on these pairs."""
    from legend_core.method.packing import _common_prefix

    cfg = lm.model.config
    layers = lm.num_layers
    linear_per_token = 2 * sum(i * o for i, o in block_linear_shapes(lm))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn_per_key = 4 * cfg.num_attention_heads * head_dim

    tokens = keys = 0
    text_tokens = text_keys = 0
    for c, r in zip(tok_c, tok_r):
        lc, lr = len(c.ids), len(r.ids)
        limit = min(c.response_start, r.response_start, lc - 1, lr - 1)
        s = _common_prefix(c.ids, r.ids, limit)
        tail = lr - s
        tokens += lc + tail
        keys += lc * (lc + 1) // 2 + tail * s + tail * (tail + 1) // 2
        text_tokens += lc + lr
        text_keys += lc * (lc + 1) // 2 + lr * (lr + 1) // 2
    padded_tokens = sum(b * w for b, w in batch_widths)
    padded_keys = sum(b * w * w for b, w in batch_widths)

    def total(t: int, k: int) -> float:
        return float(layers * (t * linear_per_token + k * attn_per_key))

    # The paper's loop also runs the LM head (hidden x vocabulary) on every token.
    lm_head = 2.0 * cfg.hidden_size * cfg.vocab_size * text_tokens
    return {
        "executed": total(tokens, keys),
        "paper_loop": total(text_tokens, text_keys) + lm_head,
        "as_computed": total(padded_tokens, padded_keys),
        "text_equivalent": total(text_tokens, text_keys),
        "tokens_executed": tokens,
        "tokens_padded": padded_tokens,
        "text_tokens": text_tokens,
        "linear_flops_per_token_per_layer": linear_per_token,
        "attention_flops_per_key_per_layer": attn_per_key,
        "linear_share_of_executed": layers * tokens * linear_per_token / total(tokens, keys),
    }


def packed_batches(lm: Any, tok_c: list[Any], tok_r: list[Any], batch_tokens: int, max_batch: int):
    """(rows, width) of each batch ``encode_pairs`` runs, by its own batching rule."""
    from legend_core.method.encode import length_batches
    from legend_core.method.packing import _common_prefix

    packed = []
    for c, r in zip(tok_c, tok_r):
        lc, lr = len(c.ids), len(r.ids)
        s = _common_prefix(c.ids, r.ids, min(c.response_start, r.response_start, lc - 1, lr - 1))
        packed.append(lc + lr - s)
    return [
        (len(b), max(packed[i] for i in b)) for b in length_batches(packed, batch_tokens, max_batch)
    ]


def matmul_runner(shapes: list[tuple[int, int]], dtype: Any, rows: int, repeats: int):
    """A callable doing ``repeats`` x every linear of one block on ``rows`` rows; its FLOPs."""
    import torch

    gen = torch.Generator().manual_seed(0)
    inputs = {i: torch.randn(rows, i, generator=gen).to(dtype) for i, _ in shapes}
    weights = [torch.randn(o, i, generator=gen).to(dtype) / i**0.5 for i, o in shapes]
    flops = 2.0 * rows * sum(i * o for i, o in shapes) * repeats

    def go() -> None:
        with torch.inference_mode():
            for _ in range(repeats):
                for (i, _), w in zip(shapes, weights):
                    torch.nn.functional.linear(inputs[i], w)

    return go, flops


def run(quick: bool = False) -> dict[str, Any]:
    import inspect

    from legend_core.method.encode import EncodeSettings, default_batch_tokens, tokenize
    from legend_core.method.packing import encode_pairs

    print("== flops: the encoder against the machine's matrix-multiply rate ==")
    info = print_machine()
    lm = model("auto")
    dtype = lm.dtype
    n = 4 if quick else SUBSET
    pairs = hh_pairs()[:n]
    settings = EncodeSettings()
    prompts, chosen, rejected = (
        [p.prompt for p in pairs],
        [p.chosen for p in pairs],
        [p.rejected for p in pairs],
    )
    max_batch = inspect.signature(encode_pairs).parameters["max_batch"].default
    batch_tokens = default_batch_tokens(lm)
    tok_c = tokenize(lm.tokenizer, prompts, chosen, settings)
    tok_r = tokenize(lm.tokenizer, prompts, rejected, settings)
    widths = packed_batches(lm, tok_c, tok_r, batch_tokens, max_batch)
    flops = count_flops(lm, tok_c, tok_r, widths)
    shapes = block_linear_shapes(lm)

    def encoder() -> None:
        encode_pairs(lm, prompts, chosen, rejected, layers=[lm.num_layers], settings=settings)

    # The paper's loop on the first REFERENCE_PAIRS pairs: how close to the machine's rate
    # the baseline of issue 15's "10x" already runs.
    from bench.reference import ReferenceEncoder, reference_folder

    reference = ReferenceEncoder(reference_folder())
    r = 1 if quick else REFERENCE_PAIRS
    reference_texts = tok_c[:r] + tok_r[:r]
    reference_flops = count_flops(lm, tok_c[:r], tok_r[:r], [])["paper_loop"]

    def paper_loop() -> None:
        reference.embed(reference_texts, [lm.num_layers], settings.pooling)

    encoder()  # warm-up
    paper_loop()
    runs: dict[str, Any] = {"encoder": encoder, "paper's loop": paper_loop}
    matmul_flops = {}
    for rows in MATMUL_ROWS:
        go, matmul_flops[rows] = matmul_runner(shapes, dtype, rows, 1 if quick else 80_000 // rows)
        go()
        runs[f"matmul {rows} rows"] = go
    timings = interleave(runs, 1 if quick else 3)
    enc_t = timings["encoder"]
    per_rows = {
        rows: matmul_flops[rows] / timings[f"matmul {rows} rows"].median_wall
        for rows in MATMUL_ROWS
    }
    # The machine's rate: the fastest of the row counts tried (the least flattering basis).
    fastest = max(per_rows, key=per_rows.__getitem__)
    mm_t = timings[f"matmul {fastest} rows"]
    rate_mm_wall = per_rows[fastest]
    rate_mm_cpu = matmul_flops[fastest] / mm_t.median_cpu
    rates = {}
    for kind in ("executed", "as_computed", "text_equivalent"):
        rates[kind] = {
            "wall_flops_per_s": flops[kind] / enc_t.median_wall,
            "fraction_of_matmul_wall": flops[kind] / enc_t.median_wall / rate_mm_wall,
            "fraction_of_matmul_cpu": flops[kind] / enc_t.median_cpu / rate_mm_cpu,
        }

    paper_t = timings["paper's loop"]
    paper_fraction = reference_flops / paper_t.median_wall / rate_mm_wall

    # float32 matrix multiply too, for scale (the reference's dtype).
    import torch

    mm32, mm32_flops = matmul_runner(
        shapes, torch.float32, fastest, 1 if quick else 20_000 // fastest
    )
    mm32()
    t32 = interleave({"f32": mm32}, 1 if quick else 2)["f32"]

    print(
        f"{n} pairs, {flops['text_tokens']:,} text tokens -> {flops['tokens_executed']:,} "
        f"tokens run ({flops['tokens_padded']:,} with padding) in {len(widths)} batches"
    )
    rows = [
        [
            kind.replace("_", " "),
            f"{flops[kind] / 1e9:,.0f}",
            fmt(rates[kind]["wall_flops_per_s"] / 1e9),
            f"{rates[kind]['fraction_of_matmul_wall']:.0%}",
            f"{rates[kind]['fraction_of_matmul_cpu']:.0%}",
        ]
        for kind in ("executed", "as_computed", "text_equivalent")
    ]
    print(table(rows, ["FLOPs counted", "GFLOP", "GFLOP/s", "of matmul (wall)", "(cpu)"]))
    print(
        f"matmul {str(dtype).replace('torch.', '')}, block shapes {shapes}: "
        + ", ".join(f"{r} rows {v / 1e9:,.0f}" for r, v in per_rows.items())
        + f" GFLOP/s wall (basis: {fastest} rows, {rate_mm_cpu / 1e9:,.0f} per CPU-second); "
        f"float32 at {fastest} rows: {mm32_flops / t32.median_wall / 1e9:,.0f} GFLOP/s wall"
    )
    print(f"encoder: {enc_t.median_wall:.2f}s wall, {enc_t.median_cpu:.2f}s CPU (median)")
    # What the paper's loop computes against what we compute stopping after layer L: the
    # most `legend annotate` can gain at equal arithmetic rates (BENCHMARKS.md §10).
    ratios = {
        layer: flops["paper_loop"] / (flops["executed"] * layer / lm.num_layers)
        for layer in range(1, lm.num_layers + 1)
    }
    print(
        f"the paper's loop on {r} pairs: {paper_t.median_wall:.2f}s wall, "
        f"{reference_flops / paper_t.median_wall / 1e9:,.1f} GFLOP/s = "
        f"{paper_fraction:.0%} of the matrix-multiply rate (LM head and all layers counted)"
    )
    print(
        f"the paper's loop computes {flops['paper_loop'] / 1e9:,.0f} GFLOP (LM head included): "
        + ", ".join(
            f"{ratios[k]:.2f}x ours to layer {k}" for k in (10, 15, 19, 25, 30) if k in ratios
        )
    )
    result = {
        "machine": info,
        "model": lm.label,
        "dtype": str(dtype).replace("torch.", ""),
        "pairs": n,
        "batches": widths,
        "flops": flops,
        "encoder": enc_t.as_dict(),
        "matmul": {
            **mm_t.as_dict(),
            "rows": fastest,
            "flops_per_s_wall_by_rows": per_rows,
            "shapes": shapes,
            "flops": matmul_flops[fastest],
            "flops_per_s_wall": rate_mm_wall,
            "flops_per_cpu_s": rate_mm_cpu,
        },
        "matmul_float32_flops_per_s_wall": mm32_flops / t32.median_wall,
        "rates": rates,
        "paper_loop_over_ours_by_layer": ratios,
        "paper_loop": {**paper_t.as_dict(), "pairs": r, "flops": reference_flops},
        "paper_loop_fraction_of_matmul_wall": paper_fraction,
    }
    write_result("flops", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few pairs, to check it runs")
    run(parser.parse_args().quick)


if __name__ == "__main__":
    main()
