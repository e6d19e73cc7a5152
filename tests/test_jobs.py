"""Background jobs: progress, results, failures, and no duplicate work under one key."""

from __future__ import annotations

import threading

from legend_core.app.jobs import JobRegistry


def test_a_job_reports_progress_and_its_result():
    registry = JobRegistry()
    gate = threading.Event()

    def work(n, progress):
        progress(1, n)
        gate.wait(5)
        progress(n, n)
        return n * 2

    job = registry.start("k", "Working", work, 4)
    assert registry.start("k", "Working", work, 4) is job  # the running one, not a second
    assert job.running and [j.key for j in registry.running()] == ["k"]
    gate.set()
    registry.wait("k", 5)
    assert job.status == "done" and job.result == 8 and job.fraction == 1.0
    assert (job.done, job.total) == (4, 4)
    assert registry.running() == []
    again = registry.start("k", "Working", lambda progress: 1)
    assert again is not job  # a finished job is replaced
    registry.wait("k", 5)
    registry.forget("k")
    assert registry.get("k") is None


def test_a_failed_job_keeps_its_message():
    registry = JobRegistry()

    def work(progress):
        raise ValueError("the direction was built on another model")

    registry.start("bad", "Failing", work)
    job = registry.wait("bad", 5)
    assert job.status == "failed" and job.error == "the direction was built on another model"
    assert "ValueError" in job.details and job.fraction == 1.0


def test_fraction_is_zero_while_the_total_is_unknown():
    registry = JobRegistry()
    gate = threading.Event()
    job = registry.start("x", "x", lambda progress: gate.wait(5))
    assert job.fraction == 0.0
    gate.set()
    registry.wait("x", 5)
