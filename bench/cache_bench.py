"""Benchmark: the block embedding cache against the row cache it replaced (issue 15).

A new direction on cached embeddings runs no forward pass: its margins come from the
projection pass of ``annotate.annotate_dataset`` (read the cached vectors of a space,
project each, keep one float per text). Measured here, on SQLite files, 576 dimensions,
float16 vectors in blocks of 512 (what ``annotate_dataset`` writes: one block per chunk of
256 pairs):

- **100,000 pairs** (200,000 vectors): ``Store.project_embeddings`` (blocks) against the
  row cache's pass as it was before the blocks (one row per text in the old table layout,
  read by a scan in 8,192-row partitions, float16 joined and converted per partition,
  ``margins.projections`` per batch, a dict of projections), reproduced below on the same
  vectors in a file of its own; interleaved, medians; the projections must be equal bit
  for bit. Then ``annotate_dataset`` end to end on the block store against the path
  before (``bench/annotate_cached.py``), and the same on 100,000 pairs with HH-RLHF-sized
  texts.
- **1,000,000 pairs** (2,000,000 vectors, synthetic): each pass in a fresh interpreter
  (peak memory = ``VmHWM``), blocks and rows alike, after both databases were built in
  another one. The page cache is warm (the files were just written and read).
- **Migration** of the 100,000-pair row cache into blocks (revision 0005), once.

``python -m bench.cache_bench [--quick]``; results in ``bench/out/cache.json``. The end-to-end
rows alone: ``python -m bench.annotate_cached``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    current_rss_mib,
    fmt,
    in_subprocess,
    interleave,
    peak_rss_mib,
    print_machine,
    table,
    timed,
    write_result,
)

DIM = 576
PAIRS = 100_000
BIG_PAIRS = 1_000_000
#: Pairs per put: what annotate_dataset writes per forward-pass chunk (chunk_size=256).
PUT_PAIRS = 256
FINGERPRINT, LAYER = "bench:0", 15


def space() -> Any:
    from legend_core.data.store import EmbeddingSpace

    return EmbeddingSpace("bench-model", FINGERPRINT, "alpaca", "mean", LAYER, 512, "float32")


def direction_vector(seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def synthetic_keys(n_pairs: int) -> list[bytes]:
    """Keys of ``n_pairs`` synthetic pairs: every chosen text, then every rejected one."""
    return [
        hashlib.sha256(f"{i}\x1f{side}".encode()).digest() for side in "cr" for i in range(n_pairs)
    ]


def chunk_vectors(lo: int, hi: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float16 chosen and rejected vectors of pairs ``lo..hi`` (the same for any chunking)."""
    rng = np.random.default_rng([seed, lo])
    common = rng.standard_normal((hi - lo, DIM), dtype=np.float32)
    chosen = common + 0.3 * rng.standard_normal((hi - lo, DIM), dtype=np.float32)
    rejected = common + 0.3 * rng.standard_normal((hi - lo, DIM), dtype=np.float32)
    return chosen.astype(np.float16), rejected.astype(np.float16)


# --- the row cache, as it was ----------------------------------------------------------------

ROWS_SCHEMA = (
    "CREATE TABLE embeddings (space_id INTEGER NOT NULL, key BLOB NOT NULL, "
    "dtype VARCHAR(8) NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (space_id, key))"
)


def open_rows(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    for pragma in ("journal_mode = WAL", "synchronous = NORMAL", "busy_timeout = 30000"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def row_cache_pass(url: str, keys: list[bytes], direction: np.ndarray) -> dict[bytes, float]:
    """The projection pass before the blocks (``Store._cache_rows`` scan branch,
    ``iter_embeddings`` and the loop of ``annotate_dataset``), on the old table."""
    import sqlalchemy as sa

    from legend_core.data.store import make_engine
    from legend_core.method.margins import projections

    meta = sa.MetaData()
    table = sa.Table(
        "embeddings",
        meta,
        sa.Column("space_id", sa.Integer, primary_key=True),
        sa.Column("key", sa.LargeBinary(32), primary_key=True),
        sa.Column("dtype", sa.String(8)),
        sa.Column("vector", sa.LargeBinary),
    )
    engine = make_engine(url)
    wanted = {bytes(k) for k in keys}
    projection: dict[bytes, float] = {}
    refused: list[bytes] = []
    with engine.connect() as conn:
        in_space = table.c.space_id == 1
        conn.scalar(sa.select(sa.func.count()).select_from(table).where(in_space))
        result = conn.execution_options(yield_per=8_192).execute(
            sa.select(table.c.key, table.c.dtype, table.c.vector).where(in_space)
        )
        for rows in result.partitions():
            kept = [r for r in rows if bytes(r[0]) in wanted]
            dtypes = {r[1] for r in kept}
            if len(dtypes) == 1:
                joined = b"".join(bytes(r[2]) for r in kept)
                matrix = np.frombuffer(joined, dtype=dtypes.pop()).reshape(len(kept), -1)
            else:
                matrix = np.stack([np.frombuffer(bytes(r[2]), dtype=r[1]) for r in kept])
            vectors = matrix.astype(np.float32)
            batch_keys = [bytes(r[0]) for r in kept]
            good = np.isfinite(vectors).all(1) & vectors.any(1)
            refused += [k for k, ok in zip(batch_keys, good) if not ok]
            projection.update(zip(batch_keys, projections(vectors, direction).tolist()))
    engine.dispose()
    return projection


# --- building the databases --------------------------------------------------------------------


def synthetic_pairs(n_pairs: int, hh_sized: bool = False) -> list[Any]:
    """``n_pairs`` distinct stored pairs: a few bytes of text each, or (``hh_sized``) real
    HH-RLHF harmless dev pairs cycled, each prompt with the next pair's dialogue before it
    as earlier turns and a copy number (about 1.3 KB of text per pair, distinct texts)."""
    from legend_core.types import PreferencePair

    if not hh_sized:
        return [
            PreferencePair(f"prompt {i}", f"chosen {i}", f"rejected {i}") for i in range(n_pairs)
        ]
    from bench.common import hh_pairs

    dev = hh_pairs(100_000)
    out = []
    for i in range(n_pairs):
        p, earlier = dev[i % len(dev)], dev[(i + 1) % len(dev)]
        prompt = f"{earlier.prompt}\n\n(copy {i})\n\n{p.prompt}"
        out.append(PreferencePair(prompt, p.chosen, p.rejected))
    return out


def build(
    directory: Path,
    n_pairs: int,
    with_pairs: bool,
    progress: Callable[[str], None] = print,
    hh_sized: bool = False,
    rows_cache: bool = True,
) -> dict[str, Any]:
    """A block store (``blocks.db``) and a row cache (``rows.db``) of the same vectors."""
    from legend_core.data.store import Store
    from legend_core.util import text_key

    start = time.perf_counter()
    store = Store(f"sqlite:///{directory / 'blocks.db'}")
    rows = open_rows(directory / "rows.db")
    rows.execute(ROWS_SCHEMA)
    dataset_id = None
    if with_pairs:
        pairs = synthetic_pairs(n_pairs, hh_sized)
        dataset_id = store.add_dataset("cached", pairs)
        chosen_keys = [text_key(p.prompt, p.chosen) for p in pairs]
        rejected_keys = [text_key(p.prompt, p.rejected) for p in pairs]
    else:
        keys = synthetic_keys(n_pairs)
        chosen_keys, rejected_keys = keys[:n_pairs], keys[n_pairs:]
    for lo in range(0, n_pairs, PUT_PAIRS):
        hi = min(n_pairs, lo + PUT_PAIRS)
        chosen, rejected = chunk_vectors(lo, hi)
        batch_keys = chosen_keys[lo:hi] + rejected_keys[lo:hi]
        matrix = np.concatenate([chosen, rejected])
        store.put_embeddings(space(), dict(zip(batch_keys, matrix)))
        if rows_cache:
            rows.executemany(
                "INSERT INTO embeddings VALUES (1, ?, '<f2', ?)",
                [(k, v.tobytes()) for k, v in zip(batch_keys, matrix)],
            )
            rows.commit()
        if lo % (100 * PUT_PAIRS) == 0 and lo:
            progress(f"  built {lo:,} of {n_pairs:,} pairs ({time.perf_counter() - start:.0f}s)")
    rows.close()
    store.close()
    sizes = {name: (directory / name).stat().st_size for name in ("blocks.db", "rows.db")}
    return {"build_s": time.perf_counter() - start, "dataset_id": dataset_id, "bytes": sizes}


# --- 1,000,000 pairs, each pass in a fresh interpreter ------------------------------------------


def child(mode: str, directory: str, n_pairs: int) -> None:
    """``python -m bench.cache_bench --child MODE DIR N``: prints one JSON line."""
    folder = Path(directory)
    if mode == "build":
        print(json.dumps(build(folder, n_pairs, with_pairs=False, progress=lambda s: None)))
        return
    keys = synthetic_keys(n_pairs)
    direction = direction_vector()
    before = current_rss_mib()
    if mode == "blocks":
        from legend_core.data.store import Store

        with Store(f"sqlite:///{folder / 'blocks.db'}") as store:
            result, wall, cpu = timed(lambda: store.project_embeddings(space(), keys, direction))
        values = result.values
        found = int(result.found.sum())
    else:
        result, wall, cpu = timed(
            lambda: row_cache_pass(f"sqlite:///{folder / 'rows.db'}", keys, direction)
        )
        values = np.array([result[k] for k in keys])
        found = len(result)
    digest = hashlib.sha256(values.tobytes()).hexdigest()
    out = {"mode": mode, "pairs": n_pairs, "found": found, "wall_s": wall, "cpu_s": cpu}
    out |= {"rss_before_mib": before, "peak_rss_mib": peak_rss_mib(), "values_sha256": digest}
    print(json.dumps(out))


def big_run(n_pairs: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="legend-cache-bench-") as tmp:
        print(f"building {n_pairs:,} pairs ({2 * n_pairs:,} vectors) in a subprocess ...")
        built = in_subprocess(
            "bench.cache_bench", "--child", "build", tmp, str(n_pairs), timeout=7200
        )
        runs: dict[str, list[dict[str, Any]]] = {"blocks": [], "rows": []}
        for round_ in range(repeats):
            for mode in ("blocks", "rows") if round_ % 2 == 0 else ("rows", "blocks"):
                runs[mode].append(
                    in_subprocess("bench.cache_bench", "--child", mode, tmp, str(n_pairs))
                )
    digests = {r["values_sha256"] for rs in runs.values() for r in rs}
    summary = {}
    for mode, rs in runs.items():
        walls = sorted(r["wall_s"] for r in rs)
        summary[mode] = {
            "runs": rs,
            "median_wall_s": walls[len(walls) // 2],
            "median_cpu_s": sorted(r["cpu_s"] for r in rs)[len(rs) // 2],
            "max_peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
        }
    return {
        "pairs": n_pairs,
        "build": built,
        **summary,
        "ratio_wall": summary["rows"]["median_wall_s"] / summary["blocks"]["median_wall_s"],
        "identical_bits": len(digests) == 1,
    }


# --- 100,000 pairs in this process ------------------------------------------------------------


def migration_run(directory: Path, n_pairs: int) -> dict[str, Any]:
    """Upgrade a copy of the row cache, at revision 0004, to blocks; time it once."""
    import sqlalchemy as sa
    from alembic import command

    from legend_core.data.migrations import alembic_config
    from legend_core.data.store import make_engine

    url = f"sqlite:///{directory / 'migrate.db'}"
    engine = make_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0004")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO embedding_spaces (id, key, model, model_fingerprint, template, "
                "pooling, layer, max_length, model_dtype) VALUES (1, :key, 'm', 'fp', 't', 'p', "
                "1, 512, 'float32')"
            ),
            {"key": space().key()},
        )
    engine.dispose()
    rows = open_rows(directory / "migrate.db")
    rows.execute(f"ATTACH DATABASE '{directory / 'rows.db'}' AS old")
    rows.execute("INSERT INTO embeddings SELECT * FROM old.embeddings")
    rows.commit()
    rows.close()
    engine = make_engine(url)

    def upgrade() -> None:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0005")

    _, wall, cpu = timed(upgrade)
    with engine.connect() as conn:
        blocks = conn.scalar(sa.text("SELECT COUNT(*) FROM embedding_blocks"))
        vectors = conn.scalar(sa.text("SELECT COUNT(*) FROM embedding_keys"))
    engine.dispose()
    return {"pairs": n_pairs, "vectors": vectors, "blocks": blocks, "wall_s": wall, "cpu_s": cpu}


def small_run(n_pairs: int, repeats: int) -> dict[str, Any]:
    from bench.annotate_cached import end_to_end
    from legend_core.data.store import Store
    from legend_core.util import text_key

    with tempfile.TemporaryDirectory(prefix="legend-cache-bench-") as tmp:
        folder = Path(tmp)
        print(f"building {n_pairs:,} stored pairs, cached as blocks and as rows ...")
        built = build(folder, n_pairs, with_pairs=True)
        store = Store(f"sqlite:///{folder / 'blocks.db'}")
        keys = [text_key(f"prompt {i}", f"chosen {i}") for i in range(n_pairs)]
        keys += [text_key(f"prompt {i}", f"rejected {i}") for i in range(n_pairs)]
        vector = direction_vector()
        rows_url = f"sqlite:///{folder / 'rows.db'}"
        timings = interleave(
            {
                "blocks": lambda: store.project_embeddings(space(), keys, vector),
                "rows": lambda: row_cache_pass(rows_url, keys, vector),
            },
            repeats,
        )
        ours = store.project_embeddings(space(), keys, vector)
        theirs = row_cache_pass(rows_url, keys, vector)
        identical = bool(np.array_equal(ours.values, np.array([theirs[k] for k in keys])))

        e2e = end_to_end(store, built["dataset_id"], repeats)  # bench/annotate_cached.py
        store.close()
        migration = migration_run(folder, n_pairs)
    return {
        "pairs": n_pairs,
        "build": built,
        "blocks": timings["blocks"].as_dict(),
        "rows": timings["rows"].as_dict(),
        "ratio_wall": timings["rows"].median_wall / timings["blocks"].median_wall,
        "identical_bits": identical,
        "end_to_end": e2e,
        "migration": migration,
    }


HEADER = ["step", "wall s (median)", "peak RSS MiB", "time / ours"]


def run(
    quick: bool = False, pairs: int | None = None, big_pairs: int | None = None
) -> dict[str, Any]:
    from bench.annotate_cached import end_to_end_rows, hh_sized_run, print_steps

    print("== embedding cache: blocks against rows, a new direction's projection pass ==")
    info = print_machine()
    n_pairs, repeats = pairs or (5_000 if quick else PAIRS), 1 if quick else 5
    small = small_run(n_pairs, repeats)
    hh = hh_sized_run(n_pairs, repeats)
    big = big_run(big_pairs or (20_000 if quick else BIG_PAIRS), 1 if quick else 3)
    print(
        table(
            [
                [
                    f"{small['pairs']:,} pairs: project_embeddings (blocks)",
                    fmt(small["blocks"]["median_wall_s"]),
                    "",
                    "1",
                ],
                [
                    "  baseline: the row cache's pass",
                    fmt(small["rows"]["median_wall_s"]),
                    "",
                    fmt(small["ratio_wall"]),
                ],
                *end_to_end_rows(small, hh),
                [
                    f"{big['pairs']:,} pairs: project_embeddings (blocks), fresh process",
                    fmt(big["blocks"]["median_wall_s"]),
                    fmt(big["blocks"]["max_peak_rss_mib"]),
                    "1",
                ],
                [
                    "  baseline: the row cache's pass, fresh process",
                    fmt(big["rows"]["median_wall_s"]),
                    fmt(big["rows"]["max_peak_rss_mib"]),
                    fmt(big["ratio_wall"]),
                ],
                [
                    f"migration of {small['migration']['vectors']:,} cached rows into blocks",
                    fmt(small["migration"]["wall_s"]),
                    "",
                    "",
                ],
            ],
            HEADER,
        )
    )
    print_steps(f"{small['pairs']:,} pairs", small)
    print_steps(f"{hh['pairs']:,} pairs, HH-RLHF-sized texts", hh)
    print(
        f"identical projections, bit for bit: {small['identical_bits']} "
        f"({small['pairs']:,} pairs), {big['identical_bits']} ({big['pairs']:,} pairs)"
    )
    out = {"machine": info, "small": small, "hh_sized": hh, "big": big}
    write_result("cache", out | {"load_after": os.getloadavg()[0]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check it runs")
    parser.add_argument("--pairs", type=int, default=None, help=f"default {PAIRS:,}")
    parser.add_argument("--big-pairs", type=int, default=None, help=f"default {BIG_PAIRS:,}")
    parser.add_argument(
        "--child", nargs=3, metavar=("MODE", "DIR", "PAIRS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        mode, directory, n = args.child
        child(mode, directory, int(n))
        return
    run(args.quick, args.pairs, args.big_pairs)


if __name__ == "__main__":
    main()
