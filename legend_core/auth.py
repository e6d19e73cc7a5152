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
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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


def authenticate(config: AuthConfig, username: str, password: str) -> User | None:
    """The user if the password is right, else None (same work either way)."""
    entry = config.users.get(username)
    stored = entry["password"] if entry else hash_password("x" * 12)  # no timing hint
    if not check_password(password, stored) or entry is None:
        return None
    return User(username=username, name=entry.get("name") or username, role=entry["role"])


def add_user(path: Path, username: str, password: str, role: Role, name: str = "") -> None:
    """Add or replace a user in a users file (created if missing), written atomically."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    if not username or not username.strip() or username != username.strip():
        raise ValueError("a username must be non-empty, without surrounding spaces")
    data = {"blind_review": False, "users": {}}
    if path.exists():
        config = load_config(path)
        data = {"blind_review": config.blind_review, "users": config.users}
    data["users"][username] = {
        "name": name or username,
        "role": role,
        "password": hash_password(password),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.chmod(0o600)
    os.replace(tmp, path)


def set_blind_review(path: Path, on: bool) -> None:
    """Turn blind review on or off in a users file."""
    config = load_config(path)
    data = {"blind_review": on, "users": config.users}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
