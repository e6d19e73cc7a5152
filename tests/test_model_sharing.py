"""One loaded model shared by many jobs: forward passes take turns, results stay exact.

Two real threads encode on one tiny model at once, with different layers, poolings and
shapes; each must get, bit for bit, what it gets alone. Without the model's lock their
hooks fire on each other's passes (another job's rows pooled into one's own, or a pass
stopped before the deeper layers, leaving zeros).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from legend_core.app.jobs import JobRegistry
from legend_core.method import model_lock
from legend_core.method.encode import EncodeSettings, encode
from legend_core.method.model_lock import ModelLock
from legend_core.method.packing import encode_pairs

PROMPTS = [f"Question {i}: " + "how would one do this " * (i % 7) for i in range(40)]
CHOSEN = [f"I cannot help with item {i}." + " sorry" * (i % 5) for i in range(40)]
REJECTED = [f"Sure, step {i}: " + "then this " * (i % 9) for i in range(40)]


def _pairs_job(lm):
    settings = EncodeSettings(pooling="last")
    c, r = encode_pairs(
        lm, PROMPTS, CHOSEN, REJECTED, layers=[1], settings=settings, batch_tokens=64
    )
    return c.vectors[1], r.vectors[1]


def _texts_job(lm):
    settings = EncodeSettings(pooling="mean", template="plain")
    e = encode(lm, PROMPTS[::-1], REJECTED, layers=[2, 3], settings=settings, batch_tokens=48)
    return e.vectors[2], e.vectors[3]


def test_two_threads_on_one_model_get_what_each_gets_alone(tiny_lm):
    quiet = (_pairs_job(tiny_lm), _texts_job(tiny_lm))
    results: dict[str, list] = {"pairs": [], "texts": []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(name, job):
        try:
            start.wait()
            for _ in range(6):
                results[name].append(job(tiny_lm))
        except BaseException as error:  # noqa: BLE001 - surfaced below
            errors.append(error)

    threads = [
        threading.Thread(target=worker, args=("pairs", _pairs_job)),
        threading.Thread(target=worker, args=("texts", _texts_job)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got in results["pairs"]:
        np.testing.assert_array_equal(got[0], quiet[0][0])
        np.testing.assert_array_equal(got[1], quiet[0][1])
    for got in results["texts"]:
        np.testing.assert_array_equal(got[0], quiet[1][0])
        np.testing.assert_array_equal(got[1], quiet[1][1])
        assert got[1].any(1).all(), "no row may stay zeros"


def test_no_hook_is_left_on_the_model_after_a_pass(tiny_lm):
    """Our hooks live only for their own pass (transformers may keep hooks of its own)."""
    from legend_core.method.encode import decoder_blocks

    def hooks():
        return [
            (dict(b._forward_hooks), dict(b._forward_pre_hooks))
            for b in decoder_blocks(tiny_lm.model)
        ]

    before = hooks()
    encode_pairs(tiny_lm, PROMPTS[:4], CHOSEN[:4], REJECTED[:4], layers=[0, 2])
    assert hooks() == before


def test_the_lock_serves_threads_in_arrival_order():
    lock = ModelLock()
    order: list[int] = []
    with lock.hold():
        threads = []
        for i in range(5):
            t = threading.Thread(target=lambda i=i: _take(lock, order, i))
            t.start()
            threads.append(t)
            while lock.waiting < i + 1:  # each one queued before the next starts
                time.sleep(0.001)
    for t in threads:
        t.join()
    assert order == [0, 1, 2, 3, 4]


def _take(lock: ModelLock, order: list[int], i: int) -> None:
    with lock.hold():
        order.append(i)


def test_the_lock_is_reentrant_and_reports_its_holder():
    lock = ModelLock()
    with lock.hold():
        with lock.hold():
            assert lock.holder == threading.current_thread().name
        assert lock.holder
    assert lock.holder == "" and lock.waiting == 0


def test_a_waiter_that_gives_up_does_not_block_the_next():
    lock = ModelLock()
    seen: list[str | None] = []

    class GiveUp(Exception):
        pass

    def impatient():
        def listener(holder):
            seen.append(holder)
            if holder is not None:
                raise GiveUp

        model_lock.on_wait.set(listener)
        with pytest.raises(GiveUp), lock.hold():
            pass

    with lock.hold():
        t = threading.Thread(target=impatient)
        t.start()
        t.join()
        later = threading.Thread(target=lambda: _take(lock, [], 0))
        later.start()
    later.join(timeout=5)
    assert not later.is_alive(), "the next thread must get the lock"
    assert seen == [threading.current_thread().name]


def test_a_job_that_waits_for_the_model_says_so(tiny_lm):
    """The app-level case: two jobs of the registry on one loaded model."""
    registry = JobRegistry()
    holding, release = threading.Event(), threading.Event()

    def long_pass(progress):
        with tiny_lm.lock.hold():  # a long forward pass of another job
            holding.set()
            release.wait(10)
        return "done"

    registry.start("build", "Building a direction", long_pass)
    assert holding.wait(10)
    job = registry.start("margins", "Computing margins", lambda progress: _pairs_job(tiny_lm))
    deadline = time.time() + 10
    while not job.waiting_for and time.time() < deadline:
        time.sleep(0.01)
    assert job.waiting_for == "Building a direction"
    assert "waiting for the model" in job.status_line
    release.set()
    registry.wait("margins", timeout=60)
    assert job.status == "done", job.error
    assert job.waiting_for == ""
    np.testing.assert_array_equal(job.result[0], _pairs_job(tiny_lm)[0])
