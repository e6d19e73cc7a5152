"""The Ray engine against one process, on the same machine and the same pairs.

``legend annotate --engine ray`` exists to scale out to GPU actors on a cluster; on one
small machine it can only add the cost of starting Ray and loading a model replica per
actor. This measures that cost honestly: the first 128 HH-RLHF dev pairs, the default model
in float32, a direction at layer 15, margins written to a fresh SQLite store by
``annotate.annotate_dataset`` with the local engine, then with the Ray engine and 1 and 2
CPU actors (one CPU each). The Ray times include starting the actors, as a user waits for
them; the first Ray run also includes starting Ray itself.

``python -m bench.ray_bench [--quick]``; results in ``bench/out/ray.json``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import fmt, hh_pairs, model, print_machine, table, timed, write_result

LAYER = 15


def annotate(store_path: Path, pairs: list[Any], direction: Any, engine: Any = None) -> Any:
    """Margins of ``pairs`` in a fresh store: (margins in input order, wall s, CPU s)."""
    from legend_core.data.store import Store
    from legend_core.workflows.annotate import annotate_dataset

    store = Store(f"sqlite:///{store_path}")
    dataset_id = store.add_dataset("bench", pairs)
    direction_id = store.add_direction(direction)
    lm = None if engine is not None else model("float32")
    run_id, wall, cpu = timed(
        lambda: annotate_dataset(
            store,
            lm,
            dataset_id,
            direction_id,
            chunk_size=32,
            engine=engine,
            model_dtype="float32" if engine is not None else None,
        )
    )
    values = store.run_frame(run_id).sort_values("idx")["computed_margin"].to_numpy()
    store.close()
    return values, wall, cpu


def run(quick: bool = False) -> dict[str, Any]:
    import ray

    from legend_core.method.directions import Direction
    from legend_core.method.distributed import ray_engine

    print("== Ray engine against one process (same machine, same pairs) ==")
    info = print_machine()
    pairs = hh_pairs(256)[: 16 if quick else 128]
    lm = model("float32")
    vector = np.random.default_rng(0).standard_normal(lm.hidden_size).astype(np.float32)
    direction = Direction(vector, lm.name, LAYER, "mean", "plain", "mean_diff")
    direction.model_fingerprint = lm.fingerprint

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="legend-bench-ray-") as tmp:
        local, wall, cpu = annotate(Path(tmp) / "local.db", pairs, direction)
        results["one process"] = {"wall_s": wall, "cpu_s": cpu, "max_abs_diff": 0.0}
        for actors in (1, 2):
            engine = ray_engine(direction, actors=actors, dtype="float32", chunk_size=32)
            values, wall, cpu = annotate(Path(tmp) / f"ray{actors}.db", pairs, direction, engine)
            results[f"Ray, {actors} actor{'s' if actors > 1 else ''}"] = {
                "wall_s": wall,
                "cpu_s": cpu,  # the driver's only: actors are other processes
                "max_abs_diff": float(np.abs(values - local).max()),
            }
    ray.shutdown()

    base = results["one process"]["wall_s"]
    rows = [
        [name, len(pairs), fmt(r["wall_s"]), fmt(r["wall_s"] / base), f"{r['max_abs_diff']:.1e}"]
        for name, r in results.items()
    ]
    print(table(rows, ["engine", "pairs", "wall s", "× one process", "max |margin diff|"]))
    print("(the first Ray run includes starting Ray; every Ray run starts its actors)")
    out = {"machine": info, "pairs": len(pairs), "layer": LAYER, "results": results}
    write_result("ray", out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 pairs, to check it runs")
    run(parser.parse_args().quick)


if __name__ == "__main__":
    main()
