"""Everything that lasts, behind SQLAlchemy: data sets, directions, margin runs, reviews.

``Store(url)`` opens any SQLAlchemy URL (a SQLite file by default, see
:func:`legend_core.config.database_url`) and upgrades its schema to the newest Alembic
revision; it never drops anything. The ORM models live in :mod:`legend_core.data.schema`.

Reviews are append-only and belong to the pair, not to one run: every run of a pair reads
all its reviews. What they add up to is decided by :mod:`legend_core.review.policy` (the
one place the policy is written); the store only fetches the reviews and hands the policy
the admins' names it is given (it never reads the users file). A pair is *reviewed* when
someone holds a current verdict on it (accept, flip or override not withdrawn); a flag
alone is not a verdict.

The only database-specific code is the marked "Database specifics" section below (SQLite's
pragmas and file folder; a statistics refresh for PostgreSQL's planner).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from sqlalchemy import (
    Engine,
    Select,
    and_,
    create_engine,
    delete,
    distinct,
    event,
    exists,
    func,
    insert,
    inspect,
    make_url,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased, sessionmaker

from legend_core.config import database_url
from legend_core.data import block_cache
from legend_core.data.block_cache import vector_problem as vector_problem  # the cache's rule
from legend_core.data.formats import json_safe
from legend_core.data.schema import (
    ContrastItemRow,
    ContrastSet,
    Dataset,
    DirectionRow,
    EmbeddingKey,
    EmbeddingSpaceRow,
    Margin,
    MarginRun,
    Pair,
    Review,
    utcnow,
)
from legend_core.method.directions import Direction
from legend_core.review.policy import (
    VERDICT_ACTIONS,
    AnnotatorState,
    Resolution,
    ReviewEvent,
    check_action,
    own_state,
    resolve,
)
from legend_core.types import ContrastItem, PreferencePair
from legend_core.util import chunks, pair_hash

if TYPE_CHECKING:
    import pandas as pd

    from legend_core.data.formats import ImportReport

T = TypeVar("T")

#: Rows per bulk INSERT statement when adding a data set.
INSERT_CHUNK = 2_000
#: Values per ``IN (...)`` list: stays under SQLite's old 999-parameter limit.
IN_CHUNK = 900
#: Inserts at least this large refresh the planner's statistics (PostgreSQL).
BIG_INSERT = 5_000
#: Alembic's ``context`` and ``op`` are module globals: one migration per process at a time.
_MIGRATION_LOCK = threading.Lock()


class NotFoundError(KeyError):
    """A row asked for by id does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


# --- records handed out ----------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingSpace:
    """Everything that changes a cached vector except the text.

    ``model_dtype`` is the dtype the forward pass ran in (``float32``, ``bfloat16``, ...);
    an empty string marks spaces cached before the dtype was recorded (schema 0002).
    """

    model: str
    model_fingerprint: str
    template: str
    pooling: str
    layer: int
    max_length: int
    model_dtype: str = ""

    def key(self) -> str:
        """A stable hex digest of all fields (the space's unique key in the database)."""
        fields = asdict(self)
        if not self.model_dtype:
            # Spaces from before 0003 were hashed without the dtype; keep finding them.
            del fields["model_dtype"]
        blob = json.dumps(fields, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> EmbeddingSpace:
        """The space of a margin run, from its stored settings (see ``pipeline.run_settings``)."""
        return cls(
            model=str(settings["model"]),
            model_fingerprint=str(settings.get("model_fingerprint", "")),
            template=str(settings["template"]),
            pooling=str(settings["pooling"]),
            layer=int(settings["layer"]),
            max_length=int(settings["max_length"]),
            model_dtype=str(settings.get("model_dtype", "")),
        )


@dataclass(frozen=True)
class DatasetInfo:
    """A data set with its counts, for listings."""

    id: int
    name: str
    source: str
    format: str
    n_pairs: int
    n_runs: int
    n_reviewed: int
    created_at: datetime


@dataclass(frozen=True)
class ContrastSetInfo:
    """A contrastive set, for listings."""

    id: int
    name: str
    source: str
    n_items: int
    created_at: datetime


@dataclass(frozen=True)
class DirectionInfo:
    """A stored direction without its vector, for listings."""

    id: int
    name: str
    model: str
    layer: int
    pooling: str
    method: str
    dim: int
    auroc: float | None
    n_runs: int
    created_at: datetime


@dataclass(frozen=True)
class RunInfo:
    """A margin run and how far it got."""

    id: int
    dataset_id: int
    direction_id: int
    settings: dict[str, Any]
    status: str
    n_margins: int
    n_pairs: int
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class PairText:
    """The texts of a stored pair (what the encoder needs)."""

    id: int
    idx: int
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class PairRecord:
    """A stored pair with its data set and metadata."""

    id: int
    dataset_id: int
    idx: int
    prompt: str
    chosen: str
    rejected: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class ReviewInfo:
    """One review, as stored."""

    id: int
    pair_id: int
    run_id: int | None
    annotator: str
    action: str
    value: float | None
    note: str
    created_at: datetime
    direction_id: int | None = None


# --- Database specifics: the only dialect-specific code in the project ----------------------


#: Values per ``IN (...)`` list on the bulk paths (margins, embedding cache): SQLite allows
#: 32,766 parameters since 3.32 and PostgreSQL 65,535; fewer, longer statements cost less.
BULK_IN_CHUNK = 4_000 if sqlite3.sqlite_version_info >= (3, 32) else IN_CHUNK


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_prepare_file(url: str) -> None:
    """Create the folder of a SQLite file database (not for ``:memory:`` or ``file:`` URIs)."""
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    """Per connection: wait on locks, write-ahead log, enforce foreign keys."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _refresh_statistics(engine: Engine, tables: Sequence[str]) -> None:
    """After a bulk insert, let PostgreSQL's planner see the new rows (it picks a sort over
    the queue's index walk on stale statistics); SQLite plans well without them."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in tables:
                conn.execute(text(f"ANALYZE {table}"))


def insert_or_skip(conn: Any, table: Any) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for ``table`` in the connection's dialect: rows
    whose key is already there are skipped, so two writers of the same rows never collide
    (no check-then-insert window, no IntegrityError to retry)."""
    name = conn.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif name in ("mysql", "mariadb"):
        return insert(table).prefix_with("IGNORE")
    else:
        raise NotImplementedError(
            f"the {name} database is not supported (use SQLite or PostgreSQL)"
        )
    return dialect_insert(table).on_conflict_do_nothing()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets its pragmas and its folder created."""
    if not _is_sqlite(url):
        return create_engine(url, pool_pre_ping=True)
    _sqlite_prepare_file(url)
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


# --- end of database specifics ---------------------------------------------------------------


def _transient(exc: OperationalError) -> bool:
    text = str(exc.orig if exc.orig is not None else exc).lower()
    return any(
        s in text for s in ("locked", "busy", "deadlock", "could not serialize", "serialization")
    )


def _retry(fn: Callable[[], T], attempts: int = 40) -> T:
    """Run ``fn`` (one whole transaction) again while the database reports lock contention."""
    delay = 0.005
    for attempt in range(attempts):
        try:
            return fn()
        except OperationalError as exc:
            if attempt == attempts - 1 or not _transient(exc):
                raise
        time.sleep(delay * (1.0 + random.random()))
        delay = min(delay * 2, 0.5)
    raise AssertionError("unreachable")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a name must be a non-empty string")
    return name.strip()


def _settings_key(settings: Mapping[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# Named, built once: fresh anonymous aliases made every statement a new one to compile
# (SQLAlchemy's statement cache missed: 7 ms instead of 0.5 ms per queue step).
_VERDICT = aliased(Review, name="verdict")
_LATER = aliased(Review, name="later")


def _current_verdict(verdict: Any) -> Any:
    """SQL condition on a ``Review`` alias: it is a verdict its annotator has not withdrawn
    since (the withdraw lookup walks ``ix_reviews_pair`` (pair_id, id))."""
    later = _LATER
    withdrawn = exists().where(
        later.pair_id == verdict.pair_id,
        later.annotator == verdict.annotator,
        later.action == "withdraw",
        later.id > verdict.id,
    )
    return and_(verdict.action.in_(VERDICT_ACTIONS), ~withdrawn)


def _has_verdict(pair_id: Any, annotator: str | None = None) -> Any:
    """SQL condition: someone (``annotator``, if given) holds a current verdict on the pair
    ``pair_id`` (a column or a value)."""
    verdict = _VERDICT
    conditions = [verdict.pair_id == pair_id, _current_verdict(verdict)]
    if annotator is not None:
        conditions.append(verdict.annotator == annotator)
    return exists().where(*conditions)


def _pair_row(dataset_id: int, idx: int, pair: PreferencePair) -> dict[str, Any]:
    for field in ("prompt", "chosen", "rejected"):
        if not isinstance(getattr(pair, field), str):
            raise TypeError(f"pair {idx}: {field} must be a string")
    if not isinstance(pair.meta, dict):
        raise TypeError(f"pair {idx}: meta must be a dict")
    return {
        "dataset_id": dataset_id,
        "idx": idx,
        "prompt": pair.prompt,
        "chosen": pair.chosen,
        "rejected": pair.rejected,
        "meta": json_safe(pair.meta),
        "content_hash": pair_hash(pair.prompt, pair.chosen, pair.rejected),
    }


class Store:
    """The Legend database: open it with a URL, use it from any thread or process."""

    def __init__(self, url: str | None = None) -> None:
        """Open (creating if needed) the database at ``url`` and upgrade it to head.

        Args:
            url: Any SQLAlchemy URL; ``None`` uses :func:`legend_core.config.database_url`.
        """
        self.url = url or database_url()
        self.engine = make_engine(self.url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._migrate()

    def _revision(self) -> str | None:
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    def _migrate(self) -> None:
        """Upgrade to head (a cheap check first: Alembic loads only when there is work)."""
        from legend_core.data.migrations import HEAD, alembic_config

        if self._revision() == HEAD:
            return
        from alembic import command

        for attempt in range(5):
            try:
                with _MIGRATION_LOCK, self.engine.begin() as conn:
                    command.upgrade(alembic_config(conn), "head")
                return
            except DBAPIError:
                # Another process may be creating the same schema right now: look again.
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
                if self._revision() == HEAD:
                    return

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    # --- data sets ---------------------------------------------------------------------------

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
        from legend_core.data.formats import data_file_stem, read_pairs

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

    def _require(self, model: type, row_id: int) -> None:
        with self._session() as s:
            if s.get(model, row_id) is None:
                raise NotFoundError(f"no {model.__tablename__[:-1].replace('_', ' ')} {row_id}")

    # --- contrastive sets --------------------------------------------------------------------

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
        from legend_core.data.formats import data_file_stem, read_contrast_set

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

    # --- directions --------------------------------------------------------------------------

    def add_direction(self, direction: Direction) -> int:
        """Store a direction (exact float32 vector + all metadata); returns its id."""
        vector = np.ascontiguousarray(direction.vector, dtype="<f4").reshape(-1)
        row = DirectionRow(
            name=direction.name,
            model=direction.model,
            layer=int(direction.layer),
            pooling=direction.pooling,
            method=direction.method,
            dim=int(vector.shape[0]),
            vector=vector.tobytes(),
            meta=direction.metadata(),
        )

        def work() -> int:
            with self._session() as s, s.begin():
                s.add(row)
                s.flush()
                return row.id

        return _retry(work)

    def get_direction(self, direction_id: int) -> Direction:
        """A stored direction, bit-identical to the one added."""
        with self._session() as s:
            row = s.get(DirectionRow, direction_id)
            if row is None:
                raise NotFoundError(f"no direction {direction_id}")
            vector = np.frombuffer(bytes(row.vector), dtype="<f4").astype(np.float32)
            return Direction.from_metadata(vector, row.meta)

    def list_directions(self) -> list[DirectionInfo]:
        """All directions, oldest first, with their layer's held-out AUROC if measured."""
        runs = (
            select(MarginRun.direction_id, func.count().label("n"))
            .group_by(MarginRun.direction_id)
            .subquery()
        )
        query = (
            select(DirectionRow, func.coalesce(runs.c.n, 0))
            .outerjoin(runs, runs.c.direction_id == DirectionRow.id)
            .order_by(DirectionRow.id)
        )
        out = []
        with self._session() as s:
            for d, n_runs in s.execute(query):
                quality = [q for q in d.meta.get("quality", []) if q.get("layer") == d.layer]
                auroc = quality[0].get("auroc") if quality else None
                out.append(
                    DirectionInfo(
                        d.id,
                        d.name,
                        d.model,
                        d.layer,
                        d.pooling,
                        d.method,
                        d.dim,
                        auroc,
                        n_runs,
                        d.created_at,
                    )
                )
        return out

    def delete_direction(self, direction_id: int) -> None:
        """Delete a direction and its margin runs (see :meth:`_drop_runs` for reviews)."""

        def work() -> None:
            with self._session() as s, s.begin():
                if s.get(DirectionRow, direction_id) is None:
                    raise NotFoundError(f"no direction {direction_id}")
                self._drop_runs(s, MarginRun.direction_id == direction_id)
                s.execute(delete(DirectionRow).where(DirectionRow.id == direction_id))

        _retry(work)

    @staticmethod
    def _drop_runs(s: Session, condition: Any) -> None:
        """Delete runs and margins. Reviews belong to the pair and stay, detached from the
        run; their ``direction_id`` keeps an override's scale known."""
        run_ids = select(MarginRun.id).where(condition)
        s.execute(update(Review).where(Review.run_id.in_(run_ids)).values(run_id=None))
        s.execute(delete(Margin).where(Margin.run_id.in_(run_ids)))
        s.execute(delete(MarginRun).where(condition))

    # --- margin runs -------------------------------------------------------------------------

    def start_run(self, dataset_id: int, direction_id: int, settings: dict[str, Any]) -> int:
        """A margin run for (data set, direction, settings): the existing one if any, so a
        restarted annotation resumes; else a new one."""
        self._require(Dataset, dataset_id)
        self._require(DirectionRow, direction_id)
        key = _settings_key(settings)
        query = select(MarginRun.id).where(
            MarginRun.dataset_id == dataset_id,
            MarginRun.direction_id == direction_id,
            MarginRun.settings_key == key,
        )

        def work() -> int:
            with self._session() as s, s.begin():
                existing = s.scalar(query)
                if existing is not None:
                    return existing
                # Two processes may start the same run at once: one row wins, both use it.
                conn = s.connection()
                conn.execute(
                    insert_or_skip(conn, MarginRun.__table__),
                    {
                        "dataset_id": dataset_id,
                        "direction_id": direction_id,
                        "settings": json.loads(json.dumps(settings, default=str)),
                        "settings_key": key,
                        "status": "running",
                        "created_at": utcnow(),
                    },
                )
                return s.scalar(query)

        return _retry(work)

    def _run(self, s: Session, run_id: int) -> MarginRun:
        run = s.get(MarginRun, run_id)
        if run is None:
            raise NotFoundError(f"no margin run {run_id}")
        return run

    def pairs_missing_margins(self, run_id: int, limit: int | None = None) -> list[PairText]:
        """Pairs of the run's data set that have no margin in it yet, in input order."""
        with self._session() as s:
            run = self._run(s, run_id)
            has_margin = exists().where(Margin.run_id == run_id, Margin.pair_id == Pair.id)
            query = (
                select(Pair.id, Pair.idx, Pair.prompt, Pair.chosen, Pair.rejected)
                .where(Pair.dataset_id == run.dataset_id, ~has_margin)
                .order_by(Pair.idx)
                .limit(limit)
            )
            return [PairText(*row) for row in s.execute(query)]

    def add_margins(self, run_id: int, pair_ids: Sequence[int], values: Sequence[float]) -> None:
        """Store computed margins (one transaction); pairs that already have one keep it.

        Raises:
            ValueError: Lengths differ, a value is not finite, a pair id repeats, or a pair
                is not in the run's data set.
        """
        ids = [int(p) for p in pair_ids]
        vals = [float(v) for v in values]
        if len(ids) != len(vals):
            raise ValueError(f"{len(ids)} pair ids but {len(vals)} values")
        if not all(math.isfinite(v) for v in vals):
            raise ValueError("margins must be finite numbers")
        if len(set(ids)) != len(ids):
            raise ValueError("a pair id appears twice")

        def work() -> None:
            with self._session() as s, s.begin():
                dataset_id = self._run(s, run_id).dataset_id
                # Core statements on the session's connection: the ORM's per-row
                # bookkeeping was half the time of a 100k-pair run (bench/margins_bench.py).
                conn = s.connection()
                for chunk in chunks(list(zip(ids, vals, strict=True)), BULK_IN_CHUNK):
                    chunk_ids = [p for p, _ in chunk]
                    found = set(
                        conn.scalars(
                            select(Pair.id).where(
                                Pair.id.in_(chunk_ids), Pair.dataset_id == dataset_id
                            )
                        )
                    )
                    if len(found) != len(chunk_ids):
                        bad = sorted(set(chunk_ids) - found)[:5]
                        raise ValueError(f"pairs {bad} are not in run {run_id}'s data set")
                rows = [{"run_id": run_id, "pair_id": p, "value": v} for p, v in zip(ids, vals)]
                # A pair that already has a margin keeps it: another writer of the same run
                # (a second process, a resumed job) computed it from the same vectors.
                statement = insert_or_skip(conn, Margin.__table__)
                for chunk_rows in chunks(rows, INSERT_CHUNK):
                    conn.execute(statement, list(chunk_rows))

        _retry(work)
        if len(ids) >= BIG_INSERT:
            _refresh_statistics(self.engine, ["margins"])

    def finish_run(self, run_id: int) -> None:
        """Mark a run finished (it stays resumable: more margins may still be added)."""

        def work() -> None:
            with self._session() as s, s.begin():
                run = self._run(s, run_id)
                run.status = "finished"
                run.finished_at = utcnow()

        _retry(work)
        _refresh_statistics(self.engine, ["margins", "reviews"])

    def list_runs(self, dataset_id: int | None = None) -> list[RunInfo]:
        """Margin runs, oldest first, optionally of one data set."""
        n_margins = (
            select(Margin.run_id, func.count().label("n")).group_by(Margin.run_id).subquery()
        )
        query = (
            select(MarginRun, func.coalesce(n_margins.c.n, 0), Dataset.n_pairs)
            .join(Dataset, Dataset.id == MarginRun.dataset_id)
            .outerjoin(n_margins, n_margins.c.run_id == MarginRun.id)
            .order_by(MarginRun.id)
        )
        if dataset_id is not None:
            query = query.where(MarginRun.dataset_id == dataset_id)
        with self._session() as s:
            return [
                RunInfo(
                    r.id,
                    r.dataset_id,
                    r.direction_id,
                    r.settings,
                    r.status,
                    n,
                    n_pairs,
                    r.created_at,
                    r.finished_at,
                )
                for r, n, n_pairs in s.execute(query)
            ]

    def get_run(self, run_id: int) -> RunInfo:
        """One margin run's listing entry."""
        for run in self.list_runs():
            if run.id == run_id:
                return run
        raise NotFoundError(f"no margin run {run_id}")

    def run_frame(
        self,
        run_id: int,
        annotator: str | None = None,
        admins: Collection[str] = frozenset(),
    ) -> pd.DataFrame:
        """Every pair of the run's data set with its margins and reviews, in input order.

        Reviews of the pair made in any run (or none) count, resolved by
        :func:`legend_core.review.policy.resolve` with ``admins`` as adjudicators. With
        ``annotator``, only that annotator's reviews count (blind review: their own view).

        Columns: pair_id, idx, prompt, chosen, rejected (as imported); computed_margin
        (relative to the imported chosen; NaN while missing); shown_margin (after reviews,
        relative to the imported chosen, as the Review page shows the pair);
        override_margin (the override that set it, same orientation; NaN if none);
        effective_margin (after reviews, relative to the *exported* chosen: negated when
        flipped); flipped (exports swap chosen and rejected); flagged; disputed;
        label_source; decided_by (names joined by ", "; "" if none); n_verdicts; n_reviews.
        """
        import pandas as pd

        with self._session() as s:
            run = self._run(s, run_id)
            rows = s.execute(
                select(Pair.id, Pair.idx, Pair.prompt, Pair.chosen, Pair.rejected, Margin.value)
                .outerjoin(Margin, and_(Margin.pair_id == Pair.id, Margin.run_id == run_id))
                .where(Pair.dataset_id == run.dataset_id)
                .order_by(Pair.idx)
            ).all()
            events = self._review_events(s, Pair.dataset_id == run.dataset_id, run, annotator)
        frame = pd.DataFrame(
            [tuple(r) for r in rows],
            columns=["pair_id", "idx", "prompt", "chosen", "rejected", "computed_margin"],
        )
        computed = frame["computed_margin"].to_numpy(dtype=np.float64)
        frame["computed_margin"] = computed
        n = len(frame)
        # Pairs without reviews keep the computed margin as imported: only reviewed pairs
        # go through the policy (a 100k-pair run has few of them).
        shown, override = computed.copy(), np.full(n, np.nan)
        flipped, flagged = np.zeros(n, bool), np.zeros(n, bool)
        disputed = np.zeros(n, bool)
        source = np.full(n, "none", dtype=object)
        decided = np.full(n, "", dtype=object)
        n_verdicts, n_reviews = np.zeros(n, np.int64), np.zeros(n, np.int64)
        position = {int(p): i for i, p in enumerate(frame["pair_id"])}
        for pair_id, pair_events in events.items():
            i = position[pair_id]
            r = resolve(pair_events, computed[i], admins)
            shown[i] = np.nan if r.shown_margin is None else r.shown_margin
            override[i] = np.nan if r.override is None else r.override
            flipped[i], flagged[i], disputed[i] = r.flipped, r.flagged, r.disputed
            source[i], decided[i] = r.label_source, ", ".join(r.decided_by)
            n_verdicts[i], n_reviews[i] = r.n_verdicts, r.n_reviews
        frame["shown_margin"] = shown
        frame["override_margin"] = override
        frame["effective_margin"] = np.where(flipped, -shown, shown)
        frame["flipped"] = flipped
        frame["flagged"] = flagged
        frame["disputed"] = disputed
        frame["label_source"] = source.astype(str)
        frame["decided_by"] = decided.astype(str)
        frame["n_verdicts"] = n_verdicts
        frame["n_reviews"] = n_reviews
        return frame

    # --- reviews -----------------------------------------------------------------------------

    @staticmethod
    def _review_events(
        s: Session, pair_filter: Any, run: MarginRun | None, annotator: str | None = None
    ) -> dict[int, list[ReviewEvent]]:
        """The reviews of the pairs matching ``pair_filter`` (by ``annotator``, if given),
        oldest first, as the policy reads them in ``run``.

        An override is on the run's scale when it was made without a run, or in a run of
        the same direction. Direction ids may be reused once deleted (SQLite), so a review
        older than the run's direction cannot have been made on it.
        """
        query = (
            select(
                Review.id,
                Review.pair_id,
                Review.annotator,
                Review.action,
                Review.value,
                Review.direction_id,
                Review.created_at,
            )
            .join(Pair, Pair.id == Review.pair_id)
            .where(pair_filter)
            .order_by(Review.id)
        )
        if annotator is not None:
            query = query.where(Review.annotator == annotator)
        since = None
        if run is not None:
            since = s.scalar(
                select(DirectionRow.created_at).where(DirectionRow.id == run.direction_id)
            )
        events: dict[int, list[ReviewEvent]] = {}
        for review_id, pair_id, name, action, value, direction_id, created in s.execute(query):
            on_scale = (
                action != "override"
                or run is None
                or direction_id is None
                or (
                    direction_id == run.direction_id
                    and (since is None or created is None or created >= since)
                )
            )
            events.setdefault(pair_id, []).append(
                ReviewEvent(review_id, name, action, value, on_scale)
            )
        return events

    def pair_state(
        self,
        pair_id: int,
        run_id: int | None = None,
        admins: Collection[str] = frozenset(),
        annotator: str | None = None,
    ) -> Resolution:
        """What a pair's reviews add up to (every run's reviews), read in ``run_id``: its
        computed margin and its direction's scale for overrides (without a run: no computed
        margin, every override on scale). With ``annotator``, that annotator's reviews only.
        """
        with self._session() as s:
            pair = s.get(Pair, pair_id)
            if pair is None:
                raise NotFoundError(f"no pair {pair_id}")
            run, computed = None, None
            if run_id is not None:
                run = self._run(s, run_id)
                if run.dataset_id != pair.dataset_id:
                    raise ValueError(f"pair {pair_id} is not in margin run {run_id}'s data set")
                computed = s.scalar(
                    select(Margin.value).where(Margin.run_id == run_id, Margin.pair_id == pair_id)
                )
            events = self._review_events(s, Pair.id == pair_id, run, annotator)
        return resolve(events.get(pair_id, []), computed, admins)

    def resolutions(
        self,
        run_id: int,
        admins: Collection[str] = frozenset(),
        annotator: str | None = None,
    ) -> dict[int, Resolution]:
        """What the reviews add up to for each reviewed pair of the run (pairs without a
        review are left out: they keep their label and computed margin). Reads reviews and
        margins only, no texts: cheap where :meth:`run_frame` is not."""
        with self._session() as s:
            run = self._run(s, run_id)
            events = self._review_events(s, Pair.dataset_id == run.dataset_id, run, annotator)
            computed: dict[int, float] = {}
            for chunk in chunks(sorted(events), IN_CHUNK):
                query = select(Margin.pair_id, Margin.value).where(
                    Margin.run_id == run_id, Margin.pair_id.in_(chunk)
                )
                computed.update((pair_id, value) for pair_id, value in s.execute(query))
        return {p: resolve(e, computed.get(p), admins) for p, e in events.items()}

    def annotator_state(self, pair_id: int, annotator: str) -> AnnotatorState:
        """One annotator's own current verdict and flag on a pair."""
        with self._session() as s:
            events = self._review_events(s, Pair.id == pair_id, None, annotator.strip())
        return own_state(events.get(pair_id, []), annotator.strip())

    def add_review(
        self,
        pair_id: int,
        annotator: str,
        action: str,
        value: float | None = None,
        note: str = "",
        run_id: int | None = None,
    ) -> int:
        """Append a review; returns its id. Lock contention is retried transparently.

        The meanings of the actions are :mod:`legend_core.review.policy`'s. ``run_id`` is
        the run the pair was seen in: the review counts in every run of the pair, and an
        override's number is read on the scale of that run's direction.

        Raises:
            ValueError: Unknown action, empty or over-long annotator, an override without a
                finite value, a value on another action, a pair outside the run's data set,
                or a withdraw without a verdict to withdraw.
        """
        value = check_action(action, value)
        if not isinstance(annotator, str) or not annotator.strip():
            raise ValueError("a review needs a non-empty annotator name")
        name = annotator.strip()
        if len(name) > 255:
            raise ValueError("an annotator name has at most 255 characters")
        direction_id = None
        with self._session() as s:
            pair = s.get(Pair, pair_id)
            if pair is None:
                raise NotFoundError(f"no pair {pair_id}")
            if run_id is not None:
                run = self._run(s, run_id)
                if run.dataset_id != pair.dataset_id:
                    raise ValueError(f"pair {pair_id} is not in margin run {run_id}'s data set")
                direction_id = run.direction_id
            if action == "withdraw" and not s.scalar(select(_has_verdict(pair_id, name))):
                raise ValueError(f"{name} has no verdict on pair {pair_id} to withdraw")

        def work() -> int:
            with self._session() as s, s.begin():
                review = Review(
                    pair_id=pair_id,
                    run_id=run_id,
                    direction_id=direction_id,
                    annotator=name,
                    action=action,
                    value=value,
                    note=note or "",
                    created_at=utcnow(),
                )
                s.add(review)
                s.flush()
                return review.id

        return _retry(work)

    def pair_history(self, pair_id: int) -> list[ReviewInfo]:
        """All reviews of a pair (every run), oldest first."""
        with self._session() as s:
            rows = s.scalars(select(Review).where(Review.pair_id == pair_id).order_by(Review.id))
            return [
                ReviewInfo(
                    r.id,
                    r.pair_id,
                    r.run_id,
                    r.annotator,
                    r.action,
                    r.value,
                    r.note,
                    r.created_at,
                    r.direction_id,
                )
                for r in rows
            ]

    def reviews_frame(self, dataset_id: int) -> pd.DataFrame:
        """Every review of a data set's pairs, oldest first (for agreement between annotators).

        Columns: id, pair_id, run_id, direction_id, annotator, action, value, note, created_at.
        """
        import pandas as pd

        query = (
            select(
                Review.id,
                Review.pair_id,
                Review.run_id,
                Review.direction_id,
                Review.annotator,
                Review.action,
                Review.value,
                Review.note,
                Review.created_at,
            )
            .join(Pair, Pair.id == Review.pair_id)
            .where(Pair.dataset_id == dataset_id)
            .order_by(Review.id)
        )
        with self._session() as s:
            rows = s.execute(query).all()
        columns = ["id", "pair_id", "run_id", "direction_id", "annotator", "action", "value"]
        columns += ["note", "created_at"]
        return pd.DataFrame(rows, columns=columns)

    @staticmethod
    def _reviewed(annotator: str | None = None) -> Any:
        """SQL condition on ``Margin``: someone (``annotator``, if given) holds a current
        verdict on its pair; reviews of every run count."""
        return _has_verdict(Margin.pair_id, annotator)

    def _queue_query(
        self,
        s: Session,
        run_id: int,
        order: str,
        unreviewed_only: bool,
        annotator: str | None = None,
    ) -> Select[tuple[int]]:
        """The run's pair ids in review order; ``disagreement`` and ``index`` walk an index,
        ``least_sure`` sorts (by ``|margin|``, no index can give that order)."""
        run = self._run(s, run_id)
        query = select(Margin.pair_id).where(Margin.run_id == run_id)
        if order == "disagreement":
            query = query.order_by(Margin.value, Margin.pair_id)
        elif order == "least_sure":
            query = query.order_by(func.abs(Margin.value), Margin.pair_id)
        elif order == "index":
            query = (
                query.join(Pair, Pair.id == Margin.pair_id)
                .where(Pair.dataset_id == run.dataset_id)
                .order_by(Pair.idx)
            )
        else:
            raise ValueError(
                f"unknown order {order!r}; use 'disagreement', 'least_sure' or 'index'"
            )
        if unreviewed_only:
            query = query.where(~self._reviewed(annotator))
        return query

    def review_queue(
        self,
        run_id: int,
        order: Literal["disagreement", "least_sure", "index"] = "disagreement",
        pair_ids: Sequence[int] | None = None,
        unreviewed_only: bool = False,
        annotator: str | None = None,
    ) -> list[int]:
        """Pair ids of the run (pairs with a computed margin) in review order.

        ``disagreement``: ascending computed margin, which puts negative margins first
        (most negative first) and then the rest by |margin| ascending; ties by pair id.
        ``least_sure``: ascending ``|margin|``, the pairs the direction is least sure of
        first, whichever side it leans to (a review there teaches a learned direction most:
        ``labelled.uncertainty``); ties by pair id. ``index``: input order. ``pair_ids``
        restricts the queue to those pairs.
        ``unreviewed_only`` leaves out pairs someone (``annotator``, if given) holds a
        current verdict on (a flag alone is no verdict).
        """
        with self._session() as s:
            query = self._queue_query(s, run_id, order, unreviewed_only, annotator)
            ids = list(s.scalars(query))
        if pair_ids is not None:
            wanted = set(pair_ids)
            ids = [p for p in ids if p in wanted]
        return ids

    def next_pair(
        self,
        run_id: int,
        after_pair_id: int | None = None,
        unreviewed_only: bool = True,
        order: Literal["disagreement", "least_sure", "index"] = "disagreement",
    ) -> int | None:
        """The pair after ``after_pair_id`` in :meth:`review_queue` order (the first if
        ``None`` or not in the run); ``None`` at the end. One query."""
        with self._session() as s:
            query = self._queue_query(s, run_id, order, unreviewed_only)
            if after_pair_id is not None and order == "least_sure":
                value = s.scalar(
                    select(Margin.value).where(
                        Margin.run_id == run_id, Margin.pair_id == after_pair_id
                    )
                )
                if value is not None:  # (|value|, pair_id) > (after's, after_pair_id)
                    size = func.abs(Margin.value)
                    query = query.where(
                        size >= abs(value),
                        or_(size > abs(value), Margin.pair_id > after_pair_id),
                    )
            elif after_pair_id is not None and order == "disagreement":
                value = s.scalar(
                    select(Margin.value).where(
                        Margin.run_id == run_id, Margin.pair_id == after_pair_id
                    )
                )
                if value is not None:  # (value, pair_id) > (after's value, after_pair_id)
                    query = query.where(
                        Margin.value >= value,
                        or_(Margin.value > value, Margin.pair_id > after_pair_id),
                    )
            elif after_pair_id is not None:
                after_idx = s.scalar(select(Pair.idx).where(Pair.id == after_pair_id))
                if after_idx is not None:
                    query = query.where(Pair.idx > after_idx)
            return s.scalar(query.limit(1))

    def review_counts(self, run_id: int, annotator: str | None = None) -> tuple[int, int]:
        """(reviewed, remaining) pairs among those with a computed margin in the run:
        reviewed means someone (``annotator``, if given) holds a current verdict on it."""
        with self._session() as s:
            self._run(s, run_id)
            total = s.scalar(select(func.count()).where(Margin.run_id == run_id)) or 0
            reviewed = (
                s.scalar(
                    select(func.count()).where(Margin.run_id == run_id, self._reviewed(annotator))
                )
                or 0
            )
        return reviewed, total - reviewed

    # --- embedding cache ---------------------------------------------------------------------
    # Vectors live in blocks (legend_core.data.block_cache: the format, reads and writes); these
    # methods pick the space and the transactions.

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
            return block_cache.cached(s.connection(), space_id, keys)

    def iter_embeddings(
        self, space: EmbeddingSpace, keys: Sequence[bytes], batch_size: int = 8_192
    ) -> Iterator[tuple[list[bytes], np.ndarray]]:
        """The cached vectors of those ``keys`` in the cache, as ``(keys, float32 matrix)``
        batches of at most ``batch_size`` rows, each key once, in no particular order."""
        with self._session() as s:
            space_id = self._space_id(s, space, create=False)
            if space_id is None or not keys:
                return
            yield from block_cache.vectors(s.connection(), space_id, keys, batch_size)

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
    ) -> block_cache.Projections:
        """Each key's projection ``h · v / ‖v‖`` on ``direction`` from the cached vectors,
        block by block, keeping no vector (the second phase of
        :func:`legend_core.method.pipeline.annotate_dataset`); see
        :func:`legend_core.data.block_cache.project`."""
        with self._session() as s:
            space_id = self._space_id(s, space, create=False)
            if space_id is None:
                space_id = -1  # no such space: nothing is found
            return block_cache.project(s.connection(), space_id, keys, direction)

    def _cache_write(self, work: Callable[[Any, int], T]) -> T:
        """Run ``work(connection, space_id)`` in a transaction of its own, again while the
        database reports contention or a concurrent writer took one of its keys first."""
        for attempt in range(20):
            try:
                return _retry(work)
            except block_cache.LostRace:
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
                    block_cache.forget(s.connection(), space_id, keys)

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
        for keys, matrix in block_cache.pack(items):

            def work(keys: list[bytes] = keys, matrix: np.ndarray = matrix) -> None:
                with self._session() as s, s.begin():
                    space_id = self._space_id(s, space, create=True)
                    block_cache.write_block(s.connection(), space_id, keys, matrix)

            self._cache_write(work)

    # --- overview ----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Row counts of every table (home page, and "nothing changed" checks in tests)."""
        tables = {
            "datasets": Dataset,
            "pairs": Pair,
            "contrast_sets": ContrastSet,
            "contrast_items": ContrastItemRow,
            "directions": DirectionRow,
            "runs": MarginRun,
            "margins": Margin,
            "reviews": Review,
            "embedding_spaces": EmbeddingSpaceRow,
            "embeddings": EmbeddingKey,  # one row per cached vector
        }
        with self._session() as s:
            return {
                name: int(s.scalar(select(func.count()).select_from(model)) or 0)
                for name, model in tables.items()
            }
