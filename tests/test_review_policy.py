"""The review policy on its own: verdicts, several annotators, admins, flags, margins."""

from __future__ import annotations

import math

import pytest

from legend_core.data.schema import Review
from legend_core.review.policy import (
    ACTIONS,
    LABEL_SOURCES,
    ReviewEvent,
    annotator_states,
    check_action,
    own_state,
    resolve,
)


def events(*rows: tuple) -> list[ReviewEvent]:
    """ReviewEvents numbered in order from (annotator, action[, value[, on_scale]])."""
    return [ReviewEvent(i, *row) for i, row in enumerate(rows, 1)]


def test_the_database_allows_exactly_the_policys_actions() -> None:
    (check,) = [c for c in Review.__table__.constraints if c.name == "ck_reviews_action"]
    allowed = str(check.sqltext).split("(")[1].rstrip(")").replace("'", "").split(", ")
    assert tuple(allowed) == ACTIONS


def test_one_annotator_latest_verdict_wins() -> None:
    assert resolve(events(("ann", "flip"), ("ann", "flip")), 2.0).flipped  # no toggle
    r = resolve(events(("ann", "flip"), ("ann", "accept")), 2.0)
    assert not r.flipped and r.margin == 2.0 and r.label_source == "single"
    r = resolve(events(("ann", "override", 0.5), ("ann", "flip")), 2.0)
    assert r.flipped and r.margin == -2.0 and r.override is None
    r = resolve(events(("ann", "flip"), ("ann", "override", 0.5)), 2.0)
    assert not r.flipped and r.margin == 0.5 and r.override == 0.5


def test_an_overrides_sign_says_which_response_is_safer() -> None:
    r = resolve(events(("ann", "override", -3.0)), 2.0)
    # Typed as shown (as imported): -3 means the rejected is safer by 3; exported swapped,
    # and relative to the exported chosen the margin is +3.
    assert r.flipped and r.shown_margin == -3.0 and r.margin == 3.0
    r = resolve(events(("ann", "override", 0.0)), -2.0)
    assert not r.flipped and r.margin == 0.0  # zero sides with the imported label


def test_withdraw_removes_only_the_verdict() -> None:
    r = resolve(events(("ann", "flip"), ("ann", "flag"), ("ann", "withdraw")), 2.0)
    assert r.label_source == "none" and not r.flipped and r.flagged and r.n_verdicts == 0
    r = resolve(events(("ann", "flip"), ("ann", "withdraw"), ("ann", "accept")), 2.0)
    assert r.label_source == "single" and not r.flipped


def test_majority_unanimous_and_ties() -> None:
    both_flip = resolve(events(("a", "flip"), ("b", "flip")), 1.0)
    assert both_flip.label_source == "unanimous" and both_flip.flipped
    assert both_flip.decided_by == ("a", "b") and both_flip.margin == -1.0
    tie = resolve(events(("a", "flip"), ("b", "accept")), 1.0)
    assert tie.disputed and tie.label_source == "disputed" and not tie.flipped
    assert tie.margin == 1.0 and tie.decided_by == ()
    majority = resolve(
        events(("a", "override", -2.0), ("b", "flip"), ("c", "override", -4.0), ("d", "accept")),
        1.0,
        admins=(),
    )
    assert majority.label_source == "majority" and majority.flipped
    assert majority.decided_by == ("a", "b", "c")
    # The median of the overrides on the winning side; relative to the exported chosen.
    assert majority.override == -3.0 and majority.margin == 3.0


def test_an_admin_decides() -> None:
    rows = (("a", "flip"), ("b", "flip"), ("boss", "accept"))
    assert resolve(events(*rows), 1.0).label_source == "majority"
    r = resolve(events(*rows), 1.0, admins={"boss"})
    assert (r.label_source, r.decided_by, r.flipped, r.margin) == ("admin", ("boss",), False, 1.0)
    # Two admins: the latest admin verdict.
    r = resolve(events(("boss", "accept"), ("chief", "override", -5.0)), 1.0, {"boss", "chief"})
    assert r.decided_by == ("chief",) and r.flipped and r.margin == 5.0
    # An admin who withdrew no longer decides.
    r = resolve(events(("a", "flip"), ("boss", "accept"), ("boss", "withdraw")), 1.0, {"boss"})
    assert r.label_source == "single" and r.flipped


def test_flags() -> None:
    assert resolve(events(("a", "flag"), ("b", "unflag")), 1.0).flagged
    assert not resolve(events(("a", "flag"), ("a", "unflag")), 1.0).flagged
    rows = events(("a", "flag"), ("boss", "unflag"))
    assert not resolve(rows, 1.0, admins={"boss"}).flagged
    assert resolve(events(("boss", "unflag"), ("a", "flag")), 1.0, {"boss"}).flagged is False


def test_overrides_off_the_runs_scale_count_by_side() -> None:
    r = resolve(events(("a", "override", -7.0, False)), 2.0)
    assert r.flipped and r.override is None and r.margin == -2.0


def test_missing_computed_margin() -> None:
    assert resolve([], None).margin is None
    assert resolve([], math.nan).margin is None
    assert resolve(events(("a", "override", 1.5)), None).margin == 1.5
    assert resolve(events(("a", "flip")), None).margin is None


def test_own_state_and_validation() -> None:
    rows = events(("a", "flag"), ("b", "override", 2.0), ("a", "flip"), ("a", "unflag"))
    mine = own_state(rows, "a")
    assert mine.verdict.action == "flip" and mine.flagged is False and mine.n_reviews == 3
    assert mine.describe() == "flip" and own_state(rows, "b").describe() == "override +2.000"
    assert own_state(rows, "c").describe() == "none"
    assert set(annotator_states(rows)) == {"a", "b"}
    assert check_action("override", "1.5") == 1.5
    for action, value in [("like", None), ("override", None), ("override", math.inf)]:
        with pytest.raises(ValueError):
            check_action(action, value)
    with pytest.raises(ValueError, match="takes no value"):
        check_action("withdraw", 1.0)
    assert set(LABEL_SOURCES) >= {"admin", "majority", "unanimous", "single", "none"}
