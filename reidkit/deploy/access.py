"""Who may use a search service and for what: tokens per user, each with the rights search, add and delete.

    reidkit gallery user users.toml alice --rights search add      # prints alice's new token once
    reidkit serve gallery.db --users users.toml

The users file (TOML) keeps only each token's SHA-256 (tokens are 32 random bytes: a fast hash is enough, and a
stolen file gives no token)::

    [users.alice]
    token_sha256 = "3b4c..."
    rights = ["search", "add"]

``--token T`` is one user, ``token``, with every right.  Without either, every caller has every right (the
service binds 127.0.0.1 then, unless told otherwise).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from ..files import write_text_atomic

RIGHTS = ("search", "add", "delete")


@dataclass(frozen=True)
class User:
    name: str
    rights: frozenset[str]


ANONYMOUS = User("", frozenset(RIGHTS))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib
        return tomllib
    import tomli  # type: ignore[import-not-found, unused-ignore]  # the 3.10 backport (a dependency there)
    return tomli


class Users:
    """The users of a service, looked up by token (compared in constant time); :attr:`required` says whether a
    token is needed at all."""

    def __init__(self, users: dict[str, tuple[str, frozenset[str]]]):
        self._users = users                      # name -> (token sha256, rights)

    @property
    def required(self) -> bool:
        return bool(self._users)

    @classmethod
    def none(cls) -> Users:
        return cls({})

    @classmethod
    def single(cls, token: str) -> Users:
        """One user, ``token``, with every right (``serve --token``); an empty token is refused."""
        if not token or not token.strip():
            raise ValueError("--token is empty (an unset variable?): give a token, or leave --token out to serve "
                             "this machine only")
        return cls({"token": (token_hash(token), frozenset(RIGHTS))})

    @classmethod
    def load(cls, path: str | Path) -> Users:
        """Read a users file; a ``ValueError`` naming the file and the user for anything malformed."""
        path = Path(path)
        try:
            data = _toml().loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"users file not found: {path}") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path}: not a TOML users file ({e})") from None
        table = data.get("users")
        if not isinstance(table, dict) or not table:
            raise ValueError(f"{path}: no [users.NAME] tables (write them with `reidkit gallery user {path} NAME`)")
        users = {}
        for name, entry in table.items():
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: users.{name} is not a table")
            digest, rights = entry.get("token_sha256"), entry.get("rights")
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"{path}: users.{name}.token_sha256 must be 64 lowercase hex digits")
            if not isinstance(rights, list) or not rights or any(r not in RIGHTS for r in rights):
                raise ValueError(f"{path}: users.{name}.rights must be a non-empty list of {', '.join(RIGHTS)}; "
                                 f"got {rights!r}")
            users[name] = (digest, frozenset(rights))
        return cls(users)

    def authenticate(self, token: str) -> User | None:
        """The user whose token this is (None: nobody's); every user is compared, so the time says nothing."""
        if not self._users:
            return ANONYMOUS
        given = token_hash(token).encode()
        found = None
        for name, (digest, rights) in self._users.items():
            if hmac.compare_digest(given, digest.encode()) and token:
                found = User(name, rights)
        return found


def add_user(path: str | Path, name: str, rights: list[str]) -> str:
    """Add (or give a new token to) user ``name`` in the users file ``path``; returns the new token (only its hash
    is written)."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"user name {name!r}: use letters, digits, '-' and '_'")
    bad = [r for r in rights if r not in RIGHTS]
    if bad or not rights:
        raise ValueError(f"rights {bad or rights!r}: choose among {', '.join(RIGHTS)}")
    path = Path(path)
    existing: dict = {}
    if path.exists():
        Users.load(path)                         # a malformed file is named, not overwritten
        existing = _toml().loads(path.read_text(encoding="utf-8"))["users"]
    token = secrets.token_urlsafe(32)
    existing[name] = {"token_sha256": token_hash(token), "rights": sorted(set(rights), key=RIGHTS.index)}
    lines = ["# reidkit serve --users: each user's token SHA-256 and rights (reidkit gallery user)"]
    for user, entry in existing.items():
        rights_text = ", ".join(f'"{r}"' for r in entry["rights"])
        lines += ["", f"[users.{user}]", f'token_sha256 = "{entry["token_sha256"]}"', f"rights = [{rights_text}]"]
    write_text_atomic(path, "\n".join(lines) + "\n")
    path.chmod(0o600)
    return token


__all__ = ["ANONYMOUS", "RIGHTS", "User", "Users", "add_user", "token_hash"]
