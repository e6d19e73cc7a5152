"""Login mode in a real browser: annotators cannot reach admin actions, reviews carry the
signed-in name, and blind review hides others' verdicts until you have reviewed."""

from __future__ import annotations

import re

import numpy as np
import pytest

from legend_core.app.auth import add_user, set_blind_review
from legend_core.data.store import Store
from legend_core.method.directions import Direction
from legend_core.types import PreferencePair
from tests.browser.conftest import Server
from tests.browser.test_e2e import idle, nav, no_exceptions, shoot

pytestmark = pytest.mark.browser


@pytest.fixture
def team(tmp_path, browser_model):
    """A database with one annotated data set, a users file, and the app in login mode."""
    db = f"sqlite:///{tmp_path / 'team.db'}"
    with Store(db) as store:
        pairs = [PreferencePair(f"question {i}", f"safe {i}", f"unsafe {i}") for i in range(5)]
        dataset_id = store.add_dataset("team pairs", pairs)
        direction = Direction(np.ones(8, np.float32), "m", 1, "mean", "alpaca", "mean_diff")
        run_id = store.start_run(dataset_id, store.add_direction(direction), {})
        ids = [p.id for p in store.pairs_missing_margins(run_id)]
        store.add_margins(run_id, ids, [-0.5, -0.1, 0.2, 0.3, 0.9])
        store.add_review(ids[0], "ada", "override", value=7.25, run_id=run_id)
    users = tmp_path / "users.json"
    add_user(users, "ada", "ada-password", "admin", name="Ada")
    add_user(users, "ben", "ben-password", "annotator", name="Ben")
    set_blind_review(users, True)
    server = Server(db, browser_model, tmp_path / "server.log", {"LEGEND_AUTH_FILE": str(users)})
    yield server, db, ids
    server.stop()


def sign_in(page, url: str, username: str, password: str) -> None:
    page.goto(url)
    page.get_by_label("Username").fill(username)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    idle(page)


def test_annotator_cannot_delete_and_reviews_carry_the_login(team, page, shots):
    from playwright.sync_api import expect

    server, db, ids = team
    sign_in(page, server.url, "ben", "wrong-password")
    expect(page.get_by_text("Wrong username or password.")).to_be_visible()
    shoot(page, shots / "01_sign_in_refused.png")

    sign_in(page, server.url, "ben", "ben-password")
    expect(page.get_by_text("Ben (ben, annotator)")).to_be_visible()
    assert page.get_by_label("Your name (recorded on every review)").count() == 0

    nav(page, "Data")
    idle(page)
    expect(page.get_by_text("Only an admin can delete data sets.")).to_be_visible()
    assert page.get_by_text("Delete this data set").count() == 0
    shoot(page, shots / "02_data_as_annotator.png")
    nav(page, "Direction lab")
    idle(page)
    expect(page.get_by_text("Only an admin can delete directions.")).to_be_visible()

    nav(page, "Review")
    idle(page)
    # Blind review: ada's override of the first pair is not shown to ben yet.
    expect(page.get_by_text("others' reviews of this pair show once")).to_be_visible()
    assert page.get_by_text("7.25").count() == 0
    # Nor does the counter tell that ada reviewed a pair; the agreement table is hers.
    expect(page.get_by_text("0 reviewed by you · 5 remaining")).to_be_visible()
    page.get_by_text("Agreement between annotators").click()
    expect(page.get_by_text("Blind review is on: agreement is for admins.")).to_be_visible()
    shoot(page, shots / "03_review_blind.png")
    page.get_by_role("button", name="Accept").click()
    idle(page)
    no_exceptions(page)

    with Store(db) as store:
        history = store.pair_history(ids[0])
    assert [(h.annotator, h.action) for h in history] == [("ada", "override"), ("ben", "accept")]

    expect(page.get_by_text("1 reviewed by you · 4 remaining")).to_be_visible()
    page.get_by_role("button", name="Previous").click()
    idle(page)
    # Having reviewed it, ben now sees ada's override as the effective margin.
    expect(page.get_by_text("7.250")).to_be_visible()
    assert page.get_by_text("others' reviews of this pair show once").count() == 0
    shoot(page, shots / "04_review_after.png")

    # Exports apply everyone's reviews: under blind review they are for admins.
    nav(page, "Export")
    idle(page)
    expect(page.get_by_text("exports apply everyone's reviews")).to_be_visible()
    assert page.get_by_role("button", name=re.compile(r"^Export [\d,]+ rows")).count() == 0


@pytest.fixture
def flagged_by_another(tmp_path, browser_model):
    """Blind review on; annotator cy has flagged the first pair of the queue (no verdict)."""
    db = f"sqlite:///{tmp_path / 'flags.db'}"
    with Store(db) as store:
        pairs = [PreferencePair(f"question {i}", f"safe {i}", f"unsafe {i}") for i in range(5)]
        dataset_id = store.add_dataset("flag pairs", pairs)
        direction = Direction(np.ones(8, np.float32), "m", 1, "mean", "alpaca", "mean_diff")
        run_id = store.start_run(dataset_id, store.add_direction(direction), {})
        ids = [p.id for p in store.pairs_missing_margins(run_id)]
        store.add_margins(run_id, ids, [-0.5, -0.1, 0.2, 0.3, 0.9])
        store.add_review(ids[0], "cy", "flag", note="cy was here", run_id=run_id)
    users = tmp_path / "users.json"
    add_user(users, "ben", "ben-password", "annotator", name="Ben")
    add_user(users, "cy", "cy-password-1", "annotator", name="Cy")
    set_blind_review(users, True)
    server = Server(db, browser_model, tmp_path / "server.log", {"LEGEND_AUTH_FILE": str(users)})
    yield server, db, ids
    server.stop()


def test_blind_review_does_not_leak_another_annotators_flag(flagged_by_another, page, shots):
    """The Flag button is labelled from the annotator's own flag: "Unflag" would tell ben
    that someone flagged the pair, and pressing G would then remove cy's flag."""
    from playwright.sync_api import expect

    server, db, ids = flagged_by_another
    sign_in(page, server.url, "ben", "ben-password")
    nav(page, "Review")
    idle(page)
    expect(page.get_by_text("1 of 5", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name=re.compile(r"^Flag\b"))).to_be_visible()
    assert page.get_by_role("button", name="Unflag").count() == 0
    assert page.get_by_text("cy was here").count() == 0
    expect(page.get_by_text("0 reviewed by you · 5 remaining")).to_be_visible()
    shoot(page, shots / "01_blind_flag_hidden.png")

    page.get_by_role("heading", name="Review").click()  # keys go to the page, not a field
    page.keyboard.press("g")  # the Flag shortcut
    expect(page.get_by_text("2 of 5", exact=True)).to_be_visible()
    idle(page)
    no_exceptions(page)
    with Store(db) as store:
        history = [(h.annotator, h.action) for h in store.pair_history(ids[0])]
        assert history == [("cy", "flag"), ("ben", "flag")]  # flagged, not unflagged
        assert store.pair_state(ids[0]).flagged

    # Back on the pair: ben's own flag is up now, so his button offers to take it down;
    # a flag is no verdict, so cy's review stays hidden.
    page.get_by_role("button", name="Previous").click()
    idle(page)
    expect(page.get_by_role("button", name=re.compile(r"^Unflag\b"))).to_be_visible()
    assert page.get_by_text("cy was here").count() == 0
    expect(page.get_by_text("Blind review: others' reviews of this pair show once")).to_be_visible()
    shoot(page, shots / "02_blind_own_flag.png")


def test_admin_sees_delete(team, page, shots):
    from playwright.sync_api import expect

    server, _, _ = team
    sign_in(page, server.url, "ada", "ada-password")
    nav(page, "Data")
    idle(page)
    expect(page.get_by_text("Delete this data set")).to_be_visible()
    shoot(page, shots / "01_data_as_admin.png")
