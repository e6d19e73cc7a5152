"""The block embedding cache: the row cache's vectors, margins independent of blocks, whole
blocks after a killed writer, concurrent writers of the same keys, and the migration from
the row cache (on SQLite, and on PostgreSQL when ``LEGEND_TEST_PG_URL`` is set)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from legend_core.data.migrations import HEAD, alembic_config
from legend_core.data.schema import Base
from legend_core.data.store import EmbeddingSpace, Store, make_engine
from legend_core.data.store import blocks as block_cache
from legend_core.method.directions import Direction
from legend_core.method.margins import projections
from legend_core.util import text_key
from legend_core.workflows.annotate import annotate_dataset, run_settings
from tests.conftest import ROOT
from tests.test_annotate_store import synthetic_pairs
from tests.test_migrations import revision_of, upgrade_to
from tests.test_store import fresh_db_url

SPACE = EmbeddingSpace("tiny", "fp", "alpaca", "last", 1, 64, "float32")


@pytest.fixture
def store(tmp_path: Path):
    with fresh_db_url(tmp_path) as url, Store(url) as s:
        yield s


def row_cache_value(vector: np.ndarray) -> np.ndarray:
    """What the one-row-per-text cache handed back: float16, or float32 past its range."""
    v = np.asarray(vector, np.float32)
    return (
        v if np.abs(v).max() > block_cache.FLOAT16_MAX else v.astype(np.float16).astype(np.float32)
    )


def random_items(n: int, dim: int, seed: int = 0, wide_every: int = 0) -> dict[bytes, np.ndarray]:
    rng = np.random.default_rng(seed)
    items = {}
    for i in range(n):
        v = (rng.standard_normal(dim) * 3).astype(np.float32)
        if wide_every and i % wide_every == 0:
            v[0] = 1e5  # beyond float16: stored as float32
        items[text_key(f"p{seed}-{i}", "r")] = v
    return items


def check_invariants(store: Store) -> tuple[int, int]:
    """Every block checks out, every block row has exactly one index row and it points
    at that row; returns (blocks, vectors)."""
    with store.engine.connect() as conn:
        space_ids = conn.scalars(sa.select(block_cache.BLOCKS.c.space_id).distinct()).all()
        blocks = {b.id: b for s in space_ids for b in block_cache.blocks(conn, s)}
        index = conn.execute(
            sa.select(
                block_cache.KEYS.c.key, block_cache.KEYS.c.block_id, block_cache.KEYS.c.row_no
            )
        ).all()
    assert len(index) == sum(b.n for b in blocks.values()), "no block row without its index row"
    for key, block_id, row_no in index:
        assert blocks[block_id].key(row_no) == bytes(key)
    for block in blocks.values():
        keys = [block.key(r) for r in range(block.n)]
        assert keys == sorted(keys)
    return len(blocks), len(index)


# --- the same vectors as the row cache, and the same margins --------------------------------


@pytest.mark.parametrize("path", ["probe", "scan"])
def test_block_cache_returns_the_row_cache_vectors(store, monkeypatch, path) -> None:
    monkeypatch.setattr(block_cache, "SCAN_MIN_KEYS", 10 if path == "scan" else 10**9)
    monkeypatch.setattr(block_cache, "BLOCK_ROWS", 64)  # many blocks at test sizes
    items = random_items(300, 24, wide_every=37)
    keys = list(items)
    store.put_embeddings(SPACE, {k: items[k] for k in keys[:130]})
    store.put_embeddings(SPACE, {k: items[k] for k in keys[100:]})  # overlaps the first put
    blocks, vectors = check_invariants(store)
    assert vectors == 300 and blocks >= 6  # float16 and float32 blocks of at most 64 rows

    asked = [*keys[::-1], text_key("not", "cached"), keys[5]]  # reversed, a miss, a repeat
    statements: list[str] = []
    record = lambda conn, cursor, sql, *rest: statements.append(sql)  # noqa: E731
    sa.event.listen(store.engine, "before_cursor_execute", record)
    got = store.get_embeddings(SPACE, asked)
    sa.event.remove(store.engine, "before_cursor_execute", record)
    probed = any("FROM embedding_keys" in q for q in statements)
    assert probed == (path == "probe") and any("vector_data" in q for q in statements)
    assert set(got) == set(keys)
    for key in keys:
        assert got[key].dtype == np.float32
        np.testing.assert_array_equal(got[key], row_cache_value(items[key]))
    assert store.cached_keys(SPACE, asked) == set(keys)

    direction = np.random.default_rng(3).standard_normal(24).astype(np.float32)
    projected = store.project_embeddings(SPACE, asked, direction)
    rows = np.stack([row_cache_value(items[k]) for k in asked[:300]])
    expected = projections(rows, direction)  # what the row cache's pass computed, per batch
    np.testing.assert_array_equal(projected.values[:300], expected)
    assert projected.found.tolist() == [True] * 300 + [False, True]
    assert np.isnan(projected.values[300]) and projected.values[301] == projected.values[294]
    assert projected.refused == []


def test_projections_do_not_depend_on_blocks_or_batches(tmp_path, monkeypatch) -> None:
    """The same vectors in blocks of 1, 7 and 4,096 rows: identical projections, bit for
    bit, equal to projecting the float32 matrix in one piece or row by row."""
    items = random_items(500, 576, seed=1, wide_every=101)
    keys = list(items)
    direction = np.random.default_rng(4).standard_normal(576).astype(np.float32)
    results = []
    for rows in (1, 7, 4_096):
        monkeypatch.setattr(block_cache, "BLOCK_ROWS", rows)
        with fresh_db_url(tmp_path / f"b{rows}") as url, Store(url) as s:
            for lo in range(0, 500, 123):  # puts of their own sizes, as chunks of a run
                s.put_embeddings(SPACE, {k: items[k] for k in keys[lo : lo + 123]})
            for threshold in (10**9, 10):  # probe the index, then scan the blocks
                monkeypatch.setattr(block_cache, "SCAN_MIN_KEYS", threshold)
                results.append(s.project_embeddings(SPACE, keys[::-1], direction).values)
    matrix = np.stack([row_cache_value(items[k]) for k in keys[::-1]])
    whole = projections(matrix, direction)
    one_by_one = np.concatenate([projections(matrix[i : i + 1], direction) for i in range(500)])
    np.testing.assert_array_equal(whole, one_by_one)
    for values in results:
        np.testing.assert_array_equal(values, whole)


def test_vectors_float16_would_zero_are_kept_as_float32(store) -> None:
    """Values below float16's smallest step would round to a zero vector, which the cache
    refuses to hand out: such a vector is kept in float32, exactly."""
    tiny = np.full(8, 1e-9, np.float32)
    usual = np.linspace(-1, 1, 8).astype(np.float32)
    store.put_embeddings(SPACE, {text_key("p", "tiny"): tiny, text_key("p", "usual"): usual})
    got = store.get_embeddings(SPACE, [text_key("p", "tiny"), text_key("p", "usual")])
    np.testing.assert_array_equal(got[text_key("p", "tiny")], tiny)
    np.testing.assert_array_equal(got[text_key("p", "usual")], row_cache_value(usual))
    projected = store.project_embeddings(SPACE, [text_key("p", "tiny")], np.ones(8))
    assert projected.found.all() and projected.refused == [] and projected.values[0] > 0


def test_keys_sharing_a_prefix_are_still_told_apart(store) -> None:
    """Lookups sort keys by their first 8 bytes; keys that share them (never two SHA-256
    digests in practice, but any 32 bytes are keys) take the slower exact path."""
    base = text_key("p", "r")
    twins = [base[:8] + bytes([i]) * 24 for i in range(5)]
    others = [text_key("p", f"o{i}") for i in range(5)]
    items = {k: np.full(4, i + 1, np.float32) for i, k in enumerate(twins + others)}
    store.put_embeddings(SPACE, items)
    asked = [twins[3], others[0], twins[0], twins[3], text_key("x", "y")]
    got = store.get_embeddings(SPACE, asked)
    assert {k: v[0] for k, v in got.items()} == {twins[3]: 4.0, others[0]: 6.0, twins[0]: 1.0}
    projected = store.project_embeddings(SPACE, asked, np.array([1.0, 0, 0, 0]))
    np.testing.assert_array_equal(projected.values[:4], [4.0, 6.0, 1.0, 4.0])
    assert projected.found.tolist() == [True, True, True, True, False]
    lookup = block_cache.KeyLookup(asked)
    assert len(lookup) == 4 and sorted(lookup.keys()) == sorted(set(asked))


def test_the_cache_refuses_other_widths_and_bad_keys(store) -> None:
    store.put_embeddings(SPACE, {text_key("p", "a"): np.ones(8)})
    with pytest.raises(ValueError, match="8-wide"):
        store.put_embeddings(SPACE, {text_key("p", "b"): np.ones(16)})
    with pytest.raises(ValueError, match="one width"):
        store.put_embeddings(SPACE, {text_key("p", "c"): np.ones(8), text_key("p", "d"): [1, 2]})
    with pytest.raises(ValueError, match="32-byte"):
        store.get_embeddings(SPACE, [b"short"])
    with pytest.raises(ValueError, match="zero or not finite"):
        store.project_embeddings(SPACE, [text_key("p", "a")], np.zeros(8))
    with pytest.raises(ValueError, match="shapes do not match"):
        store.project_embeddings(SPACE, [text_key("p", "a")], np.ones(9))
    assert store.counts()["embeddings"] == 1


def test_a_damaged_block_is_reported_never_used(store) -> None:
    items = random_items(20, 8)
    store.put_embeddings(SPACE, items)
    with store.engine.begin() as conn:
        (block_id, data) = conn.execute(
            sa.select(block_cache.BLOCKS.c.id, block_cache.BLOCKS.c.vector_data)
        ).one()
        damaged = bytearray(data)
        damaged[7] ^= 0x40
        conn.execute(
            sa.update(block_cache.BLOCKS)
            .where(block_cache.BLOCKS.c.id == block_id)
            .values(vector_data=bytes(damaged))
        )
    with pytest.raises(block_cache.CacheCorruptionError, match=f"block {block_id} .*checksum"):
        store.get_embeddings(SPACE, list(items))
    with pytest.raises(block_cache.CacheCorruptionError):
        store.project_embeddings(SPACE, list(items), np.ones(8))
    assert store.cached_keys(SPACE, list(items)) == set(items)  # the index alone is intact


def test_forget_replaces_the_block_and_keeps_the_rest(store, monkeypatch) -> None:
    monkeypatch.setattr(block_cache, "BLOCK_ROWS", 8)
    items = random_items(20, 8)
    keys = sorted(items)
    store.put_embeddings(SPACE, items)
    assert check_invariants(store) == (3, 20)
    store.forget_embeddings(SPACE, [keys[1], keys[2], keys[19], text_key("never", "cached")])
    assert check_invariants(store) == (3, 17)
    got = store.get_embeddings(SPACE, keys)
    assert set(got) == set(keys) - {keys[1], keys[2], keys[19]}
    for key in got:
        np.testing.assert_array_equal(got[key], row_cache_value(items[key]))
    store.forget_embeddings(SPACE, keys[16:19])  # the last block goes entirely
    assert check_invariants(store) == (2, 14)


def test_a_block_rewritten_between_lookup_and_read_is_found_again(store, monkeypatch) -> None:
    """A forget by another job between the index lookup and the block read: the keys the
    new block kept are still found, the forgotten one is not."""
    items = random_items(10, 8)
    keys = sorted(items)
    store.put_embeddings(SPACE, items)
    real_probe = block_cache._probe
    calls = []

    def probe_then_forget(conn, space_id, wanted):
        calls.append(len(wanted))
        where = real_probe(conn, space_id, wanted)
        if len(calls) == 1:
            store.forget_embeddings(SPACE, [keys[0]])  # its own transaction (and probe)
        return where

    monkeypatch.setattr(block_cache, "_probe", probe_then_forget)
    got = store.get_embeddings(SPACE, keys)
    assert set(got) == set(keys[1:]) and calls == [10, 1, 10]
    for key in got:
        np.testing.assert_array_equal(got[key], row_cache_value(items[key]))


# --- a writer killed mid-block ---------------------------------------------------------------


def fake_vector(prompt: str, response: str, dim: int) -> np.ndarray:
    """A deterministic stand-in for a hidden state (the same text, the same vector)."""
    seed = int.from_bytes(text_key(prompt, response)[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def fake_engine(dim: int, chunk: int):
    def run(pairs):
        for lo in range(0, len(pairs), chunk):
            part = pairs[lo : lo + chunk]
            chosen = np.stack([fake_vector(p.prompt, p.chosen, dim) for p in part])
            rejected = np.stack([fake_vector(p.prompt, p.rejected, dim) for p in part])
            yield part, chosen, rejected

    return run


def killed_writer(
    url: str, dataset: int, direction: int, dim: int, chunk: int, table: str, marker: str
) -> None:
    """Run in a child: annotate, and stop dead inside the third block's transaction,
    right after its INSERT into ``table`` (the parent then kills this process)."""
    store = Store(url)
    seen = []

    def hook(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().startswith(f"INSERT INTO {table} "):
            seen.append(statement)
            if len(seen) == 3:
                Path(marker).write_text("inside the third block's transaction")
                time.sleep(600)

    sa.event.listen(store.engine, "after_cursor_execute", hook)
    annotate_dataset(
        store, None, dataset, direction, engine=fake_engine(dim, chunk), model_dtype="float32"
    )


def annotate_fresh(url: str, pairs, direction: Direction, dim: int, chunk: int) -> np.ndarray:
    with Store(url) as s:
        dataset_id = s.add_dataset("fresh", pairs)
        run = annotate_dataset(
            s,
            None,
            dataset_id,
            s.add_direction(direction),
            engine=fake_engine(dim, chunk),
            model_dtype="float32",
        )
        return s.run_frame(run).sort_values("idx")["computed_margin"].to_numpy()


@pytest.mark.parametrize(
    ("table", "dim", "chunk"),
    [
        ("embedding_blocks", 48, 8),  # killed after the block row, before its index rows
        ("embedding_keys", 48, 8),  # killed after the index rows, before the commit
        ("embedding_keys", 8192, 64),  # 2 MiB blocks: SQLite spills pages before commit
    ],
)
def test_a_writer_killed_mid_block_leaves_whole_blocks_and_resumes(
    tmp_path, table, dim, chunk
) -> None:
    pairs = synthetic_pairs(4 * chunk)
    direction = Direction(
        np.random.default_rng(5).standard_normal(dim), "fake", 1, "last", "alpaca", "mean_diff"
    )
    direction.model_fingerprint = "fp"
    marker = tmp_path / "marker"
    with fresh_db_url(tmp_path / "killed") as url, Store(url) as store:
        dataset_id = store.add_dataset("d", pairs)
        direction_id = store.add_direction(direction)
        args = (url, dataset_id, direction_id, dim, chunk, table, str(marker))
        code = f"from tests.test_block_cache import killed_writer; killed_writer(*{args!r})"
        child = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.time() + 180
        while not marker.exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), child.stderr.read().decode() if child.poll() is not None else ""
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stderr.close()

        # Only the two committed blocks are there, whole; nothing of the third.
        assert check_invariants(store) == (2, 2 * 2 * chunk)
        space = EmbeddingSpace.from_settings(run_settings(direction, "float32"))
        texts = [(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)]
        got = store.get_embeddings(space, [text_key(*t) for t in texts])
        assert len(got) == 4 * chunk
        for prompt, response in texts:
            if (key := text_key(prompt, response)) in got:
                expected = row_cache_value(fake_vector(prompt, response, dim))
                np.testing.assert_array_equal(got[key], expected)

        run = annotate_dataset(
            store,
            None,
            dataset_id,
            direction_id,
            engine=fake_engine(dim, chunk),
            model_dtype="float32",
        )
        resumed = store.run_frame(run).sort_values("idx")["computed_margin"].to_numpy()
        assert check_invariants(store) == (4, 2 * len(pairs))  # 2 + the 2 written on resume
    with fresh_db_url(tmp_path / "fresh") as url:
        fresh = annotate_fresh(url, pairs, direction, dim, chunk)
    np.testing.assert_array_equal(resumed, fresh)
    chosen = np.stack([row_cache_value(fake_vector(p.prompt, p.chosen, dim)) for p in pairs])
    rejected = np.stack([row_cache_value(fake_vector(p.prompt, p.rejected, dim)) for p in pairs])
    by_hand = projections(chosen, direction.vector) - projections(rejected, direction.vector)
    np.testing.assert_array_equal(resumed, by_hand)


# --- writers of the same keys at once --------------------------------------------------------

WRITERS = 4


def writer_items(writer: int) -> dict[bytes, np.ndarray]:
    """Keys 0..599, each writer a window of 300 overlapping the others'; each writer's
    vectors carry its number, so the one that won is visible."""
    rng = np.random.default_rng(writer)
    order = rng.permutation(np.arange(writer * 100, writer * 100 + 300))
    return {
        text_key("shared", str(int(i))): np.full(16, writer + 1, np.float32) + i / 1000
        for i in order
    }


def overlapping_writer(url: str, writer: int, go, results) -> None:
    try:
        with Store(url) as store:
            items = writer_items(writer)
            keys = list(items)
            go.wait(30)
            for lo in range(0, len(keys), 37 + writer):
                store.put_embeddings(SPACE, {k: items[k] for k in keys[lo : lo + 37 + writer]})
        results.put((writer, "ok"))
    except Exception:
        results.put((writer, traceback.format_exc()))


@pytest.mark.parametrize("how", ["processes", "threads"])
def test_concurrent_writers_of_overlapping_keys(tmp_path, how) -> None:
    with fresh_db_url(tmp_path) as url:
        Store(url).close()
        if how == "processes":
            ctx = multiprocessing.get_context("spawn")
            go, results = ctx.Event(), ctx.Queue()
            workers = [
                ctx.Process(target=overlapping_writer, args=(url, w, go, results))
                for w in range(WRITERS)
            ]
        else:
            import queue
            import threading

            go, results = threading.Event(), queue.Queue()
            workers = [
                threading.Thread(target=overlapping_writer, args=(url, w, go, results))
                for w in range(WRITERS)
            ]
        for w in workers:
            w.start()
        go.set()
        outcomes = dict(results.get(timeout=300) for _ in workers)
        for w in workers:
            w.join(timeout=60)
        assert outcomes == {w: "ok" for w in range(WRITERS)}

        with Store(url) as store:
            assert check_invariants(store)[1] == 600, "each key once, no dead rows"
            keys = [text_key("shared", str(i)) for i in range(600)]
            got = store.get_embeddings(SPACE, keys)
            assert len(got) == 600
            for i, key in enumerate(keys):
                writer = int(round(got[key][0] - i / 1000)) - 1
                assert writer in range(max(0, i // 100 - 2), min(WRITERS, i // 100 + 1))
                assert np.all(got[key] == got[key][0])  # one writer's whole vector
            direction = np.ones(16, np.float32)
            projected = store.project_embeddings(SPACE, keys, direction)
            expected = projections(np.stack([got[k] for k in keys]), direction)
            np.testing.assert_array_equal(projected.values, expected)


# --- migrated from the row cache --------------------------------------------------------------


def test_the_row_cache_migrates_into_blocks_without_recomputing(tmp_path, monkeypatch) -> None:
    """A database at 0004 with a row cache (two spaces, float16 and float32 rows, refused
    rows): after the upgrade every good vector reads back bit for bit, through the index
    and through a scan; refused ones are gone; a downgrade gives the rows back."""
    rng = np.random.default_rng(9)
    legacy = EmbeddingSpace("tiny", "fp", "alpaca", "last", 2, 512)  # 0002-era space
    recent = EmbeddingSpace("tiny", "fp", "alpaca", "last", 3, 512, "bfloat16")
    rows = {1: {}, 2: {}}
    for i in range(5_000):  # more than one block
        v = rng.standard_normal(8).astype("<f2")
        rows[1][text_key(f"p{i}", "r")] = ("<f2", v.tobytes())
    for i in range(3):
        v = np.array([1e5, i, 1, 2, 3, 4, 5, 6], "<f4")
        rows[1][text_key(f"wide{i}", "r")] = ("<f4", v.tobytes())
    refused = {
        text_key("zero", "r"): ("<f2", np.zeros(8, "<f2").tobytes()),
        text_key("nan", "r"): ("<f2", np.array([np.nan] * 8, "<f2").tobytes()),
    }
    for i in range(10):
        rows[2][text_key(f"q{i}", "r")] = ("<f2", rng.standard_normal(4).astype("<f2").tobytes())

    with fresh_db_url(tmp_path) as url:
        upgrade_to(url, "0004")
        engine = make_engine(url)
        with engine.begin() as conn:
            for space_id, space in ((1, legacy), (2, recent)):
                conn.execute(
                    sa.text(
                        "INSERT INTO embedding_spaces (id, key, model, model_fingerprint, "
                        "template, pooling, layer, max_length, model_dtype) VALUES (:id, :key, "
                        "'tiny', 'fp', 'alpaca', 'last', :layer, 512, :dtype)"
                    ),
                    {"id": space_id, "key": space.key(), "layer": space.layer}
                    | {"dtype": space.model_dtype},
                )
            conn.execute(
                sa.text(
                    "INSERT INTO embeddings (space_id, key, dtype, vector) VALUES (:s, :k, :d, :v)"
                ),
                [
                    {"s": space_id, "k": key, "d": dtype, "v": blob}
                    for space_id, entries in ((1, rows[1] | refused), (2, rows[2]))
                    for key, (dtype, blob) in entries.items()
                ],
            )
        engine.dispose()

        with Store(url) as store:
            assert revision_of(url) == HEAD
            with store.engine.connect() as conn:
                assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
            assert check_invariants(store) == (4, 5_013)  # space 1: 4,096 + 904 + 3 wide
            assert store.counts()["embeddings"] == 5_013
            for space_id, space in ((1, legacy), (2, recent)):
                keys = list(rows[space_id]) + list(refused)
                for scan in (False, True):
                    monkeypatch.setattr(block_cache, "SCAN_MIN_KEYS", 10 if scan else 10**9)
                    got = store.get_embeddings(space, keys)
                    assert set(got) == set(rows[space_id])
                    for key, (dtype, blob) in rows[space_id].items():
                        expected = np.frombuffer(blob, dtype).astype(np.float32)
                        np.testing.assert_array_equal(got[key], expected)
                    direction = np.arange(1, got[keys[0]].size + 1, dtype=np.float32)
                    projected = store.project_embeddings(space, keys, direction)
                    old_pass = projections(np.stack([got[k] for k in rows[space_id]]), direction)
                    n = len(rows[space_id])
                    np.testing.assert_array_equal(projected.values[:n], old_pass)
                    assert not projected.found[n:].any()

        engine = make_engine(url)
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0004")
        with engine.connect() as conn:
            back = conn.execute(sa.text("SELECT space_id, key, dtype, vector FROM embeddings"))
            restored = {(s, bytes(k)): (d, bytes(v)) for s, k, d, v in back}
        engine.dispose()
        assert restored == {(s, k): v for s in (1, 2) for k, v in rows[s].items()}
        with Store(url) as store:  # and up again
            assert store.counts()["embeddings"] == 5_013
