"""Every page of the app, through Streamlit's AppTest: empty database, the demo, imports,
and a 20,000-pair database (rendered without errors, map sampled)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from legend_core import config
from legend_core.data.store import Store
from tests.app_support import PAGES, app, button, goto, large_db, metrics, problems, wait_until

XSS = Path(__file__).resolve().parent / "xss" / "xss_pairs.jsonl"


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'legend.db'}"


@pytest.fixture(scope="module")
def big_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, int]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('big') / 'big.db'}"
    return url, large_db(url)


def test_every_page_renders_on_an_empty_database(monkeypatch, db, tiny_model_dir):
    at = app(monkeypatch, db, tiny_model_dir).run()
    assert not problems(at)
    assert metrics(at) == {"Data sets": "0", "Directions": "0", "Margin runs": "0", "Reviews": "0"}
    assert [b.label for b in at.button] == ["Load the demo"]
    # The sidebar names the model in use (LEGEND_MODEL) and asks for the annotator's name.
    assert any(str(tiny_model_dir) == t.value for t in at.sidebar.text)
    assert at.text_input(key="_w_annotator").value == ""
    empty_states = {
        "data": "No data sets yet",
        "directions": "No saved directions yet",
        "explore": "No data sets yet",
        "review": "No margins to review yet",
        "evaluate": "No margins to evaluate yet",
        "export": "Nothing to export yet",
    }
    for page in PAGES[1:]:
        goto(at, page)
        assert any(empty_states[page] in i.value for i in at.info), page


def test_home_loads_the_demo(monkeypatch, db, tiny_model_dir):
    at = app(monkeypatch, db, tiny_model_dir).run()
    button(at, "Load the demo").click().run()
    assert not problems(at)
    counts = Store(db).counts()
    assert counts["datasets"] == 1 and counts["pairs"] == 52
    assert counts["contrast_sets"] == 1 and counts["contrast_items"] == 80
    assert counts["directions"] == 0  # no model given: no direction built
    assert metrics(at)["Data sets"] == "1"
    assert not [b for b in at.button if b.label == "Load the demo"]
    goto(at, "data")
    names = at.dataframe[0].value["name"].tolist()
    assert names == ["demo pairs"]


def test_data_page_imports_an_upload_and_shows_the_format(monkeypatch, db, tiny_model_dir):
    at = app(monkeypatch, db, tiny_model_dir).run()
    goto(at, "data")
    at.get("file_uploader")[0].upload("xss_pairs.jsonl", XSS.read_bytes()).run()
    assert not problems(at)
    assert any("Detected format: trl" in s.value for s in at.success)
    preview = at.dataframe[0].value
    assert "<script>alert(1)</script>" in preview["rejected"].tolist()
    name = next(t for t in at.text_input if t.key.startswith("pairs_name_"))
    assert name.value == "xss_pairs"  # the file's stem by default
    name.input("xss set").run()
    button(at, "Import").click().run()
    assert not problems(at)
    datasets = Store(db).list_datasets()
    assert [(d.name, d.n_pairs, d.format) for d in datasets] == [("xss set", 6, "trl")]


def test_data_page_shows_the_format_error_with_line_and_field(monkeypatch, db, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
        + "\n"
        + json.dumps({"prompt": "p", "chosen": 3, "rejected": "b"})
        + "\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("LEGEND_DATA_DIR", str(tmp_path))
    at = app(monkeypatch, db).run()
    at.switch_page("app_pages/data.py").run()
    at.text_input(key="pairs_path").input(str(bad)).run()
    assert [e.value for e in at.error] == ["This file cannot be imported."]
    message = " ".join(t.value for t in at.text)
    assert "line 2" in message and "'chosen'" in message
    assert Store(db).counts()["datasets"] == 0


def test_data_page_imports_a_contrastive_set(monkeypatch, db, tmp_path):
    advbench = tmp_path / "advbench.csv"
    advbench.write_text(
        "goal,target\nWrite a bad thing,Sure here is a bad thing\n"
        "Do harm,Sure here is how to do harm\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("LEGEND_DATA_DIR", str(tmp_path))
    at = app(monkeypatch, db).run()
    goto(at, "data")
    at.text_input(key="contrast_path").input("advbench.csv").run()  # relative to the folder
    next(t for t in at.text_input if t.key.startswith("contrast_name_")).input("adv").run()
    button(at, "Import contrastive set").click().run()
    assert not problems(at)
    store = Store(db)
    (info,) = store.list_contrast_sets()
    assert (info.name, info.n_items) == ("adv", 2)
    # Our varied refusals by default (the best measured set), in turn.
    harmless = [i.harmless for i in store.get_contrast_items(info.id)]
    assert harmless == list(config.VARIED_REFUSALS[:2])

    at.radio(key="contrast_refusal_kind").set_value("paper").run()
    next(t for t in at.text_input if t.key.startswith("contrast_name_")).input("paper").run()
    button(at, "Import contrastive set").click().run()
    paper = next(i for i in store.list_contrast_sets() if i.name == "paper")
    assert {i.harmless for i in store.get_contrast_items(paper.id)} == {config.PAPER_REFUSAL}


def test_every_page_renders_with_20000_pairs(monkeypatch, big_db):
    url, ids = big_db
    at = app(monkeypatch, url).run()
    assert not problems(at)
    assert metrics(at)["Data sets"] == "1"
    goto(at, "data")
    goto(at, "directions")
    goto(at, "explore")
    assert metrics(at)["Pairs with a margin"] == "20,000"
    # The UMAP map is laid out in the background; the page says so, then shows it.
    wait_until(at, lambda: "random sample" in " ".join(c.value for c in at.caption))
    assert not problems(at)
    captions = " ".join(c.value for c in at.caption)
    assert "random sample of 1,000 of 20,000 pairs" in captions  # the map says it samples
    goto(at, "review")
    assert metrics(at)["Pair"] == "1 of 20,000"
    goto(at, "evaluate")
    goto(at, "export")
    assert "20,000 rows" in " ".join(c.value for c in at.caption)
