"""Operator accounts: Argon2id passwords, sessions kept in the database, login rate limits.

Roles, from least to most: `viewer` (reads everything, changes nothing), `operator`
(acknowledges alerts, quarantines and releases households), `admin` (everything).

A session is a random token in a cookie; the database keeps only its SHA-256, so a
copy of the database does not let anyone log in. A session ends 12 h after login
(absolute) or after 1 h without a request (sliding), whichever comes first. Failed
logins are counted per (account, client address) and per client address over a
15-minute window; past the limit the login answers 429 without checking the password.

Rows: server/storage/accounts.py.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from server.storage import Store, audit
from server.storage import accounts as stored

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
    """The accounts of a site's store (server/storage/accounts.py holds the rows). Audited
    through the store's audit log, after each change is committed."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- operators --------------------------------------------------------------------

    def add(self, name: str, role: str, password: str, *, actor: str) -> Operator:
        """Create an account. Raises AccountError for a bad name, role or password, or a name
        already taken (also by a disabled account)."""
        name = name.strip()
        if not name or len(name) > NAME_MAX or any(c.isspace() for c in name):
            raise AccountError(f"operator name must be 1-{NAME_MAX} characters without spaces")
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        if len(password) < PASSWORD_MIN:
            raise AccountError(f"password must be at least {PASSWORD_MIN} characters")
        digest = _hasher.hash(password)
        with self.store.write() as tx:
            if not stored.add_operator(tx, name, role, digest, _iso(_now())):
                raise AccountError(f"operator {name!r} already exists")
            audit.record(tx, actor, "operator_add", name, f"role={role}")
        operator = self.get(name)
        assert operator is not None
        return operator

    def get(self, name: str) -> Operator | None:
        with self.store.read() as tx:
            row = stored.operator(tx, name)
        return None if row is None else _operator(row)

    def list(self) -> list[Operator]:
        with self.store.read() as tx:
            return [_operator(r) for r in stored.all_operators(tx)]

    # --- login ------------------------------------------------------------------------

    def limited(self, account: str, address: str) -> bool:
        """True when `address` has failed too often in the window, for `account` or overall."""
        with self.store.read() as tx:
            pair, by_address = stored.failures_since(
                tx, account, address, _iso(_now() - FAIL_WINDOW)
            )
        return pair >= FAILS_PER_ACCOUNT_AND_ADDRESS or by_address >= FAILS_PER_ADDRESS

    def login(self, account: str, password: str, address: str) -> LoginResult:
        """Check a password and open a session. Failures are recorded and audited."""
        account = account.strip()[:NAME_MAX]
        if self.limited(account, address):
            with self.store.write() as tx:
                audit.record(tx, account or "-", "login_limited", address)
            return LoginResult(limited=True)
        with self.store.read() as tx:
            known = stored.password_hash(tx, account)
        checked = known if known is not None else _DUMMY_HASH
        try:
            ok = _hasher.verify(checked, password) and known is not None
        except (VerificationError, InvalidHashError):
            ok = False
        now = _now()
        if not ok:
            with self.store.write() as tx:
                stored.add_failure(tx, account, address, _iso(now))
                stored.forget_failures_before(tx, _iso(now - FAIL_WINDOW))
                audit.record(tx, account or "-", "login_failed", address)
            return LoginResult()
        token = secrets.token_urlsafe(32)
        with self.store.write() as tx:
            if _hasher.check_needs_rehash(checked):
                stored.set_password_hash(tx, account, _hasher.hash(password))
            stored.open_session(
                tx,
                _digest(token),
                account,
                secrets.token_urlsafe(24),
                _iso(now),
                _iso(now + SESSION_ABSOLUTE),
                address,
            )
            stored.set_last_login(tx, account, _iso(now))
            stored.clear_failures(tx, account, address)
            stored.forget_sessions_expired_before(tx, _iso(now))
            audit.record(tx, account, "login", address)
        return LoginResult(token=token)

    # --- sessions ---------------------------------------------------------------------

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie token, its idle timer restarted; None if expired."""
        if not token:
            return None
        now = _now()
        digest = _digest(token)
        with self.store.read() as tx:
            row = stored.session(tx, digest)
        if row is None:
            return None
        expires_at = datetime.fromisoformat(row.expires_at)
        last_seen = datetime.fromisoformat(row.last_seen_at)
        if now >= expires_at or now >= last_seen + SESSION_IDLE:
            self.logout(token)
            return None
        # Restarting the idle timer on every request would write on every page view;
        # once a minute is precise enough for a 1 h idle limit.
        if now - last_seen > timedelta(minutes=1):
            with self.store.write() as tx:
                stored.touch_session(tx, digest, _iso(now))
        return Session(_operator(row.operator), row.csrf, expires_at)

    def logout(self, token: str) -> None:
        with self.store.write() as tx:
            stored.end_session(tx, _digest(token))


def _operator(row: stored.OperatorRow) -> Operator:
    return Operator(row.name, row.role, row.created_at, row.last_login_at)
