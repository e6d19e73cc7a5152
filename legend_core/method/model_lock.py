"""One forward pass at a time on one loaded model, in arrival order.

The app keeps one model per process and runs each job (a direction build, a margin run) in
its own thread. The encoder hangs forward hooks on the model for the length of one pass, and
those hooks fire on *every* pass through the model, whichever thread made it: two passes at
once would pool each other's batches. So each pass holds the model's lock: hooks are added,
the pass runs, hooks are removed, then the next job's pass may start.

Why a lock per pass rather than hooks that know their caller: concurrent passes gain
nothing on the hardware Legend runs on (a CPU's cores are already used by one pass's
matrix products; a GPU runs one thread's kernels after another's on its default stream),
and a lock per pass keeps the hooks simple. Passes, not whole jobs, take turns: a direction
build and a margin run started together interleave batch by batch (the lock is fair), so
neither waits for the other to finish.

A thread that has to wait tells whoever listens (the job registry shows "waiting for the
model") through :data:`on_wait`, a context variable each job's thread sets for itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

#: Called with the holder's thread name when this thread starts waiting for a model, and
#: with ``None`` once it has the model. Set per thread (a job sets its own).
on_wait: ContextVar[Callable[[str | None], None] | None] = ContextVar("on_wait", default=None)


class ModelLock:
    """A fair (first come, first served), reentrant lock for one loaded model."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._owner: int | None = None
        self._owner_name = ""
        self._depth = 0
        self._abandoned: set[int] = set()

    def _advance(self) -> None:
        """Serve the next ticket, skipping those whose threads stopped waiting."""
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the model for the block; waits (in arrival order) while another thread has it."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:  # reentrant: a pass inside a held block (the self-check)
                self._depth += 1
                reentered = True
            else:
                reentered = False
                ticket = self._next_ticket
                self._next_ticket += 1
                listener = on_wait.get()
                waited = False
                try:
                    while self._serving != ticket or self._owner is not None:
                        if not waited and listener is not None:
                            listener(self._owner_name or "another job")
                        waited = True
                        self._cond.wait()
                except BaseException:  # interrupted while waiting: give the turn away
                    if self._serving == ticket:
                        self._serving -= 1
                        self._advance()
                    else:
                        self._abandoned.add(ticket)
                    raise
                self._owner, self._owner_name, self._depth = me, _thread_name(), 1
        if not reentered and waited and listener is not None:
            listener(None)
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._owner, self._owner_name = None, ""
                    self._advance()

    @property
    def holder(self) -> str:
        """The name of the thread holding the model ("" when free)."""
        with self._cond:
            return self._owner_name

    @property
    def waiting(self) -> int:
        """How many threads wait for the model."""
        with self._cond:
            busy = 1 if self._owner is not None else 0
            return self._next_ticket - self._serving - busy - len(self._abandoned)


def _thread_name() -> str:
    return threading.current_thread().name
