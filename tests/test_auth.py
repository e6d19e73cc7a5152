"""Accounts: password hashing, users files (private, atomic), roles re-read, sign-in throttle."""

from __future__ import annotations

import json
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from legend_core.app.auth import (
    SignInThrottle,
    add_user,
    authenticate,
    check_password,
    hash_password,
    load_config,
    refresh,
    set_blind_review,
    stamp,
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


def test_users_file_is_private_and_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "users.json"
    add_user(path, "ana", "ana-password", "admin")
    set_blind_review(path, True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.json", "users.json.lock"]
    before = path.read_bytes()

    # A write that fails half way leaves the old file whole, and no temporary file behind.
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("legend_core.app.auth.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        add_user(path, "ben", "ben-password", "annotator")
    with pytest.raises(OSError, match="disk full"):
        set_blind_review(path, False)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.json", "users.json.lock"]


def test_users_file_writers_at_once_lose_nothing(tmp_path):
    path = tmp_path / "users.json"
    names = [f"user{i}" for i in range(6)]
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda n: add_user(path, n, f"{n}-password", "annotator"), names))
    assert sorted(load_config(path).users) == names


def test_refresh_rereads_role_and_drops_removed_or_repassworded_users(tmp_path):
    path = tmp_path / "users.json"
    add_user(path, "ana", "ana-password", "admin", name="Ana")
    config = load_config(path)
    signed = stamp(config, "ana")
    assert refresh(config, "ana", signed).is_admin
    add_user_entry = json.loads(path.read_text())
    add_user_entry["users"]["ana"]["role"] = "annotator"
    path.write_text(json.dumps(add_user_entry))
    demoted = refresh(load_config(path), "ana", signed)
    assert demoted is not None and not demoted.is_admin and demoted.name == "Ana"
    assert refresh(load_config(path), "ana", None) is None
    assert refresh(load_config(path), "nobody", signed) is None
    add_user(path, "ana", "new-password", "admin")  # a new password: old sessions end
    assert refresh(load_config(path), "ana", signed) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sign_in_throttle_locks_a_username_after_repeated_failures():
    clock = FakeClock()
    throttle = SignInThrottle(max_failures=5, lock_seconds=300, clock=clock)
    assert [throttle.attempt("ana") for _ in range(5)] == [0.0] * 5
    assert throttle.attempt("ana") == pytest.approx(300)  # locked: not even tried
    assert throttle.attempt("ben") == 0.0  # other usernames are not affected
    clock.now += 200
    assert throttle.attempt("ana") == pytest.approx(100)
    clock.now += 101
    assert throttle.attempt("ana") == 0.0  # the lock is over: counting starts again
    throttle.succeeded("ana")
    assert [throttle.attempt("ana") for _ in range(5)] == [0.0] * 5
    assert throttle.attempt("ana") > 0


def test_sign_in_throttle_failures_long_ago_are_forgotten():
    clock = FakeClock()
    throttle = SignInThrottle(max_failures=3, lock_seconds=60, clock=clock)
    for _ in range(2):
        throttle.attempt("ana")
        clock.now += 61
    assert throttle.attempt("ana") == 0.0 and throttle.attempt("ana") == 0.0


def test_sign_in_throttle_holds_under_parallel_attempts():
    throttle = SignInThrottle(max_failures=5, lock_seconds=300)
    barrier = threading.Barrier(16)

    def attempt(_: int) -> float:
        barrier.wait()
        return throttle.attempt("ana")

    with ThreadPoolExecutor(16) as pool:
        waits = list(pool.map(attempt, range(16)))
    assert waits.count(0.0) == 5


def test_sign_in_throttle_memory_is_bounded_but_keeps_locks():
    clock = FakeClock()
    throttle = SignInThrottle(max_failures=2, lock_seconds=60, clock=clock, max_tracked=50)
    throttle.attempt("ana")
    throttle.attempt("ana")
    for i in range(500):
        throttle.attempt(f"guess{i}")
    assert len(throttle._entries) <= 50
    assert throttle.attempt("ana") > 0
