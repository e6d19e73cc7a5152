"""Benchmark: ``annotate_dataset`` end to end on stored pairs whose vectors are all cached.

Part of ``bench.cache_bench`` (issue 15: margins of 100,000 cached pairs through the store
under 1 s), and runnable alone: ``python -m bench.annotate_cached [--quick] [--pairs N]``
(results in ``bench/out/annotate_cached.json``). A new direction each time; no forward
pass can run (the stand-in model has no weights). Measured, interleaved, medians:

- ``annotate_dataset`` as it is, against the path before issue 15.1's second pass
  (:func:`annotate_before`, kept here as the baseline: the pairs' texts read through the
  ORM and hashed, a pass asking what is cached, then the projection pass, margins
  validated by ``IN`` lists and bound one dict per row); both runs' margins must be equal
  bit for bit. Then its steps timed apart.
- On short synthetic texts (the block store of ``cache_bench``) and on **HH-RLHF-sized
  texts** (real harmless dev pairs cycled, about 1.3 KB of text per pair): what reading a
  real data set's pairs costs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.cache_bench import DIM, FINGERPRINT, LAYER, PAIRS, build, direction_vector
from bench.common import Timing, fmt, print_machine, table, timed, write_result


def annotate_steps(store: Any, dataset_id: int, direction_id: int) -> dict[str, float]:
    """The steps of ``annotate_dataset`` for a cached data set, each timed once."""
    from legend_core.data.store import EmbeddingSpace
    from legend_core.workflows.annotate import MARGIN_CHUNK, run_settings

    direction = store.get_direction(direction_id)
    settings = run_settings(direction, "float32")
    run_id = store.start_run(dataset_id, direction_id, settings)
    steps: dict[str, float] = {}
    missing, steps["missing_margin_keys"], _ = timed(lambda: store.missing_margin_keys(run_id))
    sp = EmbeddingSpace.from_settings(settings)
    keys = missing.chosen + missing.rejected
    projected, steps["project_embeddings"], _ = timed(
        lambda: store.project_embeddings(sp, keys, direction.vector)
    )
    n = len(missing)
    values = projected.values[:n] - projected.values[n:]

    def add() -> None:
        for lo in range(0, n, MARGIN_CHUNK):
            hi = lo + MARGIN_CHUNK
            ids, chunk = missing.ids[lo:hi], values[lo:hi].tolist()
            store.add_margins(run_id, ids, chunk, refresh_statistics=False)

    _, steps["add_margins"], _ = timed(add)
    return steps


def _add_margins_before(store: Any, run_id: int, ids: list[int], vals: list[float]) -> None:
    """``Store.add_margins`` as it was before issue 15.1's second pass: membership checked by
    ``IN`` lists filtered on the data set, one parameter dict per row bound by SQLAlchemy."""
    from sqlalchemy import select

    from legend_core.data.schema import Margin, Pair
    from legend_core.data.store.engine import (
        BIG_INSERT,
        BULK_IN_CHUNK,
        INSERT_CHUNK,
        _refresh_statistics,
        _retry,
        insert_or_skip,
    )
    from legend_core.util import chunks

    def work() -> None:
        with store._session() as s, s.begin():
            dataset_id = store._run(s, run_id).dataset_id
            conn = s.connection()
            for chunk in chunks(ids, BULK_IN_CHUNK):
                query = select(Pair.id).where(Pair.id.in_(chunk), Pair.dataset_id == dataset_id)
                if len(set(conn.scalars(query))) != len(chunk):
                    raise ValueError("a pair is not in the run's data set")
            rows = [{"run_id": run_id, "pair_id": p, "value": v} for p, v in zip(ids, vals)]
            statement = insert_or_skip(conn, Margin.__table__)
            for chunk_rows in chunks(rows, INSERT_CHUNK):
                conn.execute(statement, list(chunk_rows))

    _retry(work)
    if len(ids) >= BIG_INSERT:  # PostgreSQL only
        _refresh_statistics(store.engine, ["margins"])


def annotate_before(store: Any, dataset_id: int, direction_id: int) -> int:
    """The baseline: ``annotate_dataset`` on a fully cached data set as it was before issue
    15.1's second pass. The pairs' texts read through the ORM and hashed into keys, a pass
    asking which keys are cached, then the projection pass, then the margins written as
    above. Its run is kept apart (one more settings key) so both paths' margins can be
    compared."""
    from sqlalchemy import exists, select

    from legend_core.data.schema import Margin, Pair
    from legend_core.data.store import EmbeddingSpace, PairText
    from legend_core.util import text_key
    from legend_core.workflows.annotate import MARGIN_CHUNK, run_settings

    direction = store.get_direction(direction_id)
    settings = run_settings(direction, "float32") | {"bench": "before"}
    space = EmbeddingSpace.from_settings(settings)
    run_id = store.start_run(dataset_id, direction_id, settings)
    with store._session() as s:
        has_margin = exists().where(Margin.run_id == run_id, Margin.pair_id == Pair.id)
        query = (
            select(Pair.id, Pair.idx, Pair.prompt, Pair.chosen, Pair.rejected)
            .where(Pair.dataset_id == dataset_id, ~has_margin)
            .order_by(Pair.idx)
        )
        missing = [PairText(*row) for row in s.execute(query)]
    chosen = [text_key(p.prompt, p.chosen) for p in missing]
    rejected = [text_key(p.prompt, p.rejected) for p in missing]
    keys = chosen + rejected
    cached = store.cached_keys(space, keys)
    if len(cached) != len(set(keys)):
        raise RuntimeError("the baseline expects every text cached")
    projected = store.project_embeddings(space, keys, direction.vector)
    n = len(missing)
    values = projected.values[:n] - projected.values[n:]
    for lo in range(0, n, MARGIN_CHUNK):
        hi = lo + MARGIN_CHUNK
        _add_margins_before(store, run_id, [p.id for p in missing[lo:hi]], values[lo:hi].tolist())
    store.finish_run(run_id)
    return run_id


def end_to_end(store: Any, dataset_id: int, repeats: int) -> dict[str, Any]:
    """``annotate_dataset`` on a stored data set with every vector cached, a new direction
    each time (the stand-in model has no weights: no forward pass can run), interleaved
    with the baseline on its own new direction; then the steps apart, on a third."""
    from types import SimpleNamespace

    from legend_core.method.directions import Direction
    from legend_core.workflows.annotate import annotate_dataset

    stub = SimpleNamespace(
        fingerprint=FINGERPRINT, hidden_size=DIM, num_layers=30, label="bench-model"
    )
    stub.dtype_name = "float32"

    def new_direction(seed: int) -> int:
        direction = Direction(
            direction_vector(seed), "bench-model", LAYER, "mean", "alpaca", "mean_diff"
        )
        direction.model_fingerprint = FINGERPRINT
        return store.add_direction(direction)

    after, before = Timing(), Timing()
    steps, identical = [], True
    for seed in range(repeats):
        direction_id = new_direction(100 + seed)
        runs: dict[str, int] = {}
        paths = {
            "after": (lambda d=direction_id: annotate_dataset(store, stub, dataset_id, d), after),
            "before": (lambda d=direction_id: annotate_before(store, dataset_id, d), before),
        }
        for name in ("after", "before") if seed % 2 == 0 else ("before", "after"):
            runs[name], _, _ = timed(*paths[name])
        ours = store.run_frame(runs["after"])["computed_margin"].to_numpy()
        theirs = store.run_frame(runs["before"])["computed_margin"].to_numpy()
        identical &= ours.tobytes() == theirs.tobytes() and not np.isnan(ours).any()
        steps.append(annotate_steps(store, dataset_id, new_direction(200 + seed)))
    return {
        "annotate_dataset": after.as_dict(),
        "before": before.as_dict(),
        "ratio_wall": before.median_wall / after.median_wall,
        "identical_bits": bool(identical),
        "steps_median_s": {k: float(np.median([s[k] for s in steps])) for k in steps[0]},
    }


def hh_sized_run(n_pairs: int, repeats: int) -> dict[str, Any]:
    """:func:`end_to_end` on pairs with HH-RLHF-sized texts (:func:`synthetic_pairs`)."""
    from legend_core.data.store import Store

    with tempfile.TemporaryDirectory(prefix="legend-cache-bench-") as tmp:
        folder = Path(tmp)
        print(f"building {n_pairs:,} stored pairs with HH-RLHF-sized texts, cached ...")
        built = build(folder, n_pairs, with_pairs=True, hh_sized=True, rows_cache=False)
        with Store(f"sqlite:///{folder / 'blocks.db'}") as store:
            frame = store.dataset_frame(built["dataset_id"])
            text_bytes = sum(
                len(t.encode()) for c in ("prompt", "chosen", "rejected") for t in frame[c]
            )
            del frame
            result = end_to_end(store, built["dataset_id"], repeats)
    return {"pairs": n_pairs, "build": built, "text_bytes_per_pair": text_bytes / n_pairs} | (
        result
    )


def end_to_end_rows(small: dict[str, Any], hh: dict[str, Any]) -> list[list[str]]:
    """Table rows of the end-to-end runs (short synthetic texts, HH-RLHF-sized texts)."""
    rows = []
    for label, result in (("", small), (", HH-RLHF-sized texts", hh)):
        e2e = result["end_to_end"] if "end_to_end" in result else result
        rows += [
            [
                f"{result['pairs']:,} pairs: annotate_dataset end to end{label}",
                fmt(e2e["annotate_dataset"]["median_wall_s"]),
                "",
                "1",
            ],
            [
                "  baseline: the path before (texts read and hashed, two passes)",
                fmt(e2e["before"]["median_wall_s"]),
                "",
                fmt(e2e["ratio_wall"]),
            ],
        ]
    return rows


def print_steps(name: str, result: dict[str, Any]) -> None:
    e2e = result["end_to_end"] if "end_to_end" in result else result
    steps = ", ".join(f"{k} {v:.2f}s" for k, v in e2e["steps_median_s"].items())
    print(f"annotate_dataset's steps ({name}): {steps}")
    print(f"  margins identical to the baseline's, bit for bit: {e2e['identical_bits']}")


def end_to_end_only(n_pairs: int, repeats: int) -> dict[str, Any]:
    """Only the end-to-end rows (``--end-to-end``): no row cache, no 1,000,000 pairs."""
    from legend_core.data.store import Store

    with tempfile.TemporaryDirectory(prefix="legend-cache-bench-") as tmp:
        folder = Path(tmp)
        print(f"building {n_pairs:,} stored pairs, cached ...")
        built = build(folder, n_pairs, with_pairs=True, rows_cache=False)
        with Store(f"sqlite:///{folder / 'blocks.db'}") as store:
            small = {"pairs": n_pairs, "build": built}
            small |= end_to_end(store, built["dataset_id"], repeats)
    return small


def run(quick: bool = False, pairs: int | None = None) -> dict[str, Any]:
    print("== annotate_dataset end to end, every vector cached ==")
    info = print_machine()
    n_pairs, repeats = pairs or (5_000 if quick else PAIRS), 1 if quick else 5
    small = end_to_end_only(n_pairs, repeats)
    hh = hh_sized_run(n_pairs, repeats)
    print(table(end_to_end_rows(small, hh), ["step", "wall s (median)", "", "time / ours"]))
    print_steps(f"{n_pairs:,} pairs", small)
    print_steps(f"{n_pairs:,} pairs, HH-RLHF-sized texts", hh)
    out = {"machine": info, "small": small, "hh_sized": hh}
    write_result("annotate_cached", out | {"load_after": os.getloadavg()[0]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check it runs")
    parser.add_argument("--pairs", type=int, default=None, help=f"default {PAIRS:,}")
    args = parser.parse_args()
    run(args.quick, args.pairs)


if __name__ == "__main__":
    main()
