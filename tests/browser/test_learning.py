"""Issue 13 in a real browser: learn a direction from a data set's own labels in the Direction
lab, save it, annotate the same data set with it, and see the Evaluate page say the margins
are cross-fitted (no pair scored by a direction that learned from it)."""

from __future__ import annotations

import pytest

from legend_core.data.store import Store
from tests.browser.test_e2e import LONG, idle, nav, no_exceptions, shoot

pytestmark = pytest.mark.browser


def test_learn_from_labels_then_cross_fitted_margins(server, page, shots):
    from playwright.sync_api import expect

    page.goto(server.url)
    page.get_by_role("button", name="Load the demo").click()
    expect(page.get_by_text("Next: Build a direction")).to_be_visible()

    nav(page, "Direction lab")
    page.get_by_role("button", name="Build on 80 items").click()
    expect(page.get_by_role("button", name="Save direction")).to_be_visible(timeout=LONG)
    idle(page)
    learn = page.get_by_role("button", name="Learn from its labels")
    expect(learn).to_be_enabled()
    learn.click()
    save = page.get_by_role("button", name="Save learned direction")
    expect(save).to_be_visible(timeout=LONG)
    idle(page)
    no_exceptions(page)
    for metric in ("Layer", "Labels", "Agreement", "Shorter is safer"):
        expect(page.get_by_test_id("stMetricLabel").filter(has_text=metric).first).to_be_visible()
    shoot(page, shots / "13_learned_direction.png")
    save.click()
    expect(page.get_by_text("Saved as direction #1.")).to_be_visible()
    learned = Store(server.db_url).get_direction(1)
    assert learned.method == "probe" and learned.labels["n_labels"] > 0
    assert learned.labels.get("fold_of"), "a learned direction records its folds"

    nav(page, "Annotate and explore")  # the saved direction is the one picked
    page.get_by_role("button", name="Compute margins").click()
    expect(page.get_by_text("Agreement")).to_be_visible(timeout=LONG)
    idle(page)
    no_exceptions(page)
    run = Store(server.db_url).list_runs()[0]
    assert run.direction_id == 1
    assert run.settings["crossfit"]["pairs"] == learned.labels["n_labels"]

    nav(page, "Evaluate")
    expect(page.get_by_text("Cross-fitted margins:")).to_be_visible(timeout=LONG)
    idle(page)
    shoot(page, shots / "14_evaluate_crossfitted.png")
