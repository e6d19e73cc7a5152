"""Every URL in a real browser, as the launcher serves the app: in login mode a signed-out
visitor sees the sign-in form and nothing else, and signing in from a deep link lands on that
page; without login mode every page works as the first thing a browser opens, with the
shared sidebar and proper page names; an annotator has no server powers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from legend_core.app.auth import add_user
from legend_core.data.store import Store
from legend_core.method.directions import Direction
from legend_core.types import PreferencePair
from tests.browser.conftest import Server
from tests.browser.test_e2e import idle, nav, no_exceptions, shoot

pytestmark = pytest.mark.browser

# Each page's URL and its heading.
URLS = {
    "/": "Legend Studio",
    "/data": "Data",
    "/directions": "Direction lab",
    "/explore": "Annotate and explore",
    "/review": "Review",
    "/evaluate": "Evaluate",
    "/export": "Export",
}
NAV = ["Home", "Data", "Direction lab", "Annotate and explore", "Review", "Evaluate", "Export"]
# What must never show signed out: page names, page files, data set text, the sidebar's fields.
HIDDEN = [
    *NAV[1:],
    "_common",
    "app_pages",
    "pages",
    "team pairs",
    "question 0",
    "unsafe 0",
    "Your name",
    "Model in use",
    "Blind review",
]


def _database(folder: Path) -> str:
    db = f"sqlite:///{folder / 'team.db'}"
    with Store(db) as store:
        pairs = [PreferencePair(f"question {i}", f"safe {i}", f"unsafe {i}") for i in range(4)]
        dataset_id = store.add_dataset("team pairs", pairs)
        direction = Direction(np.ones(8, np.float32), "m", 1, "mean", "alpaca", "mean_diff")
        settings = {
            "model": "m",
            "layer": 1,
            "template": "alpaca",
            "pooling": "mean",
            "max_length": 64,
        }
        run_id = store.start_run(dataset_id, store.add_direction(direction), settings)
        ids = [p.id for p in store.pairs_missing_margins(run_id)]
        store.add_margins(run_id, ids, [-0.5, -0.1, 0.2, 0.9])
        store.finish_run(run_id)
    return db


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory, browser_model: Path) -> Iterator[Server]:
    """The app in login mode (an admin, an annotator), with a data folder."""
    folder = tmp_path_factory.mktemp("access-team")
    users = folder / "users.json"
    add_user(users, "ada", "ada-password", "admin", name="Ada")
    add_user(users, "ben", "ben-password", "annotator", name="Ben")
    data = folder / "data"
    data.mkdir()
    row = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    (data / "pairs.jsonl").write_text(row + "\n")
    (folder / "secret.jsonl").write_text(row + "\n")
    env = {"LEGEND_AUTH_FILE": str(users), "LEGEND_DATA_DIR": str(data)}
    server = Server(_database(folder), browser_model, folder / "server.log", env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory, browser_model: Path) -> Iterator[Server]:
    """The app as one person runs it: no login mode."""
    folder = tmp_path_factory.mktemp("access-solo")
    server = Server(_database(folder), browser_model, folder / "server.log")
    yield server
    server.stop()


def sign_in(page, username: str, password: str) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    idle(page)


def nav_links(page) -> list[str]:
    links = page.get_by_test_id("stSidebarNav").get_by_role("link")
    return [re.sub(r"^\w+\s+", "", t.strip()) for t in links.all_inner_texts()]


@pytest.mark.parametrize("path", list(URLS), ids=lambda p: p.strip("/") or "home")
def test_signed_out_every_url_shows_the_sign_in_form_only(team, page, shots, path):
    from playwright.sync_api import expect

    page.goto(team.url + path)
    expect(page.get_by_role("heading", name="Sign in to Legend Studio")).to_be_visible()
    idle(page)
    no_exceptions(page)
    assert page.get_by_test_id("stSidebar").count() == 0
    assert page.get_by_test_id("stSidebarNav").count() == 0
    shown = page.locator("body").inner_text()
    assert [word for word in HIDDEN if word in shown] == []
    assert page.get_by_role("textbox").count() == 2  # username and password, nothing else
    shoot(page, shots / "signed_out.png")


def test_sign_in_from_a_deep_link_lands_there_without_server_powers(team, page, shots):
    from playwright.sync_api import expect

    page.goto(team.url + "/review")
    sign_in(page, "ben", "ben-password")
    assert page.url == team.url + "/review"
    expect(page.get_by_role("heading", name="Review", exact=True)).to_be_visible()
    expect(page.get_by_text("Ben (ben, annotator)")).to_be_visible()
    assert nav_links(page) == NAV
    # The model in use is shown, not offered for change.
    expect(page.get_by_text("An admin chooses the model.")).to_be_visible()
    assert page.get_by_text("Change model").count() == 0
    shoot(page, shots / "01_review_as_annotator.png")

    nav(page, "Data")
    idle(page)
    expect(page.get_by_role("heading", name="Data", exact=True)).to_be_visible()
    expect(page.get_by_text("Only an admin can delete data sets.")).to_be_visible()
    assert page.get_by_role("textbox", name=re.compile("path of a file")).count() == 0
    assert page.get_by_text("Delete this data set").count() == 0
    no_exceptions(page)
    shoot(page, shots / "02_data_as_annotator.png")


def test_an_admin_reads_server_files_only_in_the_data_folder(team, page, shots):
    from playwright.sync_api import expect

    page.goto(team.url + "/data")
    sign_in(page, "ada", "ada-password")
    assert page.url == team.url + "/data"
    box = page.get_by_role("textbox", name=re.compile("path of a file in the server's data"))
    for outside in ("../secret.jsonl", "/etc/passwd"):
        box.fill(outside)
        box.press("Enter")
        idle(page)
        expect(page.get_by_text("This file cannot be read.")).to_be_visible()
        expect(page.get_by_text("only files inside the data folder")).to_be_visible()
        assert page.get_by_text("Detected format").count() == 0
    shoot(page, shots / "01_outside_refused.png")
    box.fill("pairs.jsonl")
    box.press("Enter")
    idle(page)
    expect(page.get_by_text(re.compile("Detected format: trl"))).to_be_visible()
    expect(page.get_by_text("Change model")).to_be_visible()
    no_exceptions(page)


@pytest.mark.parametrize("path", list(URLS), ids=lambda p: p.strip("/") or "home")
def test_without_login_every_url_opens_its_page_with_the_shared_sidebar(solo, page, shots, path):
    from playwright.sync_api import expect

    page.goto(solo.url + path)
    expect(page.get_by_role("heading", name=URLS[path], exact=True)).to_be_visible()
    idle(page)
    no_exceptions(page)
    assert nav_links(page) == NAV
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_label("Your name (recorded on every review)")).to_be_visible()
    expect(sidebar.get_by_text("Model in use")).to_be_visible()
    shown = sidebar.inner_text()
    assert "_common" not in shown and "app_pages" not in shown
    assert page.get_by_role("dialog").count() == 0  # no "Page not found"
    shoot(page, shots / "page.png")
