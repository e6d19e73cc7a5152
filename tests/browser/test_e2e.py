"""End to end in a real browser: from an empty database to a downloaded JSONL that carries a
reviewer's override and flip. Screenshots of every page are saved for a human to look at."""

from __future__ import annotations

import json
import re

import pytest

from legend_core.config import DEFAULT_MARGIN_SCALE, DEFAULT_METHOD
from legend_core.data.exports import export_frame
from legend_core.data.store import Store
from legend_core.method.margins import scale

pytestmark = pytest.mark.browser

LONG = 120_000


def nav(page, name: str) -> None:
    """Switch page with the sidebar (the session, and so the review queue, is kept)."""
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=name).click()


def idle(page) -> None:
    """Wait until Streamlit has finished the current run."""
    page.wait_for_timeout(250)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stApp\"]')"
        "?.getAttribute('data-test-script-state') !== 'running'",
        timeout=LONG,
    )
    page.wait_for_timeout(250)


def no_exceptions(page) -> None:
    """No Python exception is shown on the page."""
    assert page.get_by_test_id("stException").count() == 0, page.get_by_test_id(
        "stException"
    ).first.inner_text()


def shoot(page, path) -> None:
    """Screenshot the whole page: Streamlit scrolls inside its main block, so the viewport
    is made as tall as that block for the shot."""
    height = page.evaluate(
        "() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
        " return m ? m.scrollHeight : document.body.scrollHeight; }"
    )
    no_exceptions(page)
    page.set_viewport_size({"width": 1600, "height": max(1000, min(int(height) + 40, 7000))})
    page.wait_for_timeout(700)
    page.screenshot(path=path)
    page.set_viewport_size({"width": 1600, "height": 1000})
    page.wait_for_timeout(300)


def drag_box(page, chart) -> None:
    """Drag a selection box over most of a Plotly chart's plotting area."""
    area = chart.locator(".nsewdrag").first
    box = area.bounding_box()
    assert box is not None
    x0, y0 = box["x"] + box["width"] * 0.02, box["y"] + box["height"] * 0.02
    x1, y1 = box["x"] + box["width"] * 0.98, box["y"] + box["height"] * 0.98
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=8)
    page.mouse.move(x1, y1, steps=8)
    page.mouse.up()


def test_demo_to_export_in_a_browser(server, page, shots, tmp_path):
    from playwright.sync_api import expect

    page.goto(server.url)
    load = page.get_by_role("button", name="Load the demo")
    expect(load).to_be_visible()
    shoot(page, shots / "01_home_empty.png")
    load.click()
    expect(page.get_by_text("Next: Build a direction")).to_be_visible()
    shoot(page, shots / "02_home_demo.png")

    page.get_by_label("Your name (recorded on every review)").fill("e2e reviewer")
    page.keyboard.press("Enter")
    idle(page)

    nav(page, "Data")
    expect(page.get_by_role("heading", name="Data sets")).to_be_visible()
    idle(page)
    shoot(page, shots / "03_data.png")

    nav(page, "Direction lab")
    build = page.get_by_role("button", name="Build on 80 items")
    expect(build).to_be_enabled()
    build.click()
    expect(page.get_by_role("button", name="Save direction")).to_be_visible(timeout=LONG)
    idle(page)
    page.get_by_role("tab", name="Map").click()
    page.wait_for_timeout(500)
    shoot(page, shots / "04_direction_lab.png")
    page.get_by_role("button", name="Save direction").click()
    expect(page.get_by_text("Saved as direction #1.")).to_be_visible()
    assert [d.name for d in Store(server.db_url).list_directions()] == [
        f"demo contrastive set · {DEFAULT_METHOD} · layer "
        + str(Store(server.db_url).get_direction(1).layer)
    ]

    nav(page, "Annotate and explore")
    page.get_by_role("button", name="Compute margins").click()
    expect(page.get_by_text("Agreement")).to_be_visible(timeout=LONG)
    idle(page)
    chart = page.get_by_role("tabpanel", name="Map").get_by_test_id("stPlotlyChart")
    expect(chart.locator(".nsewdrag").first).to_be_visible(timeout=LONG)
    drag_box(page, chart)
    idle(page)
    review_selected = page.get_by_role("button", name="selected pairs")
    expect(review_selected).to_be_enabled(timeout=LONG)
    label = review_selected.inner_text()
    n_selected = int(label.split("the ")[1].split(" selected")[0].replace(",", ""))
    assert n_selected >= 10, label
    shoot(page, shots / "05_explore_selection.png")
    review_selected.click()
    expect(page.get_by_text("pairs are in the review queue")).to_be_visible()

    nav(page, "Review")
    expect(page.get_by_text(f"Your selection ({n_selected:,} pairs)")).to_be_visible()
    expect(page.get_by_text(f"1 of {n_selected}", exact=True)).to_be_visible()
    idle(page)
    shoot(page, shots / "06_review.png")
    store = Store(server.db_url)
    run_id = store.list_runs()[0].id
    selection = store.review_queue(run_id)  # the whole queue, to find where we are
    assert selection
    margin = page.get_by_role("spinbutton", name="New margin")
    margin.fill("42.5")
    margin.press("Enter")
    idle(page)
    page.get_by_role("button", name="Override").click()
    expect(page.get_by_text(f"2 of {n_selected}", exact=True)).to_be_visible()
    idle(page)
    page.keyboard.press("f")  # the Flip shortcut
    expect(page.get_by_text(f"3 of {n_selected}", exact=True)).to_be_visible()
    idle(page)
    # Typing a note (letters that are also shortcuts) must not trigger any action.
    note = page.get_by_label("Note (optional, stored with the next action)")
    note.click()
    page.keyboard.type("a flagged pun, oops")
    note.press("Enter")
    idle(page)
    assert sum(len(store.pair_history(p)) for p in selection) == 2
    page.get_by_role("button", name="Flag").click()
    expect(page.get_by_text(f"4 of {n_selected}", exact=True)).to_be_visible()
    idle(page)
    shoot(page, shots / "07_review_after.png")
    page.keyboard.press("u")  # Next unreviewed: nobody has reviewed the 5th pair
    expect(page.get_by_text(f"5 of {n_selected}", exact=True)).to_be_visible()
    idle(page)
    # The whole run's queue (stepped through by the store, by keys) shows the same pair.
    page.get_by_text("All pairs", exact=True).click()
    expect(page.get_by_text(re.compile(r"^\d+ of 52$"))).to_be_visible()
    idle(page)
    reviews = {h.action: h for p in selection for h in store.pair_history(p)}
    assert set(reviews) == {"override", "flip", "flag"}
    assert reviews["flag"].note == "a flagged pun, oops"
    assert reviews["override"].value == 42.5
    assert {r.annotator for r in reviews.values()} == {"e2e reviewer"}

    nav(page, "Evaluate")
    expect(page.get_by_role("heading", name="Evaluate")).to_be_visible()
    idle(page)
    shoot(page, shots / "08_evaluate.png")

    nav(page, "Export")
    export = page.get_by_role("button", name="Export")
    expect(export).to_be_visible()
    export.click()
    download_button = page.get_by_role("button", name="Download JSONL")
    expect(download_button).to_be_visible()
    idle(page)
    shoot(page, shots / "09_export.png")
    with page.expect_download() as info:
        download_button.click()
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 51  # the flagged pair is left out (the default)
    # The file's margins are the default scale of the unscaled export, row for row.
    unscaled = export_frame(store, run_id, scale="none")
    texts = ["prompt", "chosen", "rejected"]
    assert [[r[k] for k in texts] for r in rows] == unscaled[texts].values.tolist()
    expected = scale(unscaled["margin"].to_numpy(), DEFAULT_MARGIN_SCALE).values
    assert [r["margin"] for r in rows] == pytest.approx(expected.tolist())

    overridden = store.get_pair(reviews["override"].pair_id)
    flipped = store.get_pair(reviews["flip"].pair_id)
    by_texts = {(r["prompt"], r["chosen"], r["rejected"]): r for r in unscaled.to_dict("records")}
    assert by_texts[(overridden.prompt, overridden.chosen, overridden.rejected)]["margin"] == 42.5
    swapped = by_texts[(flipped.prompt, flipped.rejected, flipped.chosen)]  # chosen <-> rejected
    computed = store.run_frame(run_id).set_index("pair_id").loc[flipped.id, "computed_margin"]
    assert swapped["margin"] == pytest.approx(-computed)
    assert (flipped.prompt, flipped.chosen, flipped.rejected) not in by_texts
