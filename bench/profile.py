"""Profile of the slowest step, the encoder's forward pass: ``python -m bench.profile``.

Two views of ``encode_pairs`` on 16 HH-RLHF pairs (default model, dtype and settings,
final layer):

1. **Where the CPU time goes, by part of the model**: forward hooks on every block's
   submodules read this thread's CPU clock (``time.thread_time``) before and after, with
   torch on one thread so that the clock sees all the work; other jobs on the machine
   do not inflate a thread's CPU time the way they inflate wall time.
2. **pyinstrument** (wall clock, one thread too): self time per function.

Writes ``bench/out/profile.txt`` and ``bench/out/profile.json``. Needs ``pyinstrument``
(``pip install pyinstrument``) for the second part; the first runs without it.
"""

from __future__ import annotations

import argparse
import collections
import time
from typing import Any

from bench.common import OUT, hh_pairs, model, print_machine, write_result

PARTS = {
    "q_proj": "linear",
    "k_proj": "linear",
    "v_proj": "linear",
    "o_proj": "linear",
    "gate_proj": "linear",
    "up_proj": "linear",
    "down_proj": "linear",
}


def breakdown(lm: Any, run: Any) -> dict[str, float]:
    """CPU seconds of this thread per part of the model during ``run()``."""
    from legend_core.method.encode import decoder_blocks

    totals: collections.Counter[str] = collections.Counter()
    stack: list[float] = []
    hooks = []
    for block in decoder_blocks(lm.model):
        for name, module in block.named_modules():
            if not name or "." in name and name.split(".")[-1] not in PARTS:
                continue
            key = name.split(".")[-1]

            def pre(_m: Any, *_a: Any, **_k: Any) -> None:
                stack.append(time.thread_time())

            def post(_m: Any, *_a: Any, key: str = key, **_k: Any) -> None:
                totals[key] += time.thread_time() - stack.pop()

            hooks.append(module.register_forward_pre_hook(pre))
            hooks.append(module.register_forward_hook(post))
    start = time.thread_time()
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    total = time.thread_time() - start
    linear = sum(totals[k] for k in PARTS)
    attention_linear = sum(totals[k] for k in ("q_proj", "k_proj", "v_proj", "o_proj"))
    mlp_linear = sum(totals[k] for k in ("gate_proj", "up_proj", "down_proj"))
    norms = totals["input_layernorm"] + totals["post_attention_layernorm"]
    parts = {
        "linear layers (matrix multiplies)": linear,
        "attention core (rotary, softmax(QK)V)": totals["self_attn"] - attention_linear,
        "MLP activation (silu(gate) * up)": totals["mlp"] - mlp_linear,
        "RMS norms": norms,
    }
    parts["everything else (embedding, residual adds, pooling, Python)"] = total - sum(
        parts.values()
    )
    parts["total"] = total
    parts.update({f"  {k}": totals[k] for k in PARTS})
    return parts


def call_tree(run: Any) -> str:
    """pyinstrument's self time per function during ``run()`` (wall clock)."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return "(pyinstrument is not installed: pip install pyinstrument)"
    profiler = Profiler(interval=0.005)
    profiler.start()
    run()
    profiler.stop()
    flat = profiler.output_text(unicode=False, color=False, flat=True)
    return "pyinstrument, self time per function (wall clock, one thread):\n" + "\n".join(
        flat.splitlines()[:40]
    )


def run(quick: bool = False) -> dict[str, Any]:
    import torch

    from legend_core.method.encode import EncodeSettings
    from legend_core.method.packing import encode_pairs

    print("== profile: the encoder's forward pass ==")
    threads = torch.get_num_threads()
    info = print_machine()
    lm = model("auto")
    pairs = hh_pairs()[: 4 if quick else 16]
    args = ([p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs])

    def go() -> None:
        encode_pairs(lm, *args, layers=[lm.num_layers], settings=EncodeSettings())

    go()  # warm-up
    torch.set_num_threads(1)
    try:
        parts = breakdown(lm, go)
        tree = call_tree(go)
    finally:
        torch.set_num_threads(threads)
    lines = [f"CPU seconds of one thread by part of the model ({len(pairs)} pairs, final layer):"]
    total = parts["total"]
    for name, seconds in parts.items():
        lines.append(f"  {name:62s} {seconds:7.2f}s  {seconds / total:6.1%}")
    text = "\n".join(lines)
    print(text)

    print(tree)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "profile.txt").write_text(text + "\n\n" + tree, encoding="utf-8")
    result = {"machine": info, "pairs": len(pairs), "dtype": str(lm.dtype), "cpu_seconds": parts}
    write_result("profile", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 pairs, to check it runs")
    run(parser.parse_args().quick)


if __name__ == "__main__":
    main()
