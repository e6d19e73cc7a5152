"""Run every benchmark: ``python -m bench`` (or ``make bench``); ``--help`` for options.

Each benchmark prints the machine and its ratios and writes ``bench/out/NAME.json``;
this runner adds ``bench/out/summary.json`` with the headline numbers and the targets of
issue 5. Budget: under 15 minutes on 2 idle cores (much longer when other jobs share them).
"""

from __future__ import annotations

import argparse
import importlib
import time
from typing import Any

from bench.common import print_machine, write_result

#: name -> module, in running order (cheap ones first, so a failure shows up early).
BENCHMARKS = {
    "margins": "bench.margins_bench",
    "store": "bench.store_bench",
    "cache": "bench.cache_bench",
    "layout": "bench.margins_layout",
    "maps": "bench.maps_bench",
    "flops": "bench.flops",
    "encoder": "bench.encoder",
    "ray": "bench.ray_bench",
    "sharing": "bench.sharing_bench",
    "app": "bench.app_bench",
    "annotate": "bench.annotate_bench",
}


def targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 5's targets against what was measured (only for benchmarks that ran)."""
    out = []

    def add(name: str, value: float, goal: str, met: bool, basis: str) -> None:
        out.append({"target": name, "value": value, "goal": goal, "met": bool(met), "basis": basis})

    annotate = results.get("annotate")
    if annotate:
        row = next(r for r in annotate["rows"] if r["name"] == "default")
        add(
            "legend annotate end to end vs the paper's loop (issue 15)",
            row["x"],
            ">= 10x",
            row["x"] >= 10,
            "wall per pair, model load differenced out, alternating",
        )
    enc = results.get("encoder")
    if enc:
        sub = enc["speed_subset"]
        best = sub["ours_stop_at_best"]
        final = sub["ours_to_final"]
        add(
            "encoder texts/s vs reference (direction's layer)",
            best["ratio_wall"],
            ">= 10x",
            best["ratio_wall"] >= 10,
            "wall, same texts, interleaved",
        )
        add(
            "encoder texts/s vs reference (final layer)",
            final["ratio_wall"],
            ">= 10x",
            final["ratio_wall"] >= 10,
            "wall, same texts, interleaved",
        )
        for name, per_layer in enc["agreement"].items():
            if "vs float32" not in name:
                continue
            for layer, a in per_layer.items():
                add(
                    f"cosine to float32, layer {layer} (min over vectors)",
                    a["cosine_min"],
                    ">= 0.999",
                    a["cosine_min"] >= 0.999,
                    name,
                )
                add(
                    f"same margin sign, layer {layer}",
                    a["same_sign_share"],
                    ">= 0.995",
                    a["same_sign_share"] >= 0.995,
                    name,
                )
    fl = results.get("flops")
    if fl:
        frac = fl["rates"]["executed"]["fraction_of_matmul_wall"]
        note = f"executed FLOPs, wall, {fl['dtype']} (issue 5: 50%, issue 15: 60%)"
        add("encoder rate / matmul rate", frac, ">= 60%", frac >= 0.6, note)
    mg = results.get("margins")
    if mg:
        t = mg["in_memory"]["ours"]["median_wall_s"]
        add(
            f"margins, {mg['in_memory']['pairs']:,} cached pairs in memory",
            t,
            "< 1 s",
            t < 1,
            "wall, median",
        )
        db = mg["from_database"]
        add(
            f"margins, {db['pairs']:,} stored pairs, all cached (annotate_dataset)",
            db["wall_s"],
            "< 1 s",
            db["wall_s"] < 1,
            "wall",
        )
    ca = results.get("cache")
    if ca:
        small, big = ca["small"], ca["big"]
        t = small["blocks"]["median_wall_s"]
        add(
            f"margins, {small['pairs']:,} cached pairs, new direction (projection pass)",
            t,
            "< 1 s",
            t < 1,
            f"wall, median; row cache {small['ratio_wall']:.1f}x slower",
        )
        for name, result in (("", small), (", HH-RLHF-sized texts", ca["hh_sized"])):
            e2e = result.get("end_to_end", result)
            t = e2e["annotate_dataset"]["median_wall_s"]
            add(
                f"margins, {result['pairs']:,} stored pairs, all cached (annotate_dataset){name}",
                t,
                "< 1 s",
                t < 1,
                f"wall, median; the path before {e2e['ratio_wall']:.1f}x slower",
            )
        t = big["blocks"]["median_wall_s"]
        add(
            f"margins, {big['pairs']:,} cached pairs (projection pass)",
            t,
            "< 10 s",
            t < 10,
            f"wall, median, fresh process; row cache {big['ratio_wall']:.1f}x slower",
        )
        peak = big["blocks"]["max_peak_rss_mib"]
        add(
            f"margins, {big['pairs']:,} cached pairs: peak memory (MiB)",
            peak,
            "< 2048",
            peak < 2048,
            "peak RSS of the process",
        )
        same = small["identical_bits"] and big["identical_bits"]
        add("block cache margins = row cache margins, bit for bit", float(same), "1", same, "")
        same = small["end_to_end"]["identical_bits"] and ca["hh_sized"]["identical_bits"]
        add("annotate_dataset margins = the path before's, bit for bit", float(same), "1", same, "")
    st = results.get("store")
    if st:
        imp = st["steps"]["import"]
        add(
            f"import of {st['pairs']:,} pairs",
            imp["seconds"],
            "< 10 s",
            imp["seconds"] < 10,
            f"wall ({imp['cpu_s']:.1f} s CPU)",
        )
        add(
            "import peak memory (MiB)",
            imp["peak_rss_mib"],
            "< 1024",
            imp["peak_rss_mib"] < 1024,
            "peak RSS of the process",
        )
        add(
            "a Review page step: the step with its counts (ms)",
            st["review_step_median_ms"],
            "< 50",
            st["review_step_median_ms"] < 50,
            f"median of 200, {st['pairs']:,} pairs",
        )
        nearly = st["steps"]["review_nearly_all"]
        worst = max(nearly[w]["now"] for w in ("before_the_last_10", "after_them_wrapping"))
        add(
            "a review and a Review page step, nearly all pairs reviewed (ms)",
            worst,
            "< 50",
            worst < 50,
            f"slower of two places, median of 20, {nearly['left']} of {st['pairs']:,} left",
        )
    layout = results.get("layout")
    if layout:
        add(
            "a new run's margins beside earlier runs, revision 0006 / 0007",
            layout["ratio_wall"],
            "> 1",
            layout["ratio_wall"] > 1,
            f"{layout['pairs']:,} margins beside {layout['runs_before']} runs, wall",
        )
    mp = results.get("maps")
    if mp:
        for r in mp["runs"]:
            if r["kind"] == "umap" and r["points"] == 10_000:
                add(
                    "UMAP of 10,000 points",
                    r["seconds"],
                    "< 15 s (issue 15; issue 5: < 30 s)",
                    r["seconds"] < 15,
                    f"wall ({r['cpu_s']:.1f} s CPU)",
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Run Legend Studio's benchmarks (issue 5).")
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that all run")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    start = time.perf_counter()
    info = print_machine()
    results: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for name in names:
        t0 = time.perf_counter()
        results[name] = importlib.import_module(BENCHMARKS[name]).run(quick=args.quick)
        seconds[name] = time.perf_counter() - t0
        print(f"[{name}: {seconds[name]:.0f}s]\n")
    checks = targets(results)
    print("== targets (issue 5) ==")
    for c in checks:
        value = c["value"]
        shown = f"{value:.4g}"
        verdict = "MET   " if c["met"] else "MISSED"
        print(f"  {verdict} {c['target']}: {shown} (goal {c['goal']}; {c['basis']})")
    total = time.perf_counter() - start
    each = ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items())
    print(f"all benchmarks: {total / 60:.1f} min ({each})")
    write_result(
        "summary",
        {
            "machine": info,
            "quick": args.quick,
            "seconds": seconds,
            "total_s": total,
            "targets": checks,
        },
    )


if __name__ == "__main__":
    main()
