"""Many writers on one database at once: threads and processes, nothing lost, no errors.

On SQLite by default; on PostgreSQL when ``LEGEND_TEST_PG_URL`` is set (see test_store).
"""

from __future__ import annotations

import multiprocessing
import threading
import traceback
from pathlib import Path

import numpy as np
import pytest

from legend_core.data.store import EmbeddingSpace, Store
from legend_core.method.directions import Direction
from legend_core.types import PreferencePair
from legend_core.util import text_key
from tests.test_store import fresh_db_url, sqlite_only

WORKERS = 8
REVIEWS_EACH = 200
ACTIONS = ["accept", "flag", "unflag", "flip", "override"]


def setup_run(url: str) -> tuple[int, list[int]]:
    with Store(url) as store:
        pairs = [PreferencePair(f"p{i}", f"c{i}", f"r{i}") for i in range(50)]
        dataset_id = store.add_dataset("shared", pairs)
        direction = Direction(np.ones(4, np.float32), "tiny", 1, "last", "alpaca", "mean_diff")
        run_id = store.start_run(dataset_id, store.add_direction(direction), {})
        ids = [p.id for p in store.pairs_missing_margins(run_id)]
        store.add_margins(run_id, ids, np.linspace(-1, 1, len(ids)))
        return run_id, ids


def write_reviews(store: Store, worker: int, run_id: int, pair_ids: list[int]) -> None:
    for i in range(REVIEWS_EACH):
        action = ACTIONS[(worker + i) % len(ACTIONS)]
        store.add_review(
            pair_ids[(worker * 7 + i) % len(pair_ids)],
            f"worker-{worker}",
            action,
            value=float(i) if action == "override" else None,
            note=f"{worker}:{i}",
            run_id=run_id,
        )


def check_all_written(url: str, pair_ids: list[int]) -> None:
    with Store(url) as store:
        assert store.counts()["reviews"] == WORKERS * REVIEWS_EACH
        notes = [r.note for p in pair_ids for r in store.pair_history(p)]
        expected = {f"{w}:{i}" for w in range(WORKERS) for i in range(REVIEWS_EACH)}
        assert len(notes) == len(expected) and set(notes) == expected


def test_eight_threads_write_reviews_at_once(tmp_path: Path) -> None:
    with fresh_db_url(tmp_path) as url:
        run_id, pair_ids = setup_run(url)
        store = Store(url)  # one store shared by all threads, as in the app
        errors: list[str] = []

        def writer(worker: int) -> None:
            try:
                barrier.wait()
                write_reviews(store, worker, run_id, pair_ids)
            except Exception:
                errors.append(traceback.format_exc())

        def reader() -> None:  # the review page keeps reading while others write
            try:
                barrier.wait()
                for _ in range(30):
                    store.review_queue(run_id, unreviewed_only=True)
                    store.review_counts(run_id)
                    store.run_frame(run_id)
            except Exception:
                errors.append(traceback.format_exc())

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(WORKERS)]
        threads.append(threading.Thread(target=reader))
        barrier = threading.Barrier(len(threads))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        store.close()
        assert errors == []
        check_all_written(url, pair_ids)


def _process_writer(url: str, worker: int, run_id: int, pair_ids: list[int], go, results) -> None:
    try:
        store = Store(url)
        go.wait()
        write_reviews(store, worker, run_id, pair_ids)
        store.close()
        results.put((worker, "ok"))
    except Exception:
        results.put((worker, traceback.format_exc()))


def test_eight_processes_write_reviews_at_once(tmp_path: Path) -> None:
    with fresh_db_url(tmp_path) as url:
        run_id, pair_ids = setup_run(url)
        ctx = multiprocessing.get_context("spawn")
        go, results = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_process_writer, args=(url, w, run_id, pair_ids, go, results))
            for w in range(WORKERS)
        ]
        for p in procs:
            p.start()
        go.set()
        outcomes = dict(results.get(timeout=180) for _ in procs)
        for p in procs:
            p.join(timeout=60)
        assert outcomes == {w: "ok" for w in range(WORKERS)}
        assert [p.exitcode for p in procs] == [0] * WORKERS
        check_all_written(url, pair_ids)


def test_racing_writers_share_runs_and_cache_entries(tmp_path: Path) -> None:
    """Same run started and same embeddings cached by many threads: one row each."""
    with fresh_db_url(tmp_path) as url:
        run_id, _ = setup_run(url)
        store = Store(url)
        run = store.get_run(run_id)
        space = EmbeddingSpace("tiny", "fp", "alpaca", "last", 1, 64)
        items = {text_key(f"p{i}", "c"): np.full(8, i + 1, np.float32) for i in range(300)}
        barrier = threading.Barrier(WORKERS)
        found: list[int] = []
        errors: list[str] = []

        def worker() -> None:
            try:
                barrier.wait()
                found.append(store.start_run(run.dataset_id, run.direction_id, {"new": True}))
                store.put_embeddings(space, items)
            except Exception:
                errors.append(traceback.format_exc())

        threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        assert len(set(found)) == 1 and len(found) == WORKERS
        counts = store.counts()
        assert (counts["runs"], counts["embedding_spaces"], counts["embeddings"]) == (2, 1, 300)
        store.close()


def _write_margins(url: str, run_id: int, pair_ids: list[int], offset: int) -> None:
    """One writer: every pair's margin, in its own order and chunks (the values a pair gets
    are the same for every writer, as from the same cached vectors)."""
    with Store(url) as store:
        order = pair_ids[offset:] + pair_ids[:offset]
        for lo in range(0, len(order), 7):
            chunk = order[lo : lo + 7]
            store.add_margins(run_id, chunk, [p / 1000 for p in chunk])


@pytest.mark.parametrize("how", ["threads", "processes"])
def test_writers_of_one_run_never_collide(tmp_path: Path, how: str) -> None:
    """Many writers of the same margins at once (two `legend annotate` on one run, a
    resumed job beside a running one): no error, each pair one margin."""
    with fresh_db_url(tmp_path) as url:
        with Store(url) as store:
            pairs = [PreferencePair(f"p{i}", f"c{i}", f"r{i}") for i in range(120)]
            dataset_id = store.add_dataset("race", pairs)
            direction = Direction(np.ones(4, np.float32), "tiny", 1, "last", "alpaca", "logistic")
            run_id = store.start_run(dataset_id, store.add_direction(direction), {"k": 1})
            pair_ids = [p.id for p in store.pairs_missing_margins(run_id)]
        offsets = [w * 13 for w in range(WORKERS)]
        if how == "threads":
            errors: list[str] = []

            def worker(offset: int) -> None:
                try:
                    _write_margins(url, run_id, pair_ids, offset)
                except Exception:
                    errors.append(traceback.format_exc())

            threads = [threading.Thread(target=worker, args=(o,)) for o in offsets]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert errors == []
        else:
            ctx = multiprocessing.get_context("spawn")
            procs = [
                ctx.Process(target=_write_margins, args=(url, run_id, pair_ids, o)) for o in offsets
            ]
            for p in procs:
                p.start()
            for p in procs:
                p.join(timeout=180)
            assert [p.exitcode for p in procs] == [0] * WORKERS
        with Store(url) as store:
            frame = store.run_frame(run_id)
            assert store.counts()["margins"] == len(pair_ids)
            assert store.pairs_missing_margins(run_id) == []
            np.testing.assert_array_equal(
                frame["computed_margin"].to_numpy(), frame["pair_id"].to_numpy() / 1000
            )


@sqlite_only
@pytest.mark.parametrize("n_stores", [WORKERS])
def test_many_stores_open_a_new_file_at_once(tmp_path: Path, n_stores: int) -> None:
    """Stores created together on a missing file all end up on one migrated schema."""
    url = f"sqlite:///{tmp_path / 'new' / 'x.db'}"
    errors: list[str] = []
    barrier = threading.Barrier(n_stores)

    def opener() -> None:
        try:
            barrier.wait()
            Store(url).close()
        except Exception:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=opener) for _ in range(n_stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    with Store(url) as store:
        assert store.counts()["datasets"] == 0


def test_mixed_load_keeps_every_review_and_exact_margins(tmp_path: Path, tiny_lm) -> None:
    """8 annotators x 200 reviews while a margin job writes and a direction job builds on
    the same loaded model (the app's job registry): every review kept, the margins and the
    direction bit for bit those of quiet runs."""
    from legend_core import config
    from legend_core.app.jobs import JobRegistry
    from legend_core.data.formats import read_contrast_set
    from legend_core.method.pipeline import build_direction
    from legend_core.workflows.annotate import annotate_dataset
    from tests.test_annotate_store import synthetic_pairs

    items = read_contrast_set(config.DEMO_CONTRAST)[:24]
    quiet_direction = build_direction(tiny_lm, items, layer="best").direction
    with Store(f"sqlite:///{tmp_path / 'quiet.db'}") as quiet:
        quiet_dataset = quiet.add_dataset("load", synthetic_pairs(300))
        quiet_run = annotate_dataset(
            quiet, tiny_lm, quiet_dataset, quiet.add_direction(quiet_direction), chunk_size=32
        )
        expected = quiet.run_frame(quiet_run)["computed_margin"].to_numpy()

    with fresh_db_url(tmp_path) as url, Store(url) as store:
        dataset_id = store.add_dataset("load", synthetic_pairs(300))
        direction_id = store.add_direction(quiet_direction)
        pair_ids = [int(p) for p in store.dataset_frame(dataset_id)["id"]]
        registry = JobRegistry()
        barrier = threading.Barrier(WORKERS + 1)
        errors: list[str] = []

        def annotator(worker: int) -> None:
            try:
                barrier.wait()
                write_reviews(store, worker, None, pair_ids)
            except Exception:
                errors.append(traceback.format_exc())

        threads = [threading.Thread(target=annotator, args=(w,)) for w in range(WORKERS)]
        for t in threads:
            t.start()
        margins = registry.start(
            "margins",
            "margins",
            annotate_dataset,
            store,
            tiny_lm,
            dataset_id,
            direction_id,
            chunk_size=32,
        )
        build = registry.start("build", "build", build_direction, tiny_lm, items, layer="best")
        barrier.wait()
        for t in threads:
            t.join(timeout=300)
        registry.wait("margins", timeout=300)
        registry.wait("build", timeout=300)
        assert errors == []
        assert margins.status == "done", margins.details
        assert build.status == "done", build.details
        check_all_written(url, pair_ids)
        got = store.run_frame(margins.result)["computed_margin"].to_numpy()
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(build.result.direction.vector, quiet_direction.vector)
