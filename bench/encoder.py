"""Benchmark 1: our encoder against the paper's reference method on 512 HH-RLHF texts.

The 512 texts are 256 pairs of ``../shared/data/hh-rlhf-harmless-base/dev.jsonl`` (the
first 256 rows), each as (prompt + chosen) and (prompt + rejected), with the library's
default settings (Alpaca template, response-mean pooling, 512 tokens) and default model.

- **Speed, same texts, interleaved.** The reference (:mod:`bench.reference`: float32, one
  text at a time, full LM with logits and all hidden states) is slow, so it embeds a subset
  (the first ``SUBSET`` pairs), in chunks; between chunks our encoder embeds the whole
  subset again. Texts/s are the subset's texts over the reference's total time and over the
  median of our runs; the ratio of the two is the headline.
- **Speed, all 512 texts**: our default (``dtype=auto``) and float32, back to back.
- **Agreement.** Directions come from the demo contrastive set (``data/demo_contrast.csv``),
  encoded with the default model and dtype, fitted by mean difference on its training
  split, at the layer the app's ``best`` rule picks and at the final layer (the paper's).
  On all 256 pairs: cosine of every default-dtype vector to its float32 twin, and the share
  of pairs whose margin has the same sign. On the subset: the same against the reference.
- **Where the speed comes from** (subset, interleaved): texts one by one in separate
  batches (``encode``) versus pairs sharing their prompt (``encode_pairs``), and stopping
  after the direction's layer versus running to the final layer.

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
    from legend_core import directions as dirs
    from legend_core.config import DEMO_CONTRAST
    from legend_core.encode import encode
    from legend_core.formats import read_contrast_set

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
    from legend_core.margins import margins

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
            "margin_scale": float(np.abs(m_base).mean()),
        }
    return out


def run(quick: bool = False) -> dict[str, Any]:
    from bench.reference import ReferenceEncoder, reference_folder
    from legend_core.encode import EncodeSettings, encode, encode_pairs, tokenize

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

    def ours_pairs(which: Any, lo: int, hi: int, wanted: list[int] = layers) -> Any:
        return encode_pairs(
            which, prompts[lo:hi], chosen[lo:hi], rejected[lo:hi], layers=wanted, settings=settings
        )

    # Warm-up (first calls allocate and initialise kernels).
    ours_pairs(lm, 0, 2)
    ours_pairs(lm32, 0, 2)

    # --- 1. Reference vs ours on the subset, interleaved -----------------------------------
    ref = ReferenceEncoder(reference_folder())
    sub_texts = tok_c[:subset] + tok_r[:subset]
    ref.embed(sub_texts[:1], layers, settings.pooling)  # warm-up
    bounds = np.linspace(0, len(sub_texts), chunks + 1).astype(int)
    ref_time, ours_time = Timing(), Timing()
    ref_vectors: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    ours_sub = None
    for k in range(chunks):
        ours_sub, _, _ = timed(lambda: ours_pairs(lm, 0, subset), ours_time)
        part, wall, cpu = timed(
            lambda k=k: ref.embed(sub_texts[bounds[k] : bounds[k + 1]], layers, settings.pooling)
        )
        ref_time.add(wall, cpu)
        for layer in layers:
            ref_vectors[layer].append(part[layer])
        print(f"  reference chunk {k + 1}/{chunks}: {bounds[k + 1] - bounds[k]} texts {wall:.1f}s")
    ours_sub, _, _ = timed(lambda: ours_pairs(lm, 0, subset), ours_time)
    ref.model = None  # free the reference model's memory
    ref_all = {layer: np.concatenate(v) for layer, v in ref_vectors.items()}
    ref_split = (
        {layer: x[:subset] for layer, x in ref_all.items()},
        {layer: x[subset:] for layer, x in ref_all.items()},
    )
    ref_wall, ref_cpu = sum(ref_time.wall), sum(ref_time.cpu)
    n_sub = 2 * subset
    speed_subset = {
        "texts": n_sub,
        "text_tokens": sub_tokens,
        "reference": {
            "wall_s": ref_wall,
            "cpu_s": ref_cpu,
            "texts_per_s": n_sub / ref_wall,
            "tokens_per_s": sub_tokens / ref_wall,
            "chunks": ref_time.as_dict(),
        },
        "ours": {
            **ours_time.as_dict(),
            "texts_per_s": n_sub / ours_time.median_wall,
            "tokens_per_s": sub_tokens / ours_time.median_wall,
        },
        "ratio_wall": ref_wall / ours_time.median_wall,
        "ratio_cpu": ref_cpu / ours_time.median_cpu,
    }

    # --- 2. All 512 texts: ours (default dtype) and float32, back to back -----------------
    full_default, w_def, c_def = timed(lambda: ours_pairs(lm, 0, n_pairs))
    full_f32, w_32, c_32 = timed(lambda: ours_pairs(lm32, 0, n_pairs))
    n_all = 2 * n_pairs
    speed_all = {
        "texts": n_all,
        "text_tokens": all_tokens,
        "ours_default": {
            "dtype": dtype,
            "wall_s": w_def,
            "cpu_s": c_def,
            "texts_per_s": n_all / w_def,
            "tokens_per_s": all_tokens / w_def,
        },
        "ours_float32": {
            "wall_s": w_32,
            "cpu_s": c_32,
            "texts_per_s": n_all / w_32,
            "tokens_per_s": all_tokens / w_32,
        },
        "ratio_to_reference_per_text": (n_all / w_def) / speed_subset["reference"]["texts_per_s"],
    }

    # --- 3. Agreement ----------------------------------------------------------------------
    as_pair = lambda enc: (enc[0].vectors, enc[1].vectors)  # noqa: E731
    agree = {
        "default_vs_float32_all_pairs": agreement(
            as_pair(full_default), as_pair(full_f32), directions
        ),
        "default_vs_reference_subset": agreement(as_pair(ours_sub), ref_split, directions),
        "float32_vs_reference_subset": agreement(
            (
                {k: v[:subset] for k, v in full_f32[0].vectors.items()},
                {k: v[:subset] for k, v in full_f32[1].vectors.items()},
            ),
            ref_split,
            directions,
        ),
    }

    # --- 4. Where the speed comes from (subset, interleaved) -------------------------------
    both = prompts[:subset] * 2
    responses = chosen[:subset] + rejected[:subset]
    ablation_runs = {
        "separate texts (encode), to final layer": lambda: encode(
            lm, both, responses, layers=layers, settings=settings
        ),
        "pairs share the prompt (encode_pairs), to final layer": lambda: ours_pairs(lm, 0, subset),
        f"pairs share the prompt, stop after layer {best}": lambda: ours_pairs(
            lm, 0, subset, [best]
        ),
        "float32, pairs share the prompt, to final layer": lambda: ours_pairs(lm32, 0, subset),
    }
    ablation = interleave(ablation_runs, 1 if quick else 2)
    ablation_out = {
        name: {**t.as_dict(), "texts_per_s": n_sub / t.median_wall} for name, t in ablation.items()
    }

    # --- report ----------------------------------------------------------------------------
    r, o = speed_subset["reference"], speed_subset["ours"]
    print()
    print(
        table(
            [
                [
                    "reference (f32, 1 text/pass, LM head)",
                    n_sub,
                    fmt(r["wall_s"]),
                    fmt(r["texts_per_s"]),
                    fmt(r["tokens_per_s"]),
                    "1",
                ],
                [
                    f"ours ({dtype}, encode_pairs)",
                    n_sub,
                    fmt(ours_time.median_wall),
                    fmt(o["texts_per_s"]),
                    fmt(o["tokens_per_s"]),
                    fmt(speed_subset["ratio_wall"]),
                ],
                [
                    f"ours ({dtype}), all 512 texts",
                    n_all,
                    fmt(w_def),
                    fmt(n_all / w_def),
                    fmt(all_tokens / w_def),
                    fmt(speed_all["ratio_to_reference_per_text"]),
                ],
                [
                    "ours (float32), all 512 texts",
                    n_all,
                    fmt(w_32),
                    fmt(n_all / w_32),
                    fmt(all_tokens / w_32),
                    fmt((n_all / w_32) / r["texts_per_s"]),
                ],
            ],
            ["encoder", "texts", "wall s", "texts/s", "tokens/s", "x reference"],
        )
    )
    print(f"CPU-time ratio on the subset (all threads): {speed_subset['ratio_cpu']:.1f}x")
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
                ]
            )
    print(table(rows, ["agreement", "layer", "min cosine", "share cos>=0.999", "same margin sign"]))
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
            [f"variant ({n_sub} texts)", "wall s", "cpu s", "texts/s", "x separate"],
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
