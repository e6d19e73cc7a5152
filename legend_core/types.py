"""Plain records shared by every module: preference pairs and contrastive items."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class PreferencePair:
    """One preference pair: a prompt, the response people preferred, and the other one.

    ``meta`` keeps the original row's fields that are not the three texts (ids, labels,
    categories), so nothing of an imported file is lost.
    """

    prompt: str
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ContrastItem:
    """One contrastive example: a harmful request with a harmful and a harmless response."""

    instruction: str
    harmful: str
    harmless: str


class TextPair(Protocol):
    """Anything with a preference pair's three texts: a :class:`PreferencePair`, a stored
    pair (``data.store.PairText``), a row of a table. The method reads pairs through this,
    so it never names the store's records."""

    @property
    def prompt(self) -> str: ...

    @property
    def chosen(self) -> str: ...

    @property
    def rejected(self) -> str: ...
