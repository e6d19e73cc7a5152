"""Accounts: password hashing, users files, roles."""

from __future__ import annotations

import json

import pytest

from legend_core.auth import (
    add_user,
    authenticate,
    check_password,
    hash_password,
    load_config,
    set_blind_review,
)
from legend_core.cli import main


def test_hash_is_salted_and_checks():
    a, b = hash_password("correct horse"), hash_password("correct horse")
    assert a != b and a.startswith("scrypt$")
    assert check_password("correct horse", a) and check_password("correct horse", b)
    assert not check_password("wrong horse", a)
    assert not check_password("correct horse", "md5$abc")
    with pytest.raises(ValueError):
        hash_password("short")


def test_users_file_round_trip_and_roles(tmp_path):
    path = tmp_path / "users.json"
    add_user(path, "ana", "ana-password", "admin", name="Ana")
    add_user(path, "ben", "ben-password", "annotator")
    raw = path.read_text()
    assert "ana-password" not in raw and "ben-password" not in raw
    config = load_config(path)
    ana = authenticate(config, "ana", "ana-password")
    ben = authenticate(config, "ben", "ben-password")
    assert ana.is_admin and ana.name == "Ana" and not ben.is_admin
    assert authenticate(config, "ben", "ana-password") is None
    assert authenticate(config, "nobody", "whatever-pass") is None
    set_blind_review(path, True)
    assert load_config(path).blind_review


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{", "not valid JSON"),
        ('{"people": {}}', "'users' object"),
        ('{"users": {"x": {"role": "god", "password": "scrypt$1"}}}', "needs a role"),
        ('{"users": {"x": {"role": "admin", "password": "plain"}}}', "no password hash"),
    ],
)
def test_bad_users_files(tmp_path, content, expected):
    path = tmp_path / "u.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=expected):
        load_config(path)


def test_user_command(tmp_path, monkeypatch):
    path = tmp_path / "u.json"
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("secret-password\n"))
    assert (
        main(["user", "add", "cy", "--role", "annotator", "--file", str(path), "--password-stdin"])
        == 0
    )
    assert json.loads(path.read_text())["users"]["cy"]["role"] == "annotator"
    assert authenticate(load_config(path), "cy", "secret-password") is not None
