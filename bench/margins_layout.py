"""Benchmark: writing a new run's margins beside earlier runs, margins table of revision 0006
against 0007's (``python -m bench.margins_layout [--quick] [--pairs N] [--runs R]``).

Revision 0006 kept an index on ``margins (pair_id)`` (for the foreign key to pairs) beside
the primary key ``(run_id, pair_id)`` and the queue's ``(run_id, value, pair_id)``; 0007
drops it, and on SQLite makes the primary key the table (``WITHOUT ROWID``). A new run's
margins landed one on every page of the pair-first index, so the cost of a run grew with
the runs before it.

One data set of N pairs with R runs of margins, in one SQLite file; a copy downgraded to
0006 (Alembic, as a user would). Then, alternating between the two files, a new run's N
margins are written as ``Store.add_margins`` writes them (``engine.insert_rows_or_skip``,
``INSERT … ON CONFLICT DO NOTHING``, one transaction per ``MARGIN_CHUNK``), timed, and the
run deleted again, so every round starts from the same R runs. Medians of wall and CPU.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Timing, fmt, print_machine, table, timed, write_result

PAIRS = 100_000
RUNS = 15
ROUNDS = 5


def build(path: Path, n_pairs: int, n_runs: int) -> tuple[list[int], int]:
    """A data set of ``n_pairs`` short pairs with ``n_runs`` runs of margins; its pair ids
    and data set id."""
    from legend_core.data.store import Store
    from legend_core.method.directions import Direction
    from legend_core.types import PreferencePair

    rng = np.random.default_rng(0)
    with Store(f"sqlite:///{path}") as store:
        pairs = [PreferencePair(f"p{i}", f"c{i}", f"r{i}") for i in range(n_pairs)]
        dataset_id = store.add_dataset("layout", pairs)
        for r in range(n_runs):
            vector = rng.standard_normal(8).astype(np.float32)
            direction = Direction(vector, "bench-model", 1, "mean", "plain", "mean_diff")
            run_id = store.start_run(dataset_id, store.add_direction(direction), {"r": r})
            ids = store.missing_margin_keys(run_id).ids
            store.add_margins(run_id, ids, rng.standard_normal(len(ids)).tolist())
    return ids, dataset_id


def downgrade(path: Path, revision: str) -> None:
    from alembic import command

    from legend_core.data.migrations import alembic_config
    from legend_core.data.store import make_engine

    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)
    engine.dispose()


def write_run(
    engine: Any, dataset_id: int, ids: list[int], values: list[float]
) -> tuple[float, float]:
    """Seconds (wall, CPU) to write one new run's margins, as ``add_margins`` does."""
    import sqlalchemy as sa

    from legend_core.data.schema import Margin
    from legend_core.data.store.engine import insert_rows_or_skip
    from legend_core.workflows.annotate import MARGIN_CHUNK

    with engine.begin() as conn:
        run_id = conn.execute(
            sa.text(
                "INSERT INTO margin_runs (dataset_id, direction_id, settings, settings_key,"
                " status, created_at) SELECT :d, id, '{}', 'bench', 'running',"
                " '2026-12-01 00:00:00' FROM directions LIMIT 1 RETURNING id"
            ),
            {"d": dataset_id},
        ).scalar_one()

    def write() -> None:
        for lo in range(0, len(ids), MARGIN_CHUNK):
            rows = [(run_id, p, v) for p, v in zip(ids[lo : lo + MARGIN_CHUNK], values[lo:])]
            with engine.begin() as conn:
                insert_rows_or_skip(conn, Margin.__table__, ("run_id", "pair_id", "value"), rows)

    _, wall, cpu = timed(write)
    with engine.begin() as conn:  # back to the same R runs for the next round
        conn.execute(sa.text("DELETE FROM margin_runs WHERE id = :r"), {"r": run_id})
    return wall, cpu


def run(
    quick: bool = False, n_pairs: int = PAIRS, n_runs: int = RUNS, rounds: int = ROUNDS
) -> dict[str, Any]:
    from legend_core.data.store import make_engine

    if quick:
        n_pairs, n_runs, rounds = 2_000, 2, 1
    print("== a new run's margins beside earlier runs: revision 0006's table against 0007's ==")
    info = print_machine()
    with tempfile.TemporaryDirectory(prefix="legend-margins-layout-") as tmp:
        folder = Path(tmp)
        print(f"building {n_pairs:,} pairs with {n_runs} runs of margins ...", flush=True)
        ids, dataset_id = build(folder / "0007.db", n_pairs, n_runs)
        shutil.copy(folder / "0007.db", folder / "0006.db")
        downgrade(folder / "0006.db", "0006")
        engines = {
            rev: make_engine(f"sqlite:///{folder / f'{rev}.db'}") for rev in ("0006", "0007")
        }
        values = np.random.default_rng(1).standard_normal(len(ids)).tolist()
        timings = {rev: Timing() for rev in engines}
        for round_ in range(rounds):
            for rev in ("0006", "0007") if round_ % 2 == 0 else ("0007", "0006"):
                timings[rev].add(*write_run(engines[rev], dataset_id, ids, values))
        sizes = {rev: (folder / f"{rev}.db").stat().st_size for rev in engines}
        for engine in engines.values():
            engine.dispose()
    before, now = timings["0006"], timings["0007"]
    rows = [
        [
            f"revision {rev}",
            fmt(t.median_wall),
            fmt(t.median_cpu),
            f"{t.median_wall / now.median_wall:.2f}",
            f"{sizes[rev] / 2**20:,.0f}",
        ]
        for rev, t in (("0006", before), ("0007", now))
    ]
    print(
        f"{len(ids):,} margins of a new run beside {n_runs} runs "
        f"({n_runs * len(ids):,} margins), median of {rounds}:"
    )
    print(table(rows, ["margins table", "wall s", "CPU s", "time / 0007", "file MiB"]))
    result = {
        "machine": info,
        "pairs": len(ids),
        "runs_before": n_runs,
        "rounds": rounds,
        "revision_0006": before.as_dict(),
        "revision_0007": now.as_dict(),
        "ratio_wall": before.median_wall / now.median_wall,
        "file_bytes": sizes,
    }
    write_result("margins_layout", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check it runs")
    parser.add_argument("--pairs", type=int, default=PAIRS)
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    run(args.quick, args.pairs, args.runs)


if __name__ == "__main__":
    main()
