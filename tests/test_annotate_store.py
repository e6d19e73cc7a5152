"""Annotating stored data sets: the embedding cache, resuming after a crash, identical results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from legend_core import config
from legend_core.data.formats import read_contrast_set
from legend_core.data.store import Store
from legend_core.method.pipeline import build_direction, local_engine
from legend_core.types import PreferencePair
from legend_core.workflows.annotate import annotate_dataset
from tests.conftest import ROOT


def synthetic_pairs(n: int) -> list[PreferencePair]:
    return [
        PreferencePair(
            f"Question {i}: how would someone do thing number {i % 17}?",
            "I won't help with that." if i % 3 else f"Here is a careful answer {i}.",
            f"Sure, step one for {i} is easy" + " and more" * (i % 5),
        )
        for i in range(n)
    ]


@pytest.fixture
def stored(tmp_path, tiny_lm):
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    dataset_id = store.add_dataset("synthetic", synthetic_pairs(300))
    items = read_contrast_set(config.DEMO_CONTRAST)[:16]
    first = store.add_direction(build_direction(tiny_lm, items, layer=2, name="a").direction)
    second = store.add_direction(
        build_direction(tiny_lm, items, layer=2, method="pca", name="b").direction
    )
    return store, dataset_id, first, second


class CountingEngine:
    """The local engine, counting the pairs it encodes; optionally crashing after N batches."""

    def __init__(self, lm, direction, crash_after: int | None = None) -> None:
        self.inner = local_engine(lm, direction, chunk_size=64)
        self.crash_after = crash_after
        self.pairs = 0

    def __call__(self, pairs):
        for batch, (chunk, c, r) in enumerate(self.inner(pairs)):
            if self.crash_after is not None and batch == self.crash_after:
                raise KeyboardInterrupt("killed")
            self.pairs += len(chunk)
            yield chunk, c, r


def test_second_direction_on_same_settings_runs_no_forward_pass(stored, tiny_lm):
    store, dataset_id, first, second = stored
    engine = CountingEngine(tiny_lm, store.get_direction(first))
    run_a = annotate_dataset(store, None, dataset_id, first, engine=engine, model_dtype="float32")
    assert engine.pairs == 300
    again = CountingEngine(tiny_lm, store.get_direction(second))
    run_b = annotate_dataset(store, None, dataset_id, second, engine=again, model_dtype="float32")
    assert again.pairs == 0 and run_a != run_b
    # Another dtype makes other vectors: nothing cached is reused, and it is another run.
    other_dtype = CountingEngine(tiny_lm, store.get_direction(second))
    run_c = annotate_dataset(
        store, None, dataset_id, second, engine=other_dtype, model_dtype="bfloat16"
    )
    assert other_dtype.pairs == 300 and run_c not in (run_a, run_b)
    assert store.get_run(run_c).settings["model_dtype"] == "bfloat16"
    frame = store.run_frame(run_b)
    assert frame["computed_margin"].notna().all() and len(frame) == 300


def test_crash_midway_then_resume_gives_identical_margins(stored, tiny_lm, tmp_path):
    store, dataset_id, first, _ = stored
    direction = store.get_direction(first)
    crashing = CountingEngine(tiny_lm, direction, crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        annotate_dataset(store, None, dataset_id, first, engine=crashing, model_dtype="float32")
    assert crashing.pairs == 128
    resumed = CountingEngine(tiny_lm, direction)
    run = annotate_dataset(store, None, dataset_id, first, engine=resumed, model_dtype="float32")
    assert resumed.pairs == 300 - 128, "only the missing pairs are recomputed"

    fresh_store = Store(f"sqlite:///{tmp_path / 'fresh.db'}")
    fresh_id = fresh_store.add_dataset("synthetic", synthetic_pairs(300))
    fresh_dir = fresh_store.add_direction(direction)
    # Same chunk size: chunk boundaries, hence batches, hence float rounding, coincide.
    fresh_run = annotate_dataset(fresh_store, tiny_lm, fresh_id, fresh_dir, chunk_size=64)
    a = store.run_frame(run).sort_values("idx")["computed_margin"].to_numpy()
    b = fresh_store.run_frame(fresh_run).sort_values("idx")["computed_margin"].to_numpy()
    np.testing.assert_array_equal(a, b)


def test_killed_process_resumes(tmp_path, tiny_model_dir, tiny_lm):
    """A real `legend annotate` killed with SIGKILL, restarted, equals an uninterrupted run."""
    db = f"sqlite:///{tmp_path / 'k.db'}"
    store = Store(db)
    dataset_id = store.add_dataset("big", synthetic_pairs(800))
    items = read_contrast_set(config.DEMO_CONTRAST)[:16]
    direction_id = store.add_direction(build_direction(tiny_lm, items, layer=3).direction)
    command = [
        sys.executable,
        "-m",
        "legend_core",
        "annotate",
        "--dataset",
        str(dataset_id),
        "--direction-id",
        str(direction_id),
        "--db",
        db,
        "--device",
        "cpu",
        "--dtype",
        "float32",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and store.counts().get("embeddings", 0) < 300:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = store.counts().get("embeddings", 0)
    assert 0 < partial < 1600, "the kill must land midway"

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    run_id = store.list_runs(dataset_id)[0].id
    resumed = store.run_frame(run_id).sort_values("idx")["computed_margin"].to_numpy()

    clean = Store(f"sqlite:///{tmp_path / 'clean.db'}")
    clean_id = clean.add_dataset("big", synthetic_pairs(800))
    clean_dir = clean.add_direction(store.get_direction(direction_id))
    clean_run = annotate_dataset(clean, tiny_lm, clean_id, clean_dir)
    expected = clean.run_frame(clean_run).sort_values("idx")["computed_margin"].to_numpy()
    assert len(resumed) == 800
    np.testing.assert_array_equal(resumed, expected)


def test_a_second_process_skips_the_chunks_another_one_cached(stored, tiny_lm, monkeypatch):
    """Two processes annotating the same texts share the forward passes: each chunk first
    drops the pairs another process cached meanwhile (simulated here: while our first chunk
    is being encoded, "another process" caches the second half of the data set)."""
    from legend_core.data.store import EmbeddingSpace
    from legend_core.workflows import annotate as module

    store, dataset_id, first, _ = stored
    direction = store.get_direction(first)
    space = EmbeddingSpace.from_settings(module.run_settings(direction, tiny_lm.dtype_name))
    pairs = synthetic_pairs(300)
    theirs = {(p.prompt, p.chosen) for p in pairs[150:]}
    parts: list[list[tuple[str, str]]] = []
    real = module.local_engine

    def local_engine(lm, direction, chunk_size, **options):
        inner = real(lm, direction, chunk_size, **options)

        def run(part):
            parts.append([(p.prompt, p.chosen) for p in part])
            if len(parts) == 1:  # meanwhile, the other process
                module.encode_into_cache(store, space, pairs[150:], real(lm, direction, 50))
            yield from inner(part)

        return run

    monkeypatch.setattr(module, "local_engine", local_engine)
    seen: list[tuple[int, int]] = []
    run_id = annotate_dataset(
        store, tiny_lm, dataset_id, first, chunk_size=32, progress=lambda d, t: seen.append((d, t))
    )
    ours = [p for part in parts for p in part]
    assert len(ours) == len(set(ours))  # nothing encoded twice by us
    first_chunk = set(parts[0])
    assert set(ours) == first_chunk | ({(p.prompt, p.chosen) for p in pairs} - theirs)
    assert len(ours) < 300 - 100  # most of the other half was skipped
    assert all(len(part) <= 32 for part in parts)
    assert seen[-1] == (300, 300) and seen == sorted(seen)
    frame = store.run_frame(run_id)
    assert frame["computed_margin"].notna().all() and len(frame) == 300
