"""Dashboard accounts as stored: operators, sessions (by token digest) and failed logins.

The rules (password hashing, session lifetimes, rate limits) are server/web/accounts.py's;
this module only reads and writes the rows. Times are the ISO 8601 UTC texts that module
writes (`YYYY-MM-DDTHH:MM:SS+00:00`, one format), so comparing them as text compares
instants on both backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from server.storage.engine import Tx
from server.storage.schema import login_failures, operators, sessions

_OPERATOR = (
    operators.c.name,
    operators.c.role,
    operators.c.created_at,
    operators.c.last_login_at,
)


@dataclass(frozen=True)
class OperatorRow:
    """An operator account that is not disabled."""

    name: str
    role: str
    created_at: str
    last_login_at: str | None


@dataclass(frozen=True)
class SessionRow:
    """A stored session of an operator not disabled; times as stored (ISO 8601 UTC)."""

    operator: OperatorRow
    csrf: str
    expires_at: str
    last_seen_at: str


def _operator(row: Any) -> OperatorRow:
    return OperatorRow(str(row.name), str(row.role), str(row.created_at), row.last_login_at)


# --- operators ---------------------------------------------------------------------------


def add_operator(tx: Tx, name: str, role: str, password_hash: str, created_at: str) -> bool:
    """Create an operator; False (nothing changed) if the name is taken, disabled or not."""
    dialect = postgresql if tx.dialect.name == "postgresql" else sqlite
    added = tx.execute(
        dialect.insert(operators)
        .values(name=name, role=role, password_hash=password_hash, created_at=created_at)
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(operators.c.name)  # rowcount is not reported for this on PostgreSQL
    )
    return added.first() is not None


def operator(tx: Tx, name: str) -> OperatorRow | None:
    """The operator `name`; None if there is none or it is disabled."""
    row = tx.execute(
        select(*_OPERATOR).where(operators.c.name == name, operators.c.disabled == 0)
    ).first()
    return None if row is None else _operator(row)


def all_operators(tx: Tx) -> list[OperatorRow]:
    """Every operator not disabled, by name."""
    rows = tx.execute(
        select(*_OPERATOR).where(operators.c.disabled == 0).order_by(operators.c.name)
    )
    return [_operator(r) for r in rows]


def password_hash(tx: Tx, name: str) -> str | None:
    """The stored password hash of `name` (PHC string); None if no such operator or disabled."""
    value = tx.execute(
        select(operators.c.password_hash).where(operators.c.name == name, operators.c.disabled == 0)
    ).scalar()
    return None if value is None else str(value)


def set_password_hash(tx: Tx, name: str, password_hash: str) -> None:
    tx.execute(
        update(operators).where(operators.c.name == name).values(password_hash=password_hash)
    )


def set_last_login(tx: Tx, name: str, at: str) -> None:
    tx.execute(update(operators).where(operators.c.name == name).values(last_login_at=at))


# --- failed logins -----------------------------------------------------------------------


def failures_since(tx: Tx, account: str, address: str, since: str) -> tuple[int, int]:
    """Failed logins from `address` at or after `since`: (for `account`, for any account)."""
    row = tx.execute(
        select(
            func.coalesce(func.sum(case((login_failures.c.account == account, 1), else_=0)), 0),
            func.count(),
        ).where(login_failures.c.address == address, login_failures.c.at >= since)
    ).one()
    return int(row[0]), int(row[1])


def add_failure(tx: Tx, account: str, address: str, at: str) -> None:
    tx.execute(login_failures.insert().values(account=account, address=address, at=at))


def forget_failures_before(tx: Tx, before: str) -> None:
    """Delete failed logins older than `before` (out of every rate-limit window)."""
    tx.execute(delete(login_failures).where(login_failures.c.at < before))


def clear_failures(tx: Tx, account: str, address: str) -> None:
    """Delete the failed logins of `account` from `address` (it has just logged in)."""
    tx.execute(
        delete(login_failures).where(
            login_failures.c.account == account, login_failures.c.address == address
        )
    )


# --- sessions ----------------------------------------------------------------------------


def open_session(
    tx: Tx,
    token_sha256: str,
    operator: str,
    csrf: str,
    created_at: str,
    expires_at: str,
    address: str,
) -> None:
    tx.execute(
        sessions.insert().values(
            token_sha256=token_sha256,
            operator=operator,
            csrf=csrf,
            created_at=created_at,
            expires_at=expires_at,
            last_seen_at=created_at,
            address=address,
        )
    )


def session(tx: Tx, token_sha256: str) -> SessionRow | None:
    """The session of a token digest, if its operator is not disabled; expiry is not judged."""
    row = tx.execute(
        select(
            sessions.c.csrf,
            sessions.c.expires_at,
            sessions.c.last_seen_at,
            *_OPERATOR,
        )
        .join_from(sessions, operators, operators.c.name == sessions.c.operator)
        .where(sessions.c.token_sha256 == token_sha256, operators.c.disabled == 0)
    ).first()
    if row is None:
        return None
    return SessionRow(_operator(row), str(row.csrf), str(row.expires_at), str(row.last_seen_at))


def touch_session(tx: Tx, token_sha256: str, at: str) -> None:
    """Restart a session's idle timer at `at`."""
    tx.execute(
        update(sessions).where(sessions.c.token_sha256 == token_sha256).values(last_seen_at=at)
    )


def end_session(tx: Tx, token_sha256: str) -> None:
    tx.execute(delete(sessions).where(sessions.c.token_sha256 == token_sha256))


def forget_sessions_expired_before(tx: Tx, before: str) -> None:
    """Delete sessions whose absolute end is before `before`."""
    tx.execute(delete(sessions).where(sessions.c.expires_at < before))
