"""The review queue's stepping rules written over a plain list: the reference the store's
key-based stepping (``Store.queue_step``) and ``app.queue.list_step`` are tested against."""

from __future__ import annotations

from collections.abc import Sequence

from legend_core.app.queue import queue_position


def step(queue: Sequence[int], current: int | None, delta: int) -> int | None:
    """The pair ``delta`` places from ``current`` (clamped to the ends).

    When ``current`` is not in the queue, the first pair (None for an empty queue).
    """
    if not queue:
        return None
    pos = queue_position(queue, current)
    if pos is None:
        return queue[0]
    return queue[min(len(queue) - 1, max(0, pos + delta))]


def next_unreviewed(
    queue: Sequence[int], current: int | None, unreviewed: set[int] | Sequence[int]
) -> int | None:
    """The first unreviewed pair after ``current``, wrapping around; None if there is none."""
    todo = set(unreviewed)
    if not queue or not todo:
        return None
    pos = queue_position(queue, current)
    start = 0 if pos is None else pos + 1
    ordered = list(queue[start:]) + list(queue[:start])
    return next((p for p in ordered if p in todo and p != current), None)
