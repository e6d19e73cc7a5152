"""The review policy: what a pair's reviews add up to. Written once, here; pure Python.

The store, the agreement statistics, the exports, the command line and the pages all read
reviews through this module. It knows nothing of databases, models or Streamlit.

**Verdicts** are absolute and about the pair *as imported* (the Review page shows it so):

- ``accept``: the imported chosen response is the safer one; the computed margin stands.
- ``flip``: the imported rejected response is the safer one. Pressing Flip twice is still
  flipped: a verdict is never a toggle.
- ``override V``: a margin typed in the orientation shown (as imported); its sign says which
  response is safer (``V >= 0`` sides with accept, ``V < 0`` with flip).
- ``withdraw``: takes back the annotator's verdict (their flag state stays).

Each annotator's latest verdict replaces their earlier ones. ``flag`` / ``unflag`` are apart
from verdicts: a flag asks for a second look and says nothing about which response is safer.

**Several annotators** (one policy):

1. An admin's verdict is an adjudication: the latest verdict given by any admin decides
   (``label_source = "admin"``).
2. Otherwise the annotators' current verdicts vote, by side (as imported vs swapped): one
   verdict is ``single``, all on one side ``unanimous``, more on one side ``majority``.
3. A tie is ``disputed``: shown on the Review page, left out of exports unless asked for
   (then exported as imported with the computed margin, and marked).
4. No verdict: ``none``; the pair keeps its imported label and computed margin.

**The margin.** Relative to the imported chosen response it is: the deciding admin's
override; else the median of the overrides on the winning side; else the computed margin.
Exports swap chosen and rejected when the winning side is flip, and write the margin
relative to the *exported* chosen (negated when swapped), so a positive exported margin
always means "the direction or the reviewers call the exported chosen the safer one".

An override's number is a margin on the scale of the direction it was typed on: it is used
as the margin only in runs of that direction (or everywhere when it was made without a
run); in a run of another direction it counts for its side only.

**Flags.** If any admin flagged or unflagged the pair, the latest admin flag state decides;
otherwise the pair is flagged when any annotator's latest flag state is a flag.

**History.** Reviews stored before this policy are read with these meanings: an old
sequence flip, flip by one annotator (once a toggle) now reads as flipped.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

#: Every review action, in the order a user meets them.
ACTIONS: tuple[str, ...] = ("accept", "override", "flip", "flag", "unflag", "withdraw")
#: Actions that are (or replace) a verdict about which response is safer.
VERDICT_ACTIONS: tuple[str, ...] = ("accept", "flip", "override")
#: Actions about the pair's flag only.
FLAG_ACTIONS: tuple[str, ...] = ("flag", "unflag")

LabelSource = Literal["admin", "unanimous", "majority", "single", "disputed", "none"]
#: Where a pair's exported label comes from (provenance column ``label_source``).
LABEL_SOURCES: tuple[str, ...] = ("admin", "unanimous", "majority", "single", "disputed", "none")

#: The policy in a few sentences, for the Review page's help (one per bullet) and the export
#: manifest (joined): the same words as README's "Reviews" section.
POLICY_POINTS: tuple[str, ...] = (
    "Verdicts are about the pair as imported. Accept: the imported chosen is safer, the "
    "computed margin stands. Flip: the rejected is safer (flipping twice is still "
    "flipped). Override: a margin in the orientation shown; its sign says which is safer. "
    "Withdraw: takes your verdict back. Your latest verdict replaces your earlier ones.",
    "An admin's latest verdict decides. Otherwise the annotators' verdicts vote by side "
    "(as imported or swapped); a tie is disputed, left out of exports unless asked for.",
    "The margin is the deciding admin's override, else the median of the overrides on the "
    "winning side, else the computed margin. Exports swap flipped pairs and write the "
    "margin relative to the exported chosen.",
    "Flags are apart from verdicts: an admin's latest flag or unflag holds; otherwise a "
    "pair is flagged while anyone's latest flag is up.",
    "Reviews belong to the pair and count in every run of it; an override's number counts "
    "on the scale of the direction it was typed on, elsewhere only its sign.",
)
POLICY_TEXT = " ".join(POLICY_POINTS)


def check_action(action: str, value: float | None) -> float | None:
    """Validate one review's action and value; returns the value to store.

    Raises:
        ValueError: Unknown action, an override without a finite value, or a value on
            another action.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    if action == "override":
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ValueError("an override needs a finite margin value")
        return number
    if value is not None:
        raise ValueError(f"a {action!r} review takes no value")
    return None


@dataclass(frozen=True)
class ReviewEvent:
    """One stored review, as the policy reads it.

    Attributes:
        review_id: Increasing with time (the store's primary key): orders the reviews.
        annotator: Who.
        action: One of :data:`ACTIONS`.
        value: The override's margin (imported orientation), else None.
        on_scale: Whether an override's number is on the scale of the run being read
            (see the module docstring); ignored for other actions.
    """

    review_id: int
    annotator: str
    action: str
    value: float | None = None
    on_scale: bool = True


@dataclass(frozen=True)
class Verdict:
    """One annotator's current verdict on a pair."""

    annotator: str
    action: str
    value: float | None
    on_scale: bool
    review_id: int

    @property
    def swapped(self) -> bool:
        """Whether this verdict calls the imported rejected response the safer one."""
        if self.action == "override":
            return self.value is not None and self.value < 0
        return self.action == "flip"

    @property
    def margin(self) -> float | None:
        """The override's number when it is on this run's scale, else None."""
        return self.value if self.action == "override" and self.on_scale else None


@dataclass(frozen=True)
class AnnotatorState:
    """What one annotator's reviews of one pair add up to.

    Attributes:
        annotator: Who.
        verdict: Their current verdict (None: never given, or withdrawn).
        flagged: Their latest flag state (None: never flagged nor unflagged).
        n_reviews: All their reviews of the pair.
    """

    annotator: str
    verdict: Verdict | None = None
    flagged: bool | None = None
    n_reviews: int = 0

    def describe(self) -> str:
        """The verdict in a few words, for the Review page ("none" when there is none)."""
        v = self.verdict
        if v is None:
            return "none"
        if v.action == "override":
            return f"override {v.value:+.3f}"
        return v.action


def annotator_states(events: Iterable[ReviewEvent]) -> dict[str, AnnotatorState]:
    """Each annotator's state from the reviews of ONE pair (any order; read oldest first)."""
    verdicts: dict[str, Verdict | None] = {}
    flags: dict[str, bool] = {}
    counts: dict[str, int] = {}
    for e in sorted(events, key=lambda e: e.review_id):
        counts[e.annotator] = counts.get(e.annotator, 0) + 1
        if e.action in VERDICT_ACTIONS:
            value = None if e.value is None else float(e.value)
            verdicts[e.annotator] = Verdict(e.annotator, e.action, value, e.on_scale, e.review_id)
        elif e.action == "withdraw":
            verdicts[e.annotator] = None
        elif e.action in FLAG_ACTIONS:
            flags[e.annotator] = e.action == "flag"
        else:
            raise ValueError(f"review {e.review_id}: unknown action {e.action!r}")
    return {
        name: AnnotatorState(name, verdicts.get(name), flags.get(name), n)
        for name, n in counts.items()
    }


@dataclass(frozen=True)
class Resolution:
    """What a pair's reviews add up to under the policy.

    Attributes:
        label_source: One of :data:`LABEL_SOURCES`.
        flipped: Exports swap chosen and rejected.
        shown_margin: The margin relative to the imported chosen (as the Review page shows
            the pair); None when there is neither a computed margin nor an override.
        override: The override number that set the margin (imported orientation), else None.
        flagged: See the module docstring.
        decided_by: The admin who decided, or the annotators on the winning side (sorted).
        n_verdicts: Current verdicts (one per annotator at most).
        n_reviews: All reviews of the pair.
    """

    label_source: str = "none"
    flipped: bool = False
    shown_margin: float | None = None
    override: float | None = None
    flagged: bool = False
    decided_by: tuple[str, ...] = ()
    n_verdicts: int = 0
    n_reviews: int = 0
    annotators: Mapping[str, AnnotatorState] = field(default_factory=dict, compare=False)

    @property
    def disputed(self) -> bool:
        """A tie between annotators, no admin verdict."""
        return self.label_source == "disputed"

    @property
    def margin(self) -> float | None:
        """The exported margin: relative to the exported chosen (negated when flipped)."""
        if self.shown_margin is None:
            return None
        return -self.shown_margin if self.flipped else self.shown_margin

    @property
    def reviewed(self) -> bool:
        """Whether anyone holds a verdict on the pair."""
        return self.n_verdicts > 0


def _finite(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def resolve(
    events: Iterable[ReviewEvent],
    computed: float | None,
    admins: Collection[str] = frozenset(),
) -> Resolution:
    """Resolve one pair's reviews under the policy (see the module docstring).

    Args:
        events: The pair's reviews, any order.
        computed: The run's computed margin (imported orientation); None or NaN if missing.
        admins: Annotator names whose verdicts adjudicate.
    """
    events = sorted(events, key=lambda e: e.review_id)
    states = annotator_states(events)
    computed = _finite(computed)
    flagged = _latest_admin_flag(events, admins)
    if flagged is None:
        flagged = any(s.flagged for s in states.values())
    verdicts = [s.verdict for s in states.values() if s.verdict is not None]
    base = dict(flagged=flagged, n_verdicts=len(verdicts), n_reviews=len(events))
    base["annotators"] = states
    admin_verdicts = [v for v in verdicts if v.annotator in admins]
    if admin_verdicts:
        v = max(admin_verdicts, key=lambda v: v.review_id)
        margin = v.margin if v.margin is not None else computed
        return Resolution("admin", v.swapped, margin, v.margin, decided_by=(v.annotator,), **base)
    if not verdicts:
        return Resolution("none", False, computed, None, **base)
    swapped = [v for v in verdicts if v.swapped]
    kept = [v for v in verdicts if not v.swapped]
    if len(swapped) == len(kept):
        return Resolution("disputed", False, computed, None, **base)
    winners = swapped if len(swapped) > len(kept) else kept
    if len(verdicts) == 1:
        source = "single"
    elif len(winners) == len(verdicts):
        source = "unanimous"
    else:
        source = "majority"
    numbers = [v.margin for v in winners if v.margin is not None]
    override = float(statistics.median(numbers)) if numbers else None
    margin = override if override is not None else computed
    names = tuple(sorted(v.annotator for v in winners))
    return Resolution(source, winners is swapped, margin, override, decided_by=names, **base)


def _latest_admin_flag(events: list[ReviewEvent], admins: Collection[str]) -> bool | None:
    """The flag state set by the latest admin flag/unflag, or None when no admin set one."""
    for e in reversed(events):
        if e.action in FLAG_ACTIONS and e.annotator in admins:
            return e.action == "flag"
    return None


def own_state(events: Iterable[ReviewEvent], annotator: str) -> AnnotatorState:
    """One annotator's state on a pair (blind review: all they may see before a verdict)."""
    mine = [e for e in events if e.annotator == annotator]
    return annotator_states(mine).get(annotator, AnnotatorState(annotator))
