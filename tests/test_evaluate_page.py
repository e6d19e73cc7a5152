"""The Evaluate page through Streamlit's AppTest, on a synthetic database (no model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from legend_core import config
from tests.app_support import APP, large_db, metrics, problems

PAGE = "app_pages/evaluate.py"


def page(monkeypatch, db_url: str, folder: Path):
    """The app with the Evaluate page open (``folder`` is unused: kept for the callers)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LEGEND_DB", db_url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not problems(at), problems(at)
    at.switch_page(PAGE).run()
    return at


@pytest.fixture(scope="module")
def small_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('eval') / 'eval.db'}"
    large_db(url, n=400)
    return url


def test_empty_database_points_to_annotation(monkeypatch, tmp_path: Path):
    at = page(monkeypatch, f"sqlite:///{tmp_path / 'empty.db'}", tmp_path)
    assert not problems(at)
    assert any("No margins to evaluate yet" in i.value for i in at.info)


def test_agreement_baselines_and_reward_check(monkeypatch, small_db, tmp_path: Path):
    at = page(monkeypatch, small_db, tmp_path)
    assert not problems(at), problems(at)
    shown = metrics(at)
    assert set(shown) == {"Agreement", "Shorter is safer", "Random directions"}
    table = at.dataframe[0].value
    measures = table["measure"].tolist()
    assert measures[0] == "margin (this direction)" and len(table) == 5
    assert table["n"].tolist()[0] == 400 and sum(table["n"].tolist()[1:3]) == 400
    # The synthetic direction leans toward the chosen side: above the random directions.
    assert table["agreement"][0] > table["agreement"][4]

    # The check scales margins as an export does by default.
    assert at.selectbox(key="eval_scale").value == config.DEFAULT_MARGIN_SCALE
    at.number_input(key="eval_lam").set_value(2.0)
    next(b for b in at.button if b.label == "Run the reward-model check").click().run()
    assert not problems(at), problems(at)
    variants = at.dataframe[1].value
    assert len(variants) == 3 and variants["seeds"].tolist() == [5, 5, 5]
    differences = at.dataframe[2].value
    assert "margin - shuffled" in differences["difference"].tolist()
    assert any("λ = 2" in t.value for t in at.text)
    assert any(f"on the {config.DEFAULT_MARGIN_SCALE} scale" in t.value for t in at.text)
