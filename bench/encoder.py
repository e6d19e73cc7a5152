"""Benchmark 1: our encoder against the paper's reference method on 512 HH-RLHF texts.

The 512 texts are 256 pairs of ``../shared/data/hh-rlhf-harmless-base/dev.jsonl`` (the
first 256 rows), each as (prompt + chosen) and (prompt + rejected), with the library's
default settings (Alpaca template, response-mean pooling, 512 tokens) and default model.

- **Speed, same texts, interleaved.** The reference (:mod:`bench.reference`: float32, one
  text at a time, full LM with logits and all hidden states) is slow, so it embeds a subset
  (the first ``SUBSET`` pairs) in ``REFERENCE_CHUNKS`` chunks; before and after each chunk
  our encoder embeds the whole subset, once stopping after the direction's layer (what
  ``legend annotate`` runs) and once running to the final layer (the paper's layer).
  Texts/s are the subset's texts over the reference's total time and over the median of
  our runs; their ratio is the headline.
- **Speed, all 512 texts**: our default dtype (``auto``: bfloat16 on a CPU with native
  bfloat16) to the direction's layer and to the final layer, and float32 to the final
  layer, back to back.
- **Agreement.** Directions come from the demo contrastive set (``data/demo_contrast.csv``),
  encoded with the default model and dtype, fitted by mean difference on its training
  split, at the layer the app's ``best`` rule picks and at the final layer. On all 256
  pairs: cosine of every default-dtype vector to its float32 twin, and the share of pairs
  whose margin has the same sign. On the subset: the same against the reference.
- **Where the speed comes from** (subset, interleaved): texts one by one (``encode``,
  length-bucketed batches) versus pairs sharing their prompt (``encode_pairs``), each to
  the final layer and stopping after the direction's layer.

``python -m bench.encoder [--quick]``; results in ``bench/out/encoder.json``.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import numpy as np

from bench.common import (
    Timing,
    fmt,
    hh_pairs,
    interleave,
    model,
    print_machine,
    table,
    timed,
    write_result,
)

N_PAIRS = 256
SUBSET = 32
REFERENCE_CHUNKS = 4


def contrast_directions(lm: Any, settings: Any) -> tuple[int, dict[int, np.ndarray]]:
    """The app's ``best`` layer on the demo contrastive set and unit directions at that layer
    and at the final layer (mean difference on the training split, as ``build_direction``)."""
    from legend_core.config import DEMO_CONTRAST
    from legend_core.data.formats import read_contrast_set
    from legend_core.method import directions as dirs
    from legend_core.method.encode import encode

    items = read_contrast_set(DEMO_CONTRAST)
    n = len(items)
    enc = encode(
        lm,
        [i.instruction for i in items] * 2,
        [i.harmless for i in items] + [i.harmful for i in items],
        layers=range(1, lm.num_layers + 1),
        settings=settings,
    )
    train, test = dirs.split_indices(n, 0.25, 0)
    fitted, quality = {}, []
    for layer, x in enc.vectors.items():
        fitted[layer], q = dirs.layer_quality(layer, x[:n], x[n:], train, test, "mean_diff")
        quality.append(q)
    best = dirs.best_layer(quality)
    return best, {best: fitted[best], lm.num_layers: fitted[lm.num_layers]}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def agreement(
    ours: tuple[dict[int, np.ndarray], dict[int, np.ndarray]],
    base: tuple[dict[int, np.ndarray], dict[int, np.ndarray]],
    directions: dict[int, np.ndarray],
) -> dict[str, Any]:
    """Per layer: cosine of each vector to the baseline's, and same-sign share of margins."""
    from legend_core.method.margins import margins

    out: dict[str, Any] = {}
    for layer, v in directions.items():
        cos = np.concatenate([cosines(ours[s][layer], base[s][layer]) for s in (0, 1)])
        m_ours = margins(ours[0][layer], ours[1][layer], v)
        m_base = margins(base[0][layer], base[1][layer], v)
        same = np.sign(m_ours) == np.sign(m_base)
        out[str(layer)] = {
            "vectors": int(len(cos)),
            "cosine_min": float(cos.min()),
            "cosine_median": float(np.median(cos)),
            "share_cosine_ge_0.999": float((cos >= 0.999).mean()),
            "pairs": int(len(same)),
            "same_sign_share": float(same.mean()),
            "different_sign_pairs": int((~same).sum()),
            "margin_max_abs_diff": float(np.abs(m_ours - m_base).max()),
            "margin_p99_abs_diff": float(np.quantile(np.abs(m_ours - m_base), 0.99)),
            "margin_median_abs": float(np.median(np.abs(m_base))),
            # How close to zero the baseline margins of the pairs that changed sign were.
            "flipped_max_abs_margin": float(np.abs(m_base[~same]).max()) if (~same).any() else 0.0,
        }
    return out


def _speed(texts: int, tokens: int, wall: float, cpu: float) -> dict[str, float]:
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "texts_per_s": texts / wall,
        "tokens_per_s": tokens / wall,
    }


def run(quick: bool = False) -> dict[str, Any]:
    from bench.reference import ReferenceEncoder, reference_folder
    from legend_core.method.encode import EncodeSettings, encode, tokenize
    from legend_core.method.packing import encode_pairs

    print("== encoder: ours against the paper's reference method ==")
    info = print_machine()
    n_pairs, subset, chunks = (12, 4, 2) if quick else (N_PAIRS, SUBSET, REFERENCE_CHUNKS)
    pairs = hh_pairs()[:n_pairs]
    settings = EncodeSettings()
    lm = model("auto")
    lm32 = model("float32")
    dtype = str(lm.dtype).replace("torch.", "")
    final = lm.num_layers
    best, directions = contrast_directions(lm, settings)
    layers = sorted({best, final})
    print(f"model {lm.label}, default dtype {dtype}; direction layers: best {best}, final {final}")

    prompts = [p.prompt for p in pairs]
    chosen = [p.chosen for p in pairs]
    rejected = [p.rejected for p in pairs]
    tok_c = tokenize(lm.tokenizer, prompts, chosen, settings)
    tok_r = tokenize(lm.tokenizer, prompts, rejected, settings)
    text_tokens = np.array([len(t.ids) for t in tok_c] + [len(t.ids) for t in tok_r])
    sub_tokens = int(text_tokens[:subset].sum() + text_tokens[n_pairs : n_pairs + subset].sum())
    all_tokens = int(text_tokens.sum())
    n_sub, n_all = 2 * subset, 2 * n_pairs

    def ours_pairs(which: Any, lo: int, hi: int, wanted: list[int]) -> Any:
        return encode_pairs(
            which, prompts[lo:hi], chosen[lo:hi], rejected[lo:hi], layers=wanted, settings=settings
        )

    # Warm-up (first calls allocate and initialise kernels).
    ours_pairs(lm, 0, 2, layers)
    ours_pairs(lm32, 0, 2, layers)

    # --- 1. Reference vs ours on the subset, interleaved -----------------------------------
    # Ours twice per round: stopping at the direction's layer (what `legend annotate` runs)
    # and running to the final layer (the paper's layer, nothing to skip).
    ref = ReferenceEncoder(reference_folder())
    sub_texts = tok_c[:subset] + tok_r[:subset]
    ref.embed(sub_texts[:1], layers, settings.pooling)  # warm-up
    bounds = np.linspace(0, len(sub_texts), chunks + 1).astype(int)
    ref_time, ours_best, ours_final = Timing(), Timing(), Timing()
    ref_vectors: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    ours_sub = None
    for k in range(chunks + 1):
        timed(lambda: ours_pairs(lm, 0, subset, [best]), ours_best)
        if k == chunks:
            ours_sub, _, _ = timed(lambda: ours_pairs(lm, 0, subset, layers), ours_final)
            break
        part, wall, cpu = timed(
            lambda k=k: ref.embed(sub_texts[bounds[k] : bounds[k + 1]], layers, settings.pooling)
        )
        ref_time.add(wall, cpu)
        for layer in layers:
            ref_vectors[layer].append(part[layer])
        ours_sub, _, _ = timed(lambda: ours_pairs(lm, 0, subset, layers), ours_final)
        print(f"  reference chunk {k + 1}/{chunks}: {bounds[k + 1] - bounds[k]} texts {wall:.1f}s")
    ref.model = None  # free the reference model's memory
    ref_all = {layer: np.concatenate(v) for layer, v in ref_vectors.items()}
    ref_split = (
        {layer: x[:subset] for layer, x in ref_all.items()},
        {layer: x[subset:] for layer, x in ref_all.items()},
    )
    ref_wall, ref_cpu = sum(ref_time.wall), sum(ref_time.cpu)
    speed_subset = {
        "texts": n_sub,
        "text_tokens": sub_tokens,
        "reference": {**_speed(n_sub, sub_tokens, ref_wall, ref_cpu), "chunks": ref_time.as_dict()},
    }
    for name, t in (("ours_stop_at_best", ours_best), ("ours_to_final", ours_final)):
        speed_subset[name] = {
            **t.as_dict(),
            **_speed(n_sub, sub_tokens, t.median_wall, t.median_cpu),
            "ratio_wall": ref_wall / t.median_wall,
            "ratio_cpu": ref_cpu / t.median_cpu,
        }

    # --- 2. All 512 texts: ours (default dtype) and float32, back to back -----------------
    _, w_best, c_best = timed(lambda: ours_pairs(lm, 0, n_pairs, [best]))
    full_default, w_def, c_def = timed(lambda: ours_pairs(lm, 0, n_pairs, layers))
    full_f32, w_32, c_32 = timed(lambda: ours_pairs(lm32, 0, n_pairs, layers))
    ref_rate = speed_subset["reference"]["texts_per_s"]
    speed_all = {
        "texts": n_all,
        "text_tokens": all_tokens,
        "ours_stop_at_best": _speed(n_all, all_tokens, w_best, c_best),
        "ours_to_final": _speed(n_all, all_tokens, w_def, c_def),
        "ours_float32_to_final": _speed(n_all, all_tokens, w_32, c_32),
    }
    for run_ in ("ours_stop_at_best", "ours_to_final", "ours_float32_to_final"):
        speed_all[run_]["ratio_to_reference_per_text"] = speed_all[run_]["texts_per_s"] / ref_rate

    # --- 3. Agreement ----------------------------------------------------------------------
    def as_pair(enc: Any, n: int | None = None) -> tuple[dict[int, np.ndarray], ...]:
        return tuple({k: v[:n] for k, v in side.vectors.items()} for side in enc)

    agree = {
        f"{dtype} vs float32, all {n_pairs} pairs": agreement(
            as_pair(full_default), as_pair(full_f32), directions
        ),
        f"{dtype} vs reference, {subset} pairs": agreement(
            as_pair(ours_sub), ref_split, directions
        ),
        f"float32 vs reference, {subset} pairs": agreement(
            as_pair(full_f32, subset), ref_split, directions
        ),
    }

    # --- 4. Where the speed comes from (subset, interleaved) -------------------------------
    both = prompts[:subset] * 2
    responses = chosen[:subset] + rejected[:subset]
    ablation_runs = {
        "separate texts (encode), to final layer": lambda: encode(
            lm, both, responses, layers=[final], settings=settings
        ),
        f"separate texts (encode), stop after layer {best}": lambda: encode(
            lm, both, responses, layers=[best], settings=settings
        ),
        "pairs share the prompt (encode_pairs), to final layer": lambda: ours_pairs(
            lm, 0, subset, [final]
        ),
        f"pairs share the prompt, stop after layer {best}": lambda: ours_pairs(
            lm, 0, subset, [best]
        ),
    }
    ablation = interleave(ablation_runs, 1 if quick else 2)
    ablation_out = {
        name: {**t.as_dict(), "texts_per_s": n_sub / t.median_wall} for name, t in ablation.items()
    }

    # --- report ----------------------------------------------------------------------------
    r = speed_subset["reference"]
    rows = [
        [
            "reference (float32, 1 text/pass, LM head)",
            n_sub,
            fmt(r["wall_s"]),
            fmt(r["cpu_s"]),
            fmt(r["texts_per_s"]),
            fmt(r["tokens_per_s"]),
            "1",
        ]
    ]
    for name, label in (
        ("ours_stop_at_best", f"layer {best}"),
        ("ours_to_final", f"layer {final}"),
    ):
        o = speed_subset[name]
        rows.append(
            [
                f"ours ({dtype}, encode_pairs, {label})",
                n_sub,
                fmt(o["median_wall_s"]),
                fmt(o["median_cpu_s"]),
                fmt(o["texts_per_s"]),
                fmt(o["tokens_per_s"]),
                fmt(o["ratio_wall"]),
            ]
        )
    for name, label in (
        ("ours_stop_at_best", f"{dtype}, layer {best}"),
        ("ours_to_final", f"{dtype}, layer {final}"),
        ("ours_float32_to_final", f"float32, layer {final}"),
    ):
        o = speed_all[name]
        rows.append(
            [
                f"ours ({label}), all {n_all} texts",
                n_all,
                fmt(o["wall_s"]),
                fmt(o["cpu_s"]),
                fmt(o["texts_per_s"]),
                fmt(o["tokens_per_s"]),
                fmt(o["ratio_to_reference_per_text"]),
            ]
        )
    print()
    print(
        table(rows, ["encoder", "texts", "wall s", "cpu s", "texts/s", "tokens/s", "x reference"])
    )
    print(
        f"CPU-time ratios on the subset: {speed_subset['ours_stop_at_best']['ratio_cpu']:.1f}x "
        f"(layer {best}), {speed_subset['ours_to_final']['ratio_cpu']:.1f}x (layer {final})"
    )
    print()
    rows = []
    for name, per_layer in agree.items():
        for layer, a in per_layer.items():
            rows.append(
                [
                    name,
                    layer,
                    f"{a['cosine_min']:.6f}",
                    f"{a['share_cosine_ge_0.999']:.4f}",
                    f"{a['same_sign_share']:.4f} ({a['pairs'] - a['different_sign_pairs']}"
                    f"/{a['pairs']})",
                    f"{a['margin_p99_abs_diff']:.3g} / {a['margin_median_abs']:.3g}",
                    f"{a['flipped_max_abs_margin']:.3g}" if a["different_sign_pairs"] else "-",
                ]
            )
    header = ["agreement", "layer", "min cosine", "share cos>=0.999", "same margin sign"]
    header += ["p99 |margin diff| / median |margin|", "largest |margin| that flipped"]
    print(table(rows, header))
    print()
    base = ablation_out["separate texts (encode), to final layer"]["median_wall_s"]
    print(
        table(
            [
                [
                    name,
                    fmt(a["median_wall_s"]),
                    fmt(a["median_cpu_s"]),
                    fmt(a["texts_per_s"]),
                    fmt(base / a["median_wall_s"]),
                ]
                for name, a in ablation_out.items()
            ],
            [f"variant ({dtype}, {n_sub} texts)", "wall s", "cpu s", "texts/s", "x first"],
        )
    )
    result = {
        "machine": info,
        "model": lm.label,
        "default_dtype": dtype,
        "settings": {
            "template": settings.template,
            "pooling": settings.pooling,
            "max_length": settings.max_length,
        },
        "layers": {"best": best, "final": final},
        "pairs": n_pairs,
        "subset_pairs": subset,
        "speed_subset": speed_subset,
        "speed_all": speed_all,
        "agreement": agree,
        "ablation_subset": ablation_out,
        "median_text_tokens": float(statistics.median(text_tokens.tolist())),
    }
    write_result("encoder", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few pairs, to check it runs")
    run(parser.parse_args().quick)


if __name__ == "__main__":
    main()
