"""Benchmark: what one loaded model shared by several jobs costs (the model lock).

Every forward pass holds its model's lock and hangs its hooks on the model for that pass
only (:mod:`legend_core.method.model_lock`). On HH-RLHF dev pairs with the default model:

- **One job alone**: ``encode_pairs`` as the code runs it, against the same call with the
  lock replaced by a no-op (what one job did before), interleaved in one run. Hooks are
  added and removed per pass in both; their cost is timed apart, per pass.
- **Two jobs at once**: two threads each encoding half the pairs on the one model, against
  one thread encoding all of them: passes take turns, so the total should not grow.

``python -m bench.sharing_bench [--quick]``; results in ``bench/out/sharing.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from typing import Any

from bench.common import fmt, hh_pairs, interleave, model, print_machine, table, write_result

N_PAIRS = 32
REPEATS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, repeats = (8, 2) if args.quick else (N_PAIRS, REPEATS)
    info = print_machine()

    from legend_core.method import model_lock
    from legend_core.method.encode import _Capture
    from legend_core.method.packing import encode_pairs, packing_verified

    lm = model()
    pairs = hh_pairs(n)
    layer = 15
    packing_verified(lm)

    def encode(subset: list[Any]) -> Any:
        return encode_pairs(
            lm,
            [p.prompt for p in subset],
            [p.chosen for p in subset],
            [p.rejected for p in subset],
            layers=[layer],
        )

    real_hold = model_lock.ModelLock.hold

    def without_lock() -> Any:
        model_lock.ModelLock.hold = lambda self: contextlib.nullcontext()  # type: ignore[method-assign]
        try:
            return encode(pairs)
        finally:
            model_lock.ModelLock.hold = real_hold  # type: ignore[method-assign]

    def two_jobs() -> None:
        halves = [pairs[: n // 2], pairs[n // 2 :]]
        threads = [threading.Thread(target=encode, args=(h,)) for h in halves]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    encode(pairs[:2])  # warm-up
    timings = interleave(
        {
            "one job, lock per pass (the code)": lambda: encode(pairs),
            "one job, no lock (before)": without_lock,
            "two jobs at once, half each": two_jobs,
        },
        repeats,
    )
    cycles = 200
    start = time.perf_counter()
    for _ in range(cycles):
        _Capture(lm, [layer], lambda layer, hidden: None).remove()
    hooks_ms = (time.perf_counter() - start) / cycles * 1000

    base = timings["one job, no lock (before)"].median_wall
    rows = [[name, fmt(t.median_wall), fmt(t.median_wall / base)] for name, t in timings.items()]
    print(table(rows, ["run", "median wall s", "ratio to no lock"]))
    print(f"adding and removing the hooks of one pass: {fmt(hooks_ms)} ms")
    write_result(
        "sharing",
        {
            "machine": info,
            "pairs": n,
            "layer": layer,
            "dtype": lm.dtype_name,
            "timings": {name: t.as_dict() for name, t in timings.items()},
            "ratio_lock_to_no_lock": timings["one job, lock per pass (the code)"].median_wall
            / base,
            "ratio_two_jobs_to_one": timings["two jobs at once, half each"].median_wall / base,
            "hooks_per_pass_ms": hooks_ms,
        },
    )


if __name__ == "__main__":
    main()
