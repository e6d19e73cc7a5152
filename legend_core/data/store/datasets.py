"""Data sets and their pairs: add, import, list, read, delete."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, distinct, func, insert, select
from sqlalchemy.exc import IntegrityError

from legend_core.data.files import json_safe
from legend_core.data.schema import Dataset, Margin, MarginRun, Pair, Review
from legend_core.data.store.engine import (
    BIG_INSERT,
    INSERT_CHUNK,
    NotFoundError,
    StoreBase,
    _check_name,
    _refresh_statistics,
    _retry,
)
from legend_core.data.store.records import DatasetInfo, PairRecord
from legend_core.data.store.verdicts import _VERDICT, _current_verdict
from legend_core.types import PreferencePair
from legend_core.util import pair_hash, pair_text_keys

if TYPE_CHECKING:
    import pandas as pd

    from legend_core.data.formats import ImportReport


def _pair_row(dataset_id: int, idx: int, pair: PreferencePair) -> dict[str, Any]:
    for field in ("prompt", "chosen", "rejected"):
        if not isinstance(getattr(pair, field), str):
            raise TypeError(f"pair {idx}: {field} must be a string")
    if not isinstance(pair.meta, dict):
        raise TypeError(f"pair {idx}: meta must be a dict")
    # The cache keys of its two texts: a margin run reads these, not the texts.
    chosen_key, rejected_key = pair_text_keys(pair.prompt, pair.chosen, pair.rejected)
    return {
        "dataset_id": dataset_id,
        "idx": idx,
        "prompt": pair.prompt,
        "chosen": pair.chosen,
        "rejected": pair.rejected,
        "meta": json_safe(pair.meta),
        "content_hash": pair_hash(pair.prompt, pair.chosen, pair.rejected),
        "chosen_key": chosen_key,
        "rejected_key": rejected_key,
    }


class DatasetsMixin(StoreBase):
    """Data sets: pairs stored in input order, each with its content hash."""

    def add_dataset(
        self, name: str, pairs: Sequence[PreferencePair], source: str = "", format: str = ""
    ) -> int:
        """Store a data set and its pairs in one transaction; returns the data set's id.

        Raises:
            ValueError: The name is empty or already taken.
            TypeError: A pair's texts are not strings (nothing is stored).
        """
        name = _check_name(name)

        def work() -> int:
            with self._session() as s, s.begin():
                if s.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
                    raise ValueError(f"a data set named {name!r} already exists")
                dataset = Dataset(name=name, source=source, format=format, n_pairs=len(pairs))
                s.add(dataset)
                s.flush()
                for start in range(0, len(pairs), INSERT_CHUNK):
                    rows = [
                        _pair_row(dataset.id, i, p)
                        for i, p in enumerate(pairs[start : start + INSERT_CHUNK], start)
                    ]
                    s.execute(insert(Pair), rows)
                return dataset.id

        try:
            dataset_id = _retry(work)
        except IntegrityError as exc:
            if self._dataset_id(name) is not None:
                raise ValueError(f"a data set named {name!r} already exists") from exc
            raise
        if len(pairs) >= BIG_INSERT:
            _refresh_statistics(self.engine, ["pairs"])
        return dataset_id

    def _dataset_id(self, name: str) -> int | None:
        with self._session() as s:
            return s.scalar(select(Dataset.id).where(Dataset.name == name))

    def _free_name(self, base: str) -> str:
        name, n = base, 1
        while self._dataset_id(name) is not None:
            n += 1
            name = f"{base} ({n})"
        return name

    def import_file(
        self,
        path: str | Path,
        format: str = "auto",
        name: str | None = None,
        mapping: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
    ) -> tuple[int, ImportReport]:
        """Read a preference file with :func:`legend_core.data.formats.read_pairs` and store it.

        Args:
            path: The file.
            format: ``auto`` or a format name of ``formats``.
            name: The data set's name; by default the file's stem (made unique).
            mapping: Column mapping passed to ``read_pairs``.
            max_bytes: Size limit passed to ``read_pairs`` (its default when ``None``).

        Raises:
            FormatError: The file is malformed; the database is unchanged.
            ValueError: ``name`` is taken or the file holds no pairs.
        """
        from legend_core.data.files import data_file_stem
        from legend_core.data.formats import read_pairs

        if name is not None and self._dataset_id(_check_name(name)) is not None:
            raise ValueError(f"a data set named {name.strip()!r} already exists")
        kwargs: dict[str, Any] = {} if max_bytes is None else {"max_bytes": max_bytes}
        report = read_pairs(path, format=format, mapping=mapping, **kwargs)
        if not report.pairs:
            raise ValueError(f"{path} holds no preference pairs")
        name = name if name is not None else self._free_name(data_file_stem(path) or "data set")
        dataset_id = self.add_dataset(name, report.pairs, source=str(path), format=report.format)
        return dataset_id, report

    def list_datasets(self) -> list[DatasetInfo]:
        """All data sets, oldest first, with run and reviewed-pair counts (pairs someone
        holds a current verdict on)."""
        runs = (
            select(MarginRun.dataset_id, func.count().label("n"))
            .group_by(MarginRun.dataset_id)
            .subquery()
        )
        verdict = _VERDICT
        reviewed = (
            select(Pair.dataset_id, func.count(distinct(verdict.pair_id)).label("n"))
            .join(Pair, Pair.id == verdict.pair_id)
            .where(_current_verdict(verdict))
            .group_by(Pair.dataset_id)
            .subquery()
        )
        query = (
            select(Dataset, func.coalesce(runs.c.n, 0), func.coalesce(reviewed.c.n, 0))
            .outerjoin(runs, runs.c.dataset_id == Dataset.id)
            .outerjoin(reviewed, reviewed.c.dataset_id == Dataset.id)
            .order_by(Dataset.id)
        )
        with self._session() as s:
            return [
                DatasetInfo(
                    d.id, d.name, d.source, d.format, d.n_pairs, n_runs, n_rev, d.created_at
                )
                for d, n_runs, n_rev in s.execute(query)
            ]

    def get_dataset(self, dataset_id: int) -> DatasetInfo:
        """One data set's listing entry."""
        for info in self.list_datasets():
            if info.id == dataset_id:
                return info
        raise NotFoundError(f"no data set {dataset_id}")

    def dataset_frame(self, dataset_id: int) -> pd.DataFrame:
        """A data set's pairs in input order: columns id, idx, prompt, chosen, rejected, meta."""
        self._require(Dataset, dataset_id)
        query = (
            select(Pair.id, Pair.idx, Pair.prompt, Pair.chosen, Pair.rejected, Pair.meta)
            .where(Pair.dataset_id == dataset_id)
            .order_by(Pair.idx)
        )
        import pandas as pd

        columns = ["id", "idx", "prompt", "chosen", "rejected", "meta"]
        with self._session() as s:
            return pd.DataFrame([tuple(r) for r in s.execute(query)], columns=columns)

    def get_pair(self, pair_id: int) -> PairRecord:
        """One stored pair."""
        with self._session() as s:
            p = s.get(Pair, pair_id)
            if p is None:
                raise NotFoundError(f"no pair {pair_id}")
            return PairRecord(p.id, p.dataset_id, p.idx, p.prompt, p.chosen, p.rejected, p.meta)

    def delete_dataset(self, dataset_id: int) -> None:
        """Delete a data set with its pairs, margin runs, margins and reviews."""

        def work() -> None:
            with self._session() as s, s.begin():
                if s.get(Dataset, dataset_id) is None:
                    raise NotFoundError(f"no data set {dataset_id}")
                pair_ids = select(Pair.id).where(Pair.dataset_id == dataset_id)
                run_ids = select(MarginRun.id).where(MarginRun.dataset_id == dataset_id)
                s.execute(delete(Review).where(Review.pair_id.in_(pair_ids)))
                s.execute(delete(Margin).where(Margin.run_id.in_(run_ids)))
                s.execute(delete(MarginRun).where(MarginRun.dataset_id == dataset_id))
                s.execute(delete(Pair).where(Pair.dataset_id == dataset_id))
                s.execute(delete(Dataset).where(Dataset.id == dataset_id))

        _retry(work)
