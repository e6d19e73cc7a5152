"""Who may do what in the app (AppTest): in login mode nothing shows before signing in,
whatever the page; server powers (reading server files, the model, deleting) are admins';
a role is re-read from the users file on every run; failed sign-ins lock a username."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from legend_core.app.auth import add_user
from legend_core.data.store import Store
from legend_core.method.directions import Direction
from legend_core.types import PreferencePair
from tests.app_support import PAGES, app, button, problems


@pytest.fixture
def team(tmp_path: Path, monkeypatch, tiny_model_dir):
    """A database with a data set, a users file (an admin, an annotator), login mode on,
    and a data folder holding a file that an admin may read."""
    db = f"sqlite:///{tmp_path / 'team.db'}"
    with Store(db) as store:
        pairs = [PreferencePair(f"question {i}", f"safe {i}", f"unsafe {i}") for i in range(3)]
        store.add_dataset("team pairs", pairs)
        store.add_direction(Direction(np.ones(8, np.float32), "m", 1, "mean", "alpaca", "x"))
    users = tmp_path / "users.json"
    add_user(users, "ada", "ada-password", "admin", name="Ada")
    add_user(users, "ben", "ben-password", "annotator", name="Ben")
    folder = tmp_path / "data"
    folder.mkdir()
    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    (folder / "pairs.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "secret.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setenv("LEGEND_AUTH_FILE", str(users))
    monkeypatch.setenv("LEGEND_DATA_DIR", str(folder))
    from app_pages import _common

    # Server settings and sign-in counts live as long as the process: start each test anew.
    _common._server_model.clear()
    _common._throttle.clear()
    return db, users, tiny_model_dir, tmp_path


def sign_in(at, username: str, password: str):
    at.text_input[0].input(username)
    at.text_input[1].input(password)
    at.button[0].click().run()
    return at


def texts(at) -> str:
    return " ".join(
        [t.value for t in at.text] + [c.value for c in at.caption] + [m.value for m in at.markdown]
    )


def keys(at) -> set[str]:
    widgets = [*at.text_input, *at.selectbox, *at.checkbox, *at.button]
    return {w.key for w in widgets if w.key}


def set_role(users: Path, username: str, role: str | None) -> None:
    data = json.loads(users.read_text())
    if role is None:
        del data["users"][username]
    else:
        data["users"][username]["role"] = role
    users.write_text(json.dumps(data))


@pytest.mark.parametrize("page", PAGES)
def test_signed_out_every_page_shows_the_sign_in_form_only(monkeypatch, team, page):
    db, _, model, _ = team
    at = app(monkeypatch, db, model).run()
    if page != "home":
        at.switch_page(f"app_pages/{page}.py").run()
    assert not problems(at)
    assert [t.value for t in at.title] == ["Sign in to Legend Studio"]
    assert [t.label for t in at.text_input] == ["Username", "Password"]
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.sidebar.children  # no sidebar: no page list, no name, no model
    assert not at.metric and not at.dataframe and not at.tabs


def test_annotator_has_no_server_powers(monkeypatch, team):
    db, _, model, _ = team
    ada = sign_in(app(monkeypatch, db, model).run(), "ada", "ada-password")
    assert "Ada (ada, admin)" in texts(ada)
    # The admin chooses the model for everyone (here: a device, a name).
    ada.selectbox(key="_w_model_device").set_value("cpu").run()
    ada.text_input(key="_w_model_name").input(str(model)).run()

    ben = sign_in(app(monkeypatch, db, model).run(), "ben", "ben-password")
    assert not problems(ben)
    assert "Ben (ben, annotator)" in texts(ben)
    assert not {"_w_model_name", "_w_model_device", "_w_model_dtype", "_w_model_trust"} & keys(ben)
    assert "An admin chooses the model." in texts(ben)
    # ...and sees the model in use: the admin's.
    assert str(model) in [t.value for t in ben.sidebar.text]
    assert "cpu · auto" in texts(ben)

    ben.switch_page("app_pages/data.py").run()
    assert not problems(ben)
    assert not {"pairs_path", "contrast_path", "delete_dataset", "delete_sure"} & keys(ben)
    assert "Only an admin can delete data sets." in texts(ben)
    # Values left in the session under an admin control's name change nothing.
    ben.session_state["pairs_path"] = "pairs.jsonl"
    ben.session_state["model_name"] = "/somewhere/else"
    ben.run()
    assert not ben.success and str(model) in [t.value for t in ben.sidebar.text]
    ben.switch_page("app_pages/directions.py").run()
    assert "Only an admin can delete directions." in texts(ben)
    assert "delete_direction" not in keys(ben)


def test_admin_reads_only_inside_the_data_folder_and_may_delete(monkeypatch, team):
    db, _, model, tmp = team
    ada = sign_in(app(monkeypatch, db, model).run(), "ada", "ada-password")
    ada.switch_page("app_pages/data.py").run()
    assert {"pairs_path", "contrast_path", "delete_sure", "delete_dataset"} <= keys(ada)
    for outside in ("../secret.jsonl", str(tmp / "secret.jsonl"), "/etc/passwd"):
        ada.text_input(key="pairs_path").input(outside).run()
        assert [e.value for e in ada.error] == ["This file cannot be read."]
        assert "only files inside the data folder" in texts(ada)
        assert not ada.success
    ada.text_input(key="pairs_path").input("pairs.jsonl").run()
    assert not problems(ada)
    assert any("Detected format: trl" in s.value for s in ada.success)


def test_a_demoted_or_removed_user_loses_rights_at_the_next_run(monkeypatch, team):
    db, users, model, _ = team
    ada = sign_in(app(monkeypatch, db, model).run(), "ada", "ada-password")
    ada.switch_page("app_pages/data.py").run()
    assert "delete_dataset" in keys(ada) and "pairs_path" in keys(ada)

    set_role(users, "ada", "annotator")
    ada.run()
    assert "Ada (ada, annotator)" in texts(ada)
    assert not {"delete_dataset", "pairs_path", "_w_model_name"} & keys(ada)

    set_role(users, "ada", "admin")
    ada.run()
    assert "delete_dataset" in keys(ada)

    set_role(users, "ada", None)
    ada.run()
    assert [t.value for t in ada.title] == ["Sign in to Legend Studio"]
    assert any("sign in again" in i.value for i in ada.info)
    assert "user" not in ada.session_state


def test_a_changed_password_or_a_broken_users_file_signs_out(monkeypatch, team):
    db, users, model, _ = team
    ben = sign_in(app(monkeypatch, db, model).run(), "ben", "ben-password")
    add_user(users, "ben", "new-ben-password", "annotator", name="Ben")
    ben.run()
    assert [t.value for t in ben.title] == ["Sign in to Legend Studio"]

    ben = sign_in(ben, "ben", "new-ben-password")
    assert "Ben (ben, annotator)" in texts(ben)
    users.write_text("{ not json")
    ben.run()
    assert [e.value for e in ben.error] == ["Login mode is on, but the users file cannot be read."]
    assert not ben.text_input and "user" not in ben.session_state


def test_a_demoted_admin_cannot_change_the_model_from_an_open_page(monkeypatch, team):
    db, users, model, _ = team
    ada = sign_in(app(monkeypatch, db, model).run(), "ada", "ada-password")
    name = ada.text_input(key="_w_model_name")
    set_role(users, "ada", "annotator")
    name.input("/tmp/evil-model").run()  # the widget's callback runs before the page's gate
    ben = sign_in(app(monkeypatch, db, model).run(), "ben", "ben-password")
    assert "/tmp/evil-model" not in [t.value for t in ben.sidebar.text]
    assert str(model) in [t.value for t in ben.sidebar.text]


def test_repeated_failed_sign_ins_lock_the_username(monkeypatch, team):
    db, _, model, _ = team
    at = app(monkeypatch, db, model).run()
    for _ in range(5):
        sign_in(at, "ben", "wrong-password")
        assert [e.value for e in at.error] == ["Wrong username or password."]
    sign_in(at, "ben", "ben-password")  # the right password, too late
    assert "Too many failed sign-ins" in at.error[0].value
    assert "user" not in at.session_state
    # Another username is not locked.
    sign_in(at, "ada", "ada-password")
    assert "Ada (ada, admin)" in texts(at)


def test_without_login_everyone_local_has_every_power(monkeypatch, team):
    db, _, model, _ = team
    monkeypatch.delenv("LEGEND_AUTH_FILE")
    at = app(monkeypatch, db, model).run()
    assert not problems(at)
    assert {"_w_model_name", "_w_model_trust"} <= keys(at)
    at.switch_page("app_pages/data.py").run()
    assert {"pairs_path", "delete_dataset"} <= keys(at)
    button(at, "Delete")  # present (disabled until "I am sure")


def test_the_app_refuses_to_serve_the_network_without_login(monkeypatch, team):
    from streamlit import config as st_config

    db, _, model, _ = team
    monkeypatch.delenv("LEGEND_AUTH_FILE")
    monkeypatch.delenv("LEGEND_ALLOW_OPEN", raising=False)
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    try:
        at = app(monkeypatch, db, model).run()
        assert [e.value for e in at.error] == [
            "This app is not served: it would be open to the network."
        ]
        assert not at.metric and not at.text_input and not at.button
        monkeypatch.setenv("LEGEND_ALLOW_OPEN", "1")
        assert app(monkeypatch, db, model).run().metric
    finally:
        st_config.set_option("server.address", before)


def test_no_pages_folder_beside_the_entry_script():
    """Streamlit runs the files of a ``pages/`` folder next to app.py on their own (no sign-in
    gate, no shared sidebar) until a session calls st.navigation: the pages live in
    app_pages/, and no pages/ folder may come back."""
    from tests.app_support import ROOT

    assert not (ROOT / "pages").exists()
    assert sorted(p.stem for p in (ROOT / "app_pages").glob("[!_]*.py")) == sorted(PAGES)
