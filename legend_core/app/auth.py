"""Accounts for a shared deployment: users, roles and hashed passwords in a JSON file.

Login mode is off unless ``LEGEND_AUTH_FILE`` names a users file, so the one-command demo
needs no login. Passwords are hashed with scrypt from the standard library (salted,
memory-hard); the file never holds a password. Create users with ``legend user add``.

File layout::

    {"blind_review": true,
     "users": {"ana": {"name": "Ana Ruiz", "role": "admin", "password": "scrypt$..."}}}
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Role = Literal["admin", "annotator"]
ROLES: tuple[str, ...] = ("admin", "annotator")
_N, _R, _P = 2**14, 8, 1


@dataclass(frozen=True)
class User:
    """A logged-in person: ``username`` is what reviews record."""

    username: str
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass
class AuthConfig:
    """The users file's content."""

    users: dict[str, dict[str, str]]
    blind_review: bool = False


def auth_file() -> Path | None:
    """The users file if login mode is on (``LEGEND_AUTH_FILE``), else None."""
    value = os.environ.get("LEGEND_AUTH_FILE")
    return Path(value).expanduser() if value else None


def hash_password(password: str) -> str:
    """A salted scrypt hash, as ``scrypt$n$r$p$salt$hash`` (base64 parts)."""
    if len(password) < 8:
        raise ValueError("a password needs at least 8 characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    parts = [base64.b64encode(x).decode() for x in (salt, digest)]
    return f"scrypt${_N}${_R}${_P}${parts[0]}${parts[1]}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a hash from :func:`hash_password` (constant time)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def load_config(path: Path) -> AuthConfig:
    """Read a users file; a malformed one raises ValueError naming the problem."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ValueError(f"users file {path} does not exist") from error
    except json.JSONDecodeError as error:
        message = f"users file {path}: not valid JSON ({error.msg}, line {error.lineno})"
        raise ValueError(message) from error
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise ValueError(f"users file {path}: expected an object with a 'users' object")
    for username, entry in users.items():
        if not isinstance(entry, dict) or entry.get("role") not in ROLES:
            raise ValueError(f"users file {path}: user {username!r} needs a role in {ROLES}")
        if not str(entry.get("password", "")).startswith("scrypt$"):
            raise ValueError(f"users file {path}: user {username!r} has no password hash")
    return AuthConfig(users=users, blind_review=bool(data.get("blind_review", False)))


def admin_names(config: AuthConfig | None) -> frozenset[str]:
    """The usernames with the admin role (their review verdicts adjudicate); none without
    login mode."""
    if config is None:
        return frozenset()
    return frozenset(name for name, entry in config.users.items() if entry["role"] == "admin")


def authenticate(config: AuthConfig, username: str, password: str) -> User | None:
    """The user if the password is right, else None (same work either way)."""
    entry = config.users.get(username)
    stored = entry["password"] if entry else hash_password("x" * 12)  # no timing hint
    if not check_password(password, stored) or entry is None:
        return None
    return User(username=username, name=entry.get("name") or username, role=entry["role"])


def stamp(config: AuthConfig, username: str) -> str | None:
    """A fingerprint of the user's stored password hash (None if there is no such user): a
    signed-in session keeps it, so changing a password signs that user out everywhere."""
    entry = config.users.get(username)
    if entry is None:
        return None
    return hashlib.sha256(str(entry["password"]).encode()).hexdigest()[:16]


def refresh(config: AuthConfig, username: str, session_stamp: str | None) -> User | None:
    """The user as the users file says now (role and name re-read), or None when they were
    removed or their password changed since they signed in."""
    entry = config.users.get(username)
    if entry is None or session_stamp is None:
        return None
    if not hmac.compare_digest(stamp(config, username) or "", session_stamp):
        return None
    return User(username=username, name=entry.get("name") or username, role=entry["role"])


class SignInThrottle:
    """Failed sign-ins per username: after ``max_failures`` in a row the username is locked
    for ``lock_seconds`` (even with the right password), so passwords cannot be guessed at
    speed. Per process and thread-safe: an attempt is counted *before* the password is
    checked, so parallel attempts cannot slip past the limit."""

    def __init__(
        self,
        max_failures: int = 5,
        lock_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = 10_000,
    ) -> None:
        self.max_failures = max_failures
        self.lock_seconds = lock_seconds
        self._clock = clock
        self._max_tracked = max_tracked
        self._lock = threading.Lock()
        # username -> [attempts not yet followed by a success, first attempt, locked until]
        self._entries: dict[str, list[float]] = {}

    def attempt(self, username: str) -> float:
        """Record a sign-in attempt: 0 if it may go ahead, else the seconds the username
        stays locked (the attempt is then not made)."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(username)
            if entry is not None and entry[2] > now:
                return entry[2] - now
            if entry is None or now - entry[1] > self.lock_seconds:
                if len(self._entries) >= self._max_tracked:
                    self._forget_old(now)
                entry = self._entries[username] = [0, now, 0.0]
            entry[0] += 1
            if entry[0] >= self.max_failures:
                entry[2] = now + self.lock_seconds  # this attempt still goes ahead
            return 0.0

    def succeeded(self, username: str) -> None:
        """A right password: the username's count starts again."""
        with self._lock:
            self._entries.pop(username, None)

    def _forget_old(self, now: float) -> None:
        """Keep memory bounded when many usernames are tried: forget counts whose time is
        over, else the oldest half of those not locked (a lock is never forgotten)."""
        free = sorted((e[1], k) for k, e in self._entries.items() if e[2] <= now)
        expired = [k for first, k in free if now - first > self.lock_seconds]
        for key in expired or [k for _, k in free[: max(1, len(free) // 2)]]:
            del self._entries[key]


def add_user(path: Path, username: str, password: str, role: Role, name: str = "") -> None:
    """Add or replace a user in a users file (created if missing), written atomically."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    if not username or not username.strip() or username != username.strip():
        raise ValueError("a username must be non-empty, without surrounding spaces")
    hashed = hash_password(password)  # slow: done before taking the file's lock
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path):
        data: dict[str, Any] = {"blind_review": False, "users": {}}
        if path.exists():
            config = load_config(path)
            data = {"blind_review": config.blind_review, "users": config.users}
        data["users"][username] = {"name": name or username, "role": role, "password": hashed}
        _write(path, data)


def set_blind_review(path: Path, on: bool) -> None:
    """Turn blind review on or off in a users file (written atomically)."""
    with _exclusive(path):
        config = load_config(path)
        _write(path, {"blind_review": on, "users": config.users})


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold a lock beside the users file while it is read, changed and written, so two
    commands at once cannot lose each other's change."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write the users file atomically: a private temporary file in the same folder, synced,
    then renamed over the old one; a reader (the app, on every run) sees the old file or
    the new one, never half of one, and the file is only ever readable by its owner."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o600)
            out.write(json.dumps(data, indent=2) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
