"""What the store hands out: plain frozen records, no database objects."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


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
        """The space of a margin run, from its stored settings
        (see ``workflows.annotate.run_settings``)."""
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
class PairKeys:
    """Stored pairs as the embedding cache knows them: ids, in input order, and the cache
    keys of their texts (``util.text_key`` of prompt and chosen, of prompt and rejected)."""

    ids: list[int]
    chosen: list[bytes]
    rejected: list[bytes]

    def __len__(self) -> int:
        return len(self.ids)


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


@dataclass(frozen=True)
class QueueStep:
    """Where one pair stands in a review queue: what the Review page shows for it.

    ``current`` is the pair asked for, or the queue's first pair when that one is not in the
    queue; ``position`` counts from 0. ``previous`` and ``next`` are None at the ends.
    ``next_unreviewed`` is the first pair after ``current`` (wrapping around to the front)
    that nobody (the annotator asked about, if any) holds a current verdict on, never
    ``current`` itself; None when there is none.
    """

    current: int
    position: int
    size: int
    previous: int | None
    next: int | None
    next_unreviewed: int | None
    #: (reviewed, remaining) in the run, as :meth:`Store.review_counts` gives them, read
    #: with the step (one look at the reviews for both); None for a listed queue's step.
    counts: tuple[int, int] | None = field(default=None, compare=False)
