"""Background jobs: long work (building a direction, computing margins) runs in a thread, so
it goes on when the user leaves the page, and any page can show its progress.

A :class:`JobRegistry` is held once per process (the app keeps it in ``st.cache_resource``).
A job is named by a key: starting a job whose key is already running returns the running
one instead of starting a second, so two clicks (or two users) never duplicate work. Jobs
of different keys may share one loaded model: their forward passes take turns (see
:mod:`legend_core.method.model_lock`), and a job that waits for the model says so.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from legend_core.method import model_lock

Status = Literal["running", "done", "failed"]


@dataclass
class Job:
    """One piece of background work and how far it got.

    Attributes:
        key: The registry key (what the job is about).
        label: A short human description, shown beside the progress bar.
        status: ``running``, ``done`` or ``failed``.
        done: Units of work finished (as reported by the work's progress callback).
        total: Units of work in all (0 while unknown).
        result: What the work returned, once done.
        error: One line saying what went wrong, once failed.
        details: The traceback of a failure, for the curious.
        waiting_for: While the job waits for the loaded model (another job's forward
            pass holds it), who holds it; "" otherwise.
    """

    key: str
    label: str
    status: Status = "running"
    done: int = 0
    total: int = 0
    result: Any = None
    error: str = ""
    details: str = ""
    waiting_for: str = ""
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def progress(self, done: int, total: int) -> None:
        """The callback handed to the work: ``progress(done, total)``."""
        self.done, self.total = int(done), int(total)

    def wait(self, holder: str | None) -> None:
        """The model lock's callback: ``holder`` while waiting for the model, None after."""
        self.waiting_for = holder or ""

    @property
    def fraction(self) -> float:
        """Share done in [0, 1] (0 while the total is unknown, 1 once finished)."""
        if self.status != "running":
            return 1.0
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0

    @property
    def status_line(self) -> str:
        """What the job is doing, in a few words, for a progress bar's text."""
        if self.waiting_for:
            return f"waiting for the model ({self.waiting_for} is using it)"
        return f"{self.done:,} of {self.total:,}" if self.total else "starting"

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def elapsed(self) -> float:
        """Seconds since the start (until the end, once finished)."""
        return (self.finished_at or time.time()) - self.started_at


def _thread_name(key: str) -> str:
    return f"legend-job-{key}"


class JobRegistry:
    """Jobs by key, each run in its own daemon thread."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(
        self, key: str, label: str, work: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Job:
        """Run ``work(*args, progress=job.progress, **kwargs)`` in a thread.

        Returns the job already running under ``key`` if there is one; a finished or
        failed job under the same key is replaced.
        """
        with self._lock:
            current = self._jobs.get(key)
            if current is not None and current.running:
                return current
            job = Job(key=key, label=label)
            self._jobs[key] = job

        def target() -> None:
            model_lock.on_wait.set(lambda holder: job.wait(self._describe(holder)))
            try:
                job.result = work(*args, progress=job.progress, **kwargs)
                job.status = "done"
            except Exception as error:  # the page shows it; the thread must not die silently
                job.error = str(error) or type(error).__name__
                job.details = traceback.format_exc()
                job.status = "failed"
            finally:
                job.waiting_for = ""
                job.finished_at = time.time()

        threading.Thread(target=target, name=_thread_name(key), daemon=True).start()
        return job

    def _describe(self, thread_name: str | None) -> str | None:
        """A job's label for the name of the thread that holds the model."""
        if thread_name is None:
            return None
        with self._lock:
            for job in self._jobs.values():
                if job.running and _thread_name(job.key) == thread_name:
                    return job.label
        return "another task"

    def get(self, key: str) -> Job | None:
        """The job under ``key``, running or finished, or None."""
        with self._lock:
            return self._jobs.get(key)

    def running(self) -> list[Job]:
        """Jobs still running, oldest first."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.running]
        return sorted(jobs, key=lambda j: j.started_at)

    def forget(self, key: str) -> None:
        """Drop a finished job (a running one is kept)."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not job.running:
                del self._jobs[key]

    def wait(self, key: str, timeout: float = 60.0) -> Job | None:
        """Block until the job under ``key`` finishes (for tests and scripts)."""
        deadline = time.time() + timeout
        job = self.get(key)
        while job is not None and job.running and time.time() < deadline:
            time.sleep(0.05)
        return job
