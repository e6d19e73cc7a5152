"""The embedding cache's store methods: which space, which transactions.

Vectors live in blocks (:mod:`legend_core.data.store.blocks`: the format, reads and
writes); these methods pick the space and the transactions.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from legend_core.data.schema import EmbeddingSpaceRow
from legend_core.data.store import blocks
from legend_core.data.store.engine import StoreBase, T, _retry, insert_or_skip
from legend_core.data.store.records import EmbeddingSpace


class CacheMixin(StoreBase):
    """Cached hidden states, by embedding space and text key."""

    def _space_id(self, s: Session, space: EmbeddingSpace, create: bool) -> int | None:
        key = space.key()
        query = select(EmbeddingSpaceRow.id).where(EmbeddingSpaceRow.key == key)
        space_id = s.scalar(query)
        if space_id is None and create:
            conn = s.connection()
            conn.execute(
                insert_or_skip(conn, EmbeddingSpaceRow.__table__), {"key": key, **asdict(space)}
            )
            space_id = s.scalar(query)
        return space_id

    def cached_keys(self, space: EmbeddingSpace, keys: Sequence[bytes]) -> set[bytes]:
        """Which of ``keys`` are cached for ``space`` (reads no vectors)."""
        with self._session() as s:
            space_id = self._space_id(s, space, create=False)
            if space_id is None or not keys:
                return set()
            return blocks.cached(s.connection(), space_id, keys)

    def iter_embeddings(
        self, space: EmbeddingSpace, keys: Sequence[bytes], batch_size: int = 8_192
    ) -> Iterator[tuple[list[bytes], np.ndarray]]:
        """The cached vectors of those ``keys`` in the cache, as ``(keys, float32 matrix)``
        batches of at most ``batch_size`` rows, each key once, in no particular order."""
        with self._session() as s:
            space_id = self._space_id(s, space, create=False)
            if space_id is None or not keys:
                return
            yield from blocks.vectors(s.connection(), space_id, keys, batch_size)

    def get_embeddings(
        self, space: EmbeddingSpace, keys: Sequence[bytes]
    ) -> dict[bytes, np.ndarray]:
        """Cached vectors (float32) of those ``keys`` that are in the cache for ``space``."""
        return {
            key: row
            for batch_keys, matrix in self.iter_embeddings(space, keys)
            for key, row in zip(batch_keys, matrix)
        }

    def project_embeddings(
        self, space: EmbeddingSpace, keys: Sequence[bytes], direction: np.ndarray
    ) -> blocks.Projections:
        """Each key's projection ``h · v / ‖v‖`` on ``direction`` from the cached vectors,
        block by block, keeping no vector (the second phase of
        :func:`legend_core.workflows.annotate.annotate_dataset`); see
        :func:`legend_core.data.store.blocks.project`."""
        with self._session() as s:
            space_id = self._space_id(s, space, create=False)
            if space_id is None:
                space_id = -1  # no such space: nothing is found
            return blocks.project(s.connection(), space_id, keys, direction)

    def _cache_write(self, work: Callable[[], T]) -> T:
        """Run ``work`` (one whole transaction of its own) again while the database reports
        contention or a concurrent writer took one of its keys first."""
        for attempt in range(20):
            try:
                return _retry(work)
            except blocks.LostRace:
                if attempt == 19:
                    raise
                time.sleep(0.01 * (1.0 + random.random()))
        raise AssertionError("unreachable")

    def forget_embeddings(self, space: EmbeddingSpace, keys: Sequence[bytes]) -> None:
        """Drop cached vectors (refused ones cached before the cache checked its input)."""

        def work() -> None:
            with self._session() as s, s.begin():
                space_id = self._space_id(s, space, create=False)
                if space_id is not None:
                    blocks.forget(s.connection(), space_id, keys)

        self._cache_write(work)

    def put_embeddings(self, space: EmbeddingSpace, items: Mapping[bytes, np.ndarray]) -> None:
        """Cache vectors as float16 (float32 if a value exceeds float16's range), in blocks.

        Idempotent: keys already cached keep their vector (a concurrent writer's keys are
        skipped, never an error). Nothing is written if any vector is refused. Each block
        is written in a transaction of its own, with its index rows: a writer killed at
        any point leaves whole blocks only.

        Raises:
            ValueError: A key is not 32 bytes; a vector is empty, not finite or all zeros
                (no forward pass yields one: it comes from a failed or interrupted pass);
                the vectors differ in width, or from the width this space caches.
        """
        for keys, matrix in blocks.pack(items):

            def work(keys: list[bytes] = keys, matrix: np.ndarray = matrix) -> None:
                with self._session() as s, s.begin():
                    space_id = self._space_id(s, space, create=True)
                    blocks.write_block(s.connection(), space_id, keys, matrix)

            self._cache_write(work)
