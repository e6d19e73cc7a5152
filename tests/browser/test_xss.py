"""Hostile data set text in a real browser: imported, mapped and reviewed, it shows as literal
characters; no script runs, no dialog opens, and nothing is fetched from elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from legend_core import config
from legend_core.data.formats import read_contrast_set
from legend_core.data.store import Store
from legend_core.method.encode import EncodeSettings
from legend_core.method.models import load_model
from legend_core.method.pipeline import build_direction
from legend_core.workflows.annotate import annotate_dataset
from tests.browser.test_e2e import idle, nav, shoot

pytestmark = pytest.mark.browser

HERE = Path(__file__).resolve().parent
WINDOW_PAYLOADS = HERE / "xss_window.jsonl"
ALERT_PAYLOADS = HERE.parent / "xss" / "xss_pairs.jsonl"
HOSTILE_NAME = '<img src=x onerror="window.__xss=1">![n](http://example.invalid/n.png)'


def upload(page, path: Path, name: str) -> None:
    page.locator("input[type=file]").first.set_input_files(str(path))
    idle(page)
    page.get_by_text("Detected format").wait_for()
    field = page.get_by_label("Name of the data set")
    field.fill(name)
    field.press("Enter")
    idle(page)
    page.get_by_role("button", name="Import", exact=True).click()
    idle(page)


def test_hostile_text_stays_text(server, page, shots, browser_model):
    from playwright.sync_api import expect

    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    outside: list[str] = []
    page.on(
        "request",
        lambda r: outside.append(r.url) if not r.url.startswith(server.url) else None,
    )

    page.goto(server.url)
    expect(page.get_by_role("button", name="Load the demo")).to_be_visible()
    page.get_by_label("Your name (recorded on every review)").fill("xss tester")
    page.keyboard.press("Enter")
    nav(page, "Data")
    upload(page, ALERT_PAYLOADS, "alerts")
    upload(page, WINDOW_PAYLOADS, HOSTILE_NAME)  # the last import is the one picked later
    shoot(page, shots / "01_data.png")
    store = Store(server.db_url)
    datasets = {d.name: d for d in store.list_datasets()}
    assert set(datasets) == {HOSTILE_NAME, "alerts"}

    # A direction named with a payload, and margins for both sets (in this process, on the
    # same tiny model the server uses; the server re-reads the database on every run).
    lm = load_model(str(browser_model), device="cpu", dtype="float32")
    items = read_contrast_set(config.DEMO_CONTRAST)[:16]
    result = build_direction(lm, items, EncodeSettings("alpaca", "mean"), name=HOSTILE_NAME)
    direction_id = store.add_direction(result.direction)
    for info in datasets.values():
        annotate_dataset(store, lm, info.id, direction_id)

    nav(page, "Annotate and explore")
    expect(page.get_by_text("Agreement")).to_be_visible()
    idle(page)
    chart = page.get_by_role("tabpanel", name="Map").get_by_test_id("stPlotlyChart")
    points = chart.locator(".scatterlayer .point")
    label = chart.locator(".hoverlayer")
    expect(points.first).to_be_attached()
    hovered = []
    for i in range(min(points.count(), 12)):
        points.nth(i).hover(force=True)
        page.wait_for_timeout(150)
        hovered.append(label.text_content() or "")
        assert "<img" not in label.inner_html()
    shoot(page, shots / "02_explore.png")
    assert any("pair" in h for h in hovered), hovered

    nav(page, "Review")
    expect(page.get_by_role("button", name="Accept")).to_be_enabled()
    seen = ""
    for _ in range(12):  # walk the whole queue of the hostile set
        idle(page)
        seen += page.get_by_test_id("stMain").inner_text()
        page.get_by_role("button", name="Accept").click()
    shoot(page, shots / "03_review.png")
    for literal in (
        "<script>window.__xss=1</script>",
        '<img src=x onerror="window.__xss=1">',
        "![pixel](http://example.invalid/p.png)",
        "[click here](javascript:window.__xss=1)",
        "**bold** <b>b</b>",
        ":material/warning: :red[red]",
    ):
        assert literal in seen, literal
    assert store.review_counts(store.list_runs(datasets[HOSTILE_NAME].id)[0].id)[0] >= 11

    nav(page, "Export")
    page.get_by_role("button", name="Export").click()
    expect(page.get_by_role("button", name="Download JSONL")).to_be_visible()
    idle(page)
    page.get_by_text("Manifest (JSON)", exact=True).click()
    manifest = page.get_by_test_id("stJson").inner_text()
    assert "window.__xss=1" in manifest  # the data set's name, as text
    for name in ("Home", "Direction lab", "Data"):
        nav(page, name)
        idle(page)
    shoot(page, shots / "04_data_again.png")

    assert page.evaluate("() => window.__xss") is None
    assert dialogs == []
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("iframe[src^='javascript']").count() == 0
    assert not [u for u in outside if "example.invalid" in u], outside
