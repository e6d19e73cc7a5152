"""Benchmark 4: the database with 100,000 pairs: import, margins, the review queue, export.

The benchmark writes a synthetic preference file (``N`` pairs in the TRL JSONL layout,
deterministic, prompts ~3x longer than responses, as in HH-RLHF), then runs each step in
a fresh interpreter so that its time and peak memory are its own:

1. **import**: ``Store.import_file`` (parse, check, insert) into a new SQLite file;
2. **margins**: a direction and a margin run with a margin for every pair (``add_margins``);
3. **review queue**: 500 reviews on the front of the queue, then what the Review page reads
   for each pair it shows (``queue_step`` and ``review_counts``, at the first unreviewed
   pair), timed many times, together and one by one, at the front, middle and end of the
   queue, in each order, for a selection of 10,000 pairs, and against listing the whole
   queue (what the page read at every step before ``queue_step``);
4. **export**: ``export_dataset`` to JSONL and to Parquet (TRL-ready rows + manifest);
5. **nearly all reviewed**: every pair reviewed but 10, then a review and a Review page
   step at a time, against the same with the reviewed pairs counted from scratch and "next
   unreviewed" read on through the queue (the code before ``data/store/reviewed.py``).

Baselines, in the same run: the file parsed with ``json.loads`` and inserted with bare
``sqlite3.executemany`` into a table without indexes (the floor for an import), the bare
``SELECT ... ORDER BY value`` of the whole queue on the same database, and ``json.dumps`` of the
rows fetched with bare ``sqlite3`` (the floor for an export).

``python -m bench.store_bench [--pairs N]``; results in ``bench/out/store.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.common import (
    cpu_seconds,
    current_rss_mib,
    fmt,
    in_subprocess,
    peak_rss_mib,
    print_machine,
    table,
    write_result,
)

N_PAIRS = 100_000
N_REVIEWS = 500
QUERY_REPEATS = 200
NEARLY_ALL_ROUNDS = 20

WORDS = (
    "the a to of and in is it you that for on with how can i do what my be this are "
    "help make people get would will not your about want know like could should some "
    "friend house car money phone police gun drug steal hurt safe legal illegal advice "
    "please sorry cannot sure here idea way think really just also good bad time"
).split()


def synthetic_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` deterministic pairs: prompt ~90 words, responses ~30 words each."""
    rng = random.Random(seed)

    def text(mean: int) -> str:
        return " ".join(rng.choices(WORDS, k=max(1, int(rng.expovariate(1 / mean)) + 3)))

    return [
        {
            "prompt": f"Human: {text(90)}\n\nAssistant:",
            "chosen": text(30),
            "rejected": text(30),
            "source_id": f"syn-{i}",
        }
        for i in range(n)
    ]


def write_file(path: Path, n: int) -> int:
    with path.open("w", encoding="utf-8") as f:
        for row in synthetic_pairs(n):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path.stat().st_size


# --- steps, each in its own interpreter ---------------------------------------------------------


def _step(name: str, fn: Any) -> dict[str, Any]:
    before = current_rss_mib()
    start, cpu = time.perf_counter(), cpu_seconds()
    out = fn() or {}
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return {
        "step": name,
        "seconds": seconds,
        "cpu_s": cpu,
        "rss_before_mib": before,
        "peak_rss_mib": peak_rss_mib(),
        **out,
    }


def worker(step: str, db: str, path: str) -> dict[str, Any]:
    import numpy as np

    from legend_core.data.store import Store

    url = f"sqlite:///{db}"
    if step == "baseline_import":

        def go() -> None:
            con = sqlite3.connect(db + ".bare")
            con.execute("CREATE TABLE pairs (idx INTEGER, prompt TEXT, chosen TEXT, rejected TEXT)")
            with open(path, encoding="utf-8") as f:
                rows = (
                    (i, r["prompt"], r["chosen"], r["rejected"])
                    for i, r in enumerate(map(json.loads, f))
                )
                con.executemany("INSERT INTO pairs VALUES (?, ?, ?, ?)", rows)
            con.commit()
            con.close()

        return _step(step, go)

    store = Store(url)  # schema created (or checked) before the clock starts
    if step == "import":
        result: dict[str, Any] = {}

        def go() -> dict[str, Any]:
            dataset_id, report = store.import_file(path, name="synthetic")
            result.update(dataset_id=dataset_id, pairs=len(report.pairs), format=report.format)
            return result

        return _step(step, go)

    dataset_id = store.list_datasets()[0].id
    if step == "margins":
        from legend_core.method.directions import Direction

        vector = np.random.default_rng(0).standard_normal(576).astype(np.float32)
        direction = Direction(vector, "synthetic", 15, "mean", "alpaca", "mean_diff")
        direction_id = store.add_direction(direction)

        def go() -> dict[str, Any]:
            frame = store.dataset_frame(dataset_id)
            values = np.random.default_rng(1).standard_normal(len(frame))
            run_id = store.start_run(dataset_id, direction_id, {"layer": 15})
            store.add_margins(run_id, frame["id"].tolist(), values.tolist())
            store.finish_run(run_id)
            return {"run_id": run_id, "margins": len(frame)}

        return _step(step, go)

    run_id = store.list_runs(dataset_id)[0].id
    if step == "review":
        # Reviewers walk the queue from its front: the first N_REVIEWS pairs are reviewed.
        front = store.review_queue(run_id)[:N_REVIEWS]
        for pair_id in front:
            store.add_review(pair_id, "bench", "accept", run_id=run_id)

        def timings(fn: Any, repeats: int = QUERY_REPEATS) -> dict[str, float]:
            fn()
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - start)
            samples.sort()
            return {
                "median_ms": 1000 * statistics.median(samples),
                "p95_ms": 1000 * samples[max(0, int(0.95 * len(samples)) - 1)],
                "max_ms": 1000 * samples[-1],
                "calls": repeats,
            }

        from legend_core.app.queue import list_step, ordered_queue

        queue = store.review_queue(run_id)
        frontier = queue[N_REVIEWS]  # the first unreviewed pair: where a reviewer stands
        middle, last = queue[len(queue) // 2], queue[-1]

        def page_step(current: int = frontier, annotator: str | None = None) -> None:
            # What app_pages/review.py reads for the queue at each pair it shows (whole run):
            # the step, with the counts read with it.
            step = store.queue_step(run_id, "disagreement", current, annotator=annotator)
            assert step.counts is not None

        def pane_reads() -> None:
            # The step and everything else the pane reads about the pair it shows.
            page_step()
            store.get_pair(frontier)
            store.annotator_state(frontier, "bench")
            store.pair_state(frontier, run_id)
            store.pair_history(frontier)

        # A selection of 10,000 pairs (Explore's chart or filter): listed once, then stepped.
        chosen = queue[::10]
        memo: dict[str, Any] = {}
        listed = ordered_queue(store, run_id, "disagreement", chosen, len(queue), memo)

        def listing() -> None:
            # What the page read at every step before queue_step (less its counts): the
            # whole queue, then its unreviewed rest.
            store.review_queue(run_id)
            store.review_queue(run_id, unreviewed_only=True)

        con = sqlite3.connect(db)
        bare_sql = "SELECT pair_id FROM margins WHERE run_id = ? ORDER BY value, pair_id"
        out = {
            "reviews": len(front),
            "review_page_step": timings(page_step),
            "review_page_step_blind": timings(lambda: page_step(annotator="bench")),
            "review_pane_reads": timings(pane_reads),
            "queue_step_front": timings(lambda: store.queue_step(run_id, current=queue[0])),
            "queue_step_middle": timings(lambda: store.queue_step(run_id, current=middle)),
            "queue_step_last": timings(lambda: store.queue_step(run_id, current=last)),
            "queue_step_least_sure": timings(
                lambda: store.queue_step(run_id, "least_sure", current=middle)
            ),
            "queue_step_index_order": timings(
                lambda: store.queue_step(run_id, "index", current=middle)
            ),
            "review_counts": timings(lambda: store.review_counts(run_id)),
            "selection_first_listing": timings(
                lambda: ordered_queue(store, run_id, "disagreement", chosen, len(queue), {}), 20
            ),
            "selection_step": timings(lambda: list_step(store, run_id, listed, listed[0])),
            "review_queue": timings(lambda: store.review_queue(run_id), 20),
            "whole_queue_listing": timings(listing, 20),
            "baseline_bare_sql_queue": timings(lambda: con.execute(bare_sql, (run_id,)).fetchall()),
        }
        con.close()
        return {"step": step, **out}
    if step == "review_nearly_all":
        return _nearly_all_reviewed(store, run_id, db)
    if step in ("export_jsonl", "export_parquet"):
        from legend_core.data.exports import export_dataset

        suffix = step.split("_")[1]
        target = Path(path).with_name(f"export.{suffix}")

        def go() -> dict[str, Any]:
            manifest = export_dataset(store, run_id, target)
            return {"rows": manifest["counts"].get("rows"), "bytes": target.stat().st_size}

        return _step(step, go)
    if step == "baseline_export":
        target = Path(path).with_name("bare.jsonl")

        def go() -> None:
            con = sqlite3.connect(db)
            query = (
                "SELECT p.prompt, p.chosen, p.rejected, m.value FROM pairs p "
                "JOIN margins m ON m.pair_id = p.id WHERE m.run_id = ? ORDER BY p.idx"
            )
            with target.open("w", encoding="utf-8") as f:
                for p, c, r, v in con.execute(query, (run_id,)):
                    row = {"prompt": p, "chosen": c, "rejected": r, "margin": v}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            con.close()

        return _step(step, go)
    raise SystemExit(f"unknown step {step}")


def _nearly_all_reviewed(store: Any, run_id: int, db: str) -> dict[str, Any]:
    """Every pair reviewed but 10 in the queue's middle (reviews written with bare sqlite3):
    a Review page step, each after one more review, now and as before (the reviewed pairs
    counted from scratch in SQL; "next unreviewed" found by reading on through the queue),
    alternating."""
    from legend_core.data.schema import Margin
    from legend_core.data.store.reviewed import Reviewed
    from legend_core.data.store.verdicts import _VERDICT, _current_verdict

    queue = store.review_queue(run_id)
    start = len(queue) * 6 // 10
    left = set(queue[start : start + 10])
    con = sqlite3.connect(db)
    stamp = con.execute("SELECT created_at FROM reviews LIMIT 1").fetchone()[0]
    reviewed = {r[0] for r in con.execute("SELECT DISTINCT pair_id FROM reviews")}
    con.executemany(
        "INSERT INTO reviews (pair_id, annotator, action, note, created_at, run_id) "
        "VALUES (?, 'bench', 'accept', '', ?, ?)",
        [(p, stamp, run_id) for p in queue if p not in left and p not in reviewed],
    )
    con.commit()
    con.close()
    before, after = queue[start - 10], queue[start + 20]

    def counted_afresh() -> tuple[int, int]:
        verdicts = select(_VERDICT.pair_id).where(_current_verdict(_VERDICT))
        with store.engine.connect() as conn:
            total = conn.scalar(select(func.count()).where(Margin.run_id == run_id))
            done = conn.scalar(
                select(func.count()).where(Margin.run_id == run_id, Margin.pair_id.in_(verdicts))
            )
        return done, total - done

    def now(current: int) -> Any:
        store.add_review(current, "bench", "flag", run_id=run_id)
        step = store.queue_step(run_id, "disagreement", current)
        return step.next_unreviewed, step.counts

    class NothingKept:
        """The code before: nothing kept, so "next unreviewed" reads on through the queue."""

        def look(self, s: Any, run_id: int, annotator: Any = None, at_most: Any = None) -> Any:
            return Reviewed(0, 0, None)

    def as_before(current: int) -> Any:
        kept = store.__dict__.get("_reviewed_pairs_tracker")
        store.__dict__["_reviewed_pairs_tracker"] = NothingKept()
        try:
            store.add_review(current, "bench", "flag", run_id=run_id)
            step = store.queue_step(run_id, "disagreement", current)
            return step.next_unreviewed, counted_afresh()
        finally:
            store.__dict__.pop("_reviewed_pairs_tracker")
            if kept is not None:
                store.__dict__["_reviewed_pairs_tracker"] = kept

    out: dict[str, Any] = {"reviewed": len(queue) - len(left), "left": len(left)}
    for where, current in (("before_the_last_10", before), ("after_them_wrapping", after)):
        assert now(current) == as_before(current)  # same answers, and the first full read
        samples: dict[str, list[float]] = {"now": [], "before": []}
        for round_ in range(NEARLY_ALL_ROUNDS):
            for name in ("now", "before") if round_ % 2 == 0 else ("before", "now"):
                fn = now if name == "now" else as_before
                t = time.perf_counter()
                fn(current)
                samples[name].append(1000 * (time.perf_counter() - t))
        out[where] = {name: statistics.median(v) for name, v in samples.items()}
    return {"step": "review_nearly_all", **out}


def run(quick: bool = False, pairs: int | None = None) -> dict[str, Any]:
    print("== store: 100,000 pairs in the database ==")
    info = print_machine()
    n = pairs or (2_000 if quick else N_PAIRS)
    with tempfile.TemporaryDirectory(prefix="legend-bench-") as tmp:
        path = Path(tmp) / "pairs.jsonl"
        db = str(Path(tmp) / "bench.db")
        start = time.perf_counter()
        size = write_file(path, n)
        print(
            f"wrote {n:,} synthetic pairs ({size / 2**20:.0f} MiB) "
            f"in {time.perf_counter() - start:.1f}s"
        )
        steps = {}
        for step in (
            "baseline_import",
            "import",
            "margins",
            "review",
            "export_jsonl",
            "export_parquet",
            "baseline_export",
            "review_nearly_all",
        ):
            steps[step] = in_subprocess("bench.store_bench", "--worker", step, db, str(path))
            shown = steps[step].get("seconds")
            print(f"  {step}: " + (f"{shown:.2f}s" if shown is not None else "done"))
        db_size = Path(db).stat().st_size

    imp, base = steps["import"], steps["baseline_import"]
    rev = steps["review"]
    rows = [
        [
            "import (parse, check, insert)",
            fmt(imp["seconds"]),
            fmt(imp["peak_rss_mib"]),
            fmt(imp["seconds"] / base["seconds"]),
        ],
        [
            "  baseline: json.loads + bare sqlite3",
            fmt(base["seconds"]),
            fmt(base["peak_rss_mib"]),
            "1",
        ],
        [
            "margins for every pair (add_margins)",
            fmt(steps["margins"]["seconds"]),
            fmt(steps["margins"]["peak_rss_mib"]),
            "",
        ],
        [
            "export JSONL",
            fmt(steps["export_jsonl"]["seconds"]),
            fmt(steps["export_jsonl"]["peak_rss_mib"]),
            fmt(steps["export_jsonl"]["seconds"] / steps["baseline_export"]["seconds"]),
        ],
        [
            "export Parquet",
            fmt(steps["export_parquet"]["seconds"]),
            fmt(steps["export_parquet"]["peak_rss_mib"]),
            fmt(steps["export_parquet"]["seconds"] / steps["baseline_export"]["seconds"]),
        ],
        [
            "  baseline: bare sqlite3 + json.dumps",
            fmt(steps["baseline_export"]["seconds"]),
            fmt(steps["baseline_export"]["peak_rss_mib"]),
            "1",
        ],
    ]
    print(table(rows, ["step", "seconds", "peak RSS MiB", "x baseline"]))
    qrows = [
        [
            name.replace("_", " "),
            fmt(rev[name]["median_ms"]),
            fmt(rev[name]["p95_ms"]),
            fmt(rev[name]["max_ms"]),
            str(rev[name]["calls"]),
        ]
        for name in (
            "review_page_step",
            "review_page_step_blind",
            "review_pane_reads",
            "queue_step_front",
            "queue_step_middle",
            "queue_step_last",
            "queue_step_least_sure",
            "queue_step_index_order",
            "review_counts",
            "selection_first_listing",
            "selection_step",
            "review_queue",
            "whole_queue_listing",
            "baseline_bare_sql_queue",
        )
    ]
    print(f"review queue ({rev['reviews']} reviewed at its front):")
    print(table(qrows, ["query", "median ms", "p95 ms", "max ms", "calls"]))
    nearly = steps["review_nearly_all"]
    print(
        f"a review, then a Review page step, with {nearly['reviewed']:,} pairs reviewed and "
        f"{nearly['left']} left (median of {NEARLY_ALL_ROUNDS} each, alternating):"
    )
    nrows = [
        [
            where.replace("_", " "),
            fmt(nearly[where]["now"]),
            fmt(nearly[where]["before"]),
            fmt(nearly[where]["before"] / nearly[where]["now"]),
        ]
        for where in ("before_the_last_10", "after_them_wrapping")
    ]
    print(table(nrows, ["shown pair", "now ms", "as before ms", "before / now"]))
    result = {
        "machine": info,
        "pairs": n,
        "file_bytes": size,
        "database_bytes": db_size,
        "steps": steps,
        "import_seconds": imp["seconds"],
        "import_peak_rss_mib": imp["peak_rss_mib"],
        "import_rss_before_mib": imp["rss_before_mib"],
        "review_step_median_ms": rev["review_page_step"]["median_ms"],
    }
    write_result("store", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 pairs, to check it runs")
    parser.add_argument("--pairs", type=int, default=None, help=f"pairs (default {N_PAIRS:,})")
    parser.add_argument("--worker", nargs=3, metavar=("STEP", "DB", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker), default=float))
        sys.stdout.flush()
        return
    run(args.quick, args.pairs)


if __name__ == "__main__":
    main()
