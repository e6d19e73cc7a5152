"""Contrastive sets (the items a direction is computed from): add, import, list, delete."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from sqlalchemy import delete, insert, select

from legend_core.data.schema import ContrastItemRow, ContrastSet
from legend_core.data.store.engine import (
    INSERT_CHUNK,
    NotFoundError,
    StoreBase,
    _check_name,
    _retry,
)
from legend_core.data.store.records import ContrastSetInfo
from legend_core.types import ContrastItem


class ContrastSetsMixin(StoreBase):
    """Contrastive sets and their items, in input order."""

    def add_contrast_set(self, name: str, items: Sequence[ContrastItem], source: str = "") -> int:
        """Store a contrastive set in one transaction; returns its id."""
        name = _check_name(name)

        def work() -> int:
            with self._session() as s, s.begin():
                if s.scalar(select(ContrastSet.id).where(ContrastSet.name == name)) is not None:
                    raise ValueError(f"a contrastive set named {name!r} already exists")
                cs = ContrastSet(name=name, source=source, n_items=len(items))
                s.add(cs)
                s.flush()
                for start in range(0, len(items), INSERT_CHUNK):
                    rows = [
                        {
                            "set_id": cs.id,
                            "idx": i,
                            "instruction": it.instruction,
                            "harmful": it.harmful,
                            "harmless": it.harmless,
                        }
                        for i, it in enumerate(items[start : start + INSERT_CHUNK], start)
                    ]
                    s.execute(insert(ContrastItemRow), rows)
                return cs.id

        return _retry(work)

    def import_contrast_file(
        self,
        path: str | Path,
        format: str = "auto",
        name: str | None = None,
        refusal: str | Sequence[str] | None = None,
        mapping: Mapping[str, str] | None = None,
    ) -> int:
        """Read a contrastive set with ``formats.read_contrast_set`` and store it."""
        from legend_core.data.files import data_file_stem
        from legend_core.data.formats import read_contrast_set

        items = read_contrast_set(path, format=format, refusal=refusal, mapping=mapping)
        return self.add_contrast_set(name or data_file_stem(path), items, source=str(path))

    def list_contrast_sets(self) -> list[ContrastSetInfo]:
        """All contrastive sets, oldest first."""
        with self._session() as s:
            rows = s.scalars(select(ContrastSet).order_by(ContrastSet.id))
            return [ContrastSetInfo(c.id, c.name, c.source, c.n_items, c.created_at) for c in rows]

    def get_contrast_items(self, set_id: int) -> list[ContrastItem]:
        """A contrastive set's items in input order."""
        self._require(ContrastSet, set_id)
        query = (
            select(ContrastItemRow.instruction, ContrastItemRow.harmful, ContrastItemRow.harmless)
            .where(ContrastItemRow.set_id == set_id)
            .order_by(ContrastItemRow.idx)
        )
        with self._session() as s:
            return [ContrastItem(*row) for row in s.execute(query)]

    def delete_contrast_set(self, set_id: int) -> None:
        """Delete a contrastive set and its items."""
        with self._session() as s, s.begin():
            if s.get(ContrastSet, set_id) is None:
                raise NotFoundError(f"no contrastive set {set_id}")
            s.execute(delete(ContrastItemRow).where(ContrastItemRow.set_id == set_id))
            s.execute(delete(ContrastSet).where(ContrastSet.id == set_id))
