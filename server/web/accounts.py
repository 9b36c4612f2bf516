"""Operator accounts: Argon2id passwords, sessions kept in the database, login rate limits.

Roles, from least to most: `viewer` (reads everything, changes nothing), `operator`
(acknowledges alerts, quarantines and releases households), `admin` (everything).

A session is a random token in a cookie; the database keeps only its SHA-256, so a
copy of the database does not let anyone log in. A session ends 12 h after login
(absolute) or after 1 h without a request (sliding), whichever comes first. Failed
logins are counted per (account, client address) and per client address over a
15-minute window; past the limit the login answers 429 without checking the password.

Tables: server/storage/schema.py.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from server.storage import audit
from server.store import ServerStore

ROLES = ("viewer", "operator", "admin")
NAME_MAX = 64
PASSWORD_MIN = 8
SESSION_ABSOLUTE = timedelta(hours=12)
SESSION_IDLE = timedelta(hours=1)
FAIL_WINDOW = timedelta(minutes=15)
FAILS_PER_ACCOUNT_AND_ADDRESS = 5
FAILS_PER_ADDRESS = 20  # spraying many account names from one address

# argon2-cffi's defaults are RFC 9106's low-memory profile of Argon2id (64 MiB, t=3):
# fine on a Pi 4 running the collector, and the hash records its parameters.
_hasher = PasswordHasher()
# Verified when the account does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("menwei-no-such-operator")


class AccountError(ValueError):
    """An account cannot be created or changed; the message says why."""


@dataclass(frozen=True)
class Operator:
    name: str
    role: str
    created_at: str
    last_login_at: str | None

    def can(self, role: str) -> bool:
        """True if this operator has `role` or a stronger one."""
        return ROLES.index(self.role) >= ROLES.index(role)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Session:
    operator: Operator
    csrf: str
    expires_at: datetime


@dataclass(frozen=True)
class LoginResult:
    """`token` is set on success; `limited` when the attempt was refused unchecked (429)."""

    token: str | None = None
    limited: bool = False


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AccountStore:
    def __init__(self, store: ServerStore) -> None:
        self.store = store

    # --- operators --------------------------------------------------------------------

    def add(self, name: str, role: str, password: str, *, actor: str) -> Operator:
        name = name.strip()
        if not name or len(name) > NAME_MAX or any(c.isspace() for c in name):
            raise AccountError(f"operator name must be 1-{NAME_MAX} characters without spaces")
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        if len(password) < PASSWORD_MIN:
            raise AccountError(f"password must be at least {PASSWORD_MIN} characters")
        digest = _hasher.hash(password)
        with self.store.atomic() as db:
            if db.execute("SELECT 1 FROM operators WHERE name = ?", [name]).fetchone():
                raise AccountError(f"operator {name!r} already exists")
            db.execute(
                "INSERT INTO operators (name, role, password_hash, created_at) VALUES (?,?,?,?)",
                [name, role, digest, _iso(_now())],
            )
        with self.store.write() as tx:
            audit.record(tx, actor, "operator_add", name, f"role={role}")
        operator = self.get(name)
        assert operator is not None
        return operator

    def get(self, name: str) -> Operator | None:
        with self.store._lock:
            row = self.store.db.execute(
                "SELECT name, role, created_at, last_login_at FROM operators"
                " WHERE name = ? AND disabled = 0",
                [name],
            ).fetchone()
        return None if row is None else Operator(*row)

    def list(self) -> list[Operator]:
        with self.store._lock:
            rows = self.store.db.execute(
                "SELECT name, role, created_at, last_login_at FROM operators"
                " WHERE disabled = 0 ORDER BY name"
            ).fetchall()
        return [Operator(*r) for r in rows]

    # --- login ------------------------------------------------------------------------

    def limited(self, account: str, address: str) -> bool:
        since = _iso(_now() - FAIL_WINDOW)
        with self.store._lock:
            pair, by_address = self.store.db.execute(
                "SELECT COALESCE(SUM(account = ?), 0), COUNT(*) FROM login_failures"
                " WHERE address = ? AND at >= ?",
                [account, address, since],
            ).fetchone()
        return int(pair) >= FAILS_PER_ACCOUNT_AND_ADDRESS or int(by_address) >= FAILS_PER_ADDRESS

    def login(self, account: str, password: str, address: str) -> LoginResult:
        """Check a password and open a session. Failures are recorded and audited."""
        account = account.strip()[:NAME_MAX]
        if self.limited(account, address):
            with self.store.write() as tx:
                audit.record(tx, account or "-", "login_limited", address)
            return LoginResult(limited=True)
        with self.store._lock:
            row = self.store.db.execute(
                "SELECT password_hash FROM operators WHERE name = ? AND disabled = 0", [account]
            ).fetchone()
        stored = row[0] if row else _DUMMY_HASH
        try:
            ok = _hasher.verify(stored, password) and row is not None
        except (VerificationError, InvalidHashError):
            ok = False
        now = _now()
        if not ok:
            with self.store.atomic() as db:
                db.execute(
                    "INSERT INTO login_failures (account, address, at) VALUES (?,?,?)",
                    [account, address, _iso(now)],
                )
                db.execute("DELETE FROM login_failures WHERE at < ?", [_iso(now - FAIL_WINDOW)])
            with self.store.write() as tx:
                audit.record(tx, account or "-", "login_failed", address)
            return LoginResult()
        token = secrets.token_urlsafe(32)
        with self.store.atomic() as db:
            if _hasher.check_needs_rehash(stored):
                db.execute(
                    "UPDATE operators SET password_hash = ? WHERE name = ?",
                    [_hasher.hash(password), account],
                )
            db.execute(
                "INSERT INTO sessions (token_sha256, operator, csrf, created_at, expires_at,"
                " last_seen_at, address) VALUES (?,?,?,?,?,?,?)",
                [
                    _digest(token),
                    account,
                    secrets.token_urlsafe(24),
                    _iso(now),
                    _iso(now + SESSION_ABSOLUTE),
                    _iso(now),
                    address,
                ],
            )
            db.execute(
                "UPDATE operators SET last_login_at = ? WHERE name = ?", [_iso(now), account]
            )
            db.execute(
                "DELETE FROM login_failures WHERE account = ? AND address = ?", [account, address]
            )
            db.execute("DELETE FROM sessions WHERE expires_at < ?", [_iso(now)])
        with self.store.write() as tx:
            audit.record(tx, account, "login", address)
        return LoginResult(token=token)

    # --- sessions ---------------------------------------------------------------------

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie token, its idle timer restarted; None if expired."""
        if not token:
            return None
        now = _now()
        digest = _digest(token)
        with self.store._lock:
            row = self.store.db.execute(
                "SELECT s.csrf, s.expires_at, s.last_seen_at, o.name, o.role, o.created_at,"
                " o.last_login_at FROM sessions s JOIN operators o ON o.name = s.operator"
                " WHERE s.token_sha256 = ? AND o.disabled = 0",
                [digest],
            ).fetchone()
        if row is None:
            return None
        csrf, expires, last_seen, *op = row
        expires_at = datetime.fromisoformat(expires)
        if now >= expires_at or now >= datetime.fromisoformat(last_seen) + SESSION_IDLE:
            self.logout(token)
            return None
        # Restarting the idle timer on every request would write on every page view;
        # once a minute is precise enough for a 1 h idle limit.
        if now - datetime.fromisoformat(last_seen) > timedelta(minutes=1):
            with self.store.atomic() as db:
                db.execute(
                    "UPDATE sessions SET last_seen_at = ? WHERE token_sha256 = ?",
                    [_iso(now), digest],
                )
        return Session(Operator(*op), csrf, expires_at)

    def logout(self, token: str) -> None:
        with self.store.atomic() as db:
            db.execute("DELETE FROM sessions WHERE token_sha256 = ?", [_digest(token)])
