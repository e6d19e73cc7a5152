"""The Evaluate page through Streamlit's AppTest, on a synthetic database (no model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app_support import ROOT, large_db, metrics, problems

PAGE = "pages/evaluate.py"


def page(monkeypatch, db_url: str, folder: Path):
    """The app with the Evaluate page open; registered here if app.py does not list it yet."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LEGEND_DB", db_url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = (ROOT / "app.py").read_text(encoding="utf-8")
    if PAGE not in entry:
        entry = entry.replace(
            "PAGES = [", f'PAGES = [\n    st.Page("{PAGE}", title="Evaluate"),', 1
        )
    (folder / "app.py").write_text(entry, encoding="utf-8")
    if not (folder / "pages").exists():
        (folder / "pages").symlink_to(ROOT / "pages", target_is_directory=True)
    at = AppTest.from_file(str(folder / "app.py"), default_timeout=120).run()
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

    at.number_input(key="eval_lam").set_value(2.0)
    next(b for b in at.button if b.label == "Run the reward-model check").click().run()
    assert not problems(at), problems(at)
    variants = at.dataframe[1].value
    assert len(variants) == 3 and variants["seeds"].tolist() == [5, 5, 5]
    differences = at.dataframe[2].value
    assert "margin - shuffled" in differences["difference"].tolist()
    assert any("λ = 2" in t.value for t in at.text)
