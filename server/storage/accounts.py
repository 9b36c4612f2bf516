"""Dashboard accounts as stored: operators, sessions (by token digest), login attempts,
the second step of a login, TOTP secrets and recovery codes (by digest).

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

from server.storage.engine import Tx, lock
from server.storage.schema import (
    login_challenges,
    login_failures,
    operators,
    recovery_codes,
    sessions,
)

_OPERATOR = (
    operators.c.name,
    operators.c.role,
    operators.c.created_at,
    operators.c.last_login_at,
    operators.c.totp_enabled_at,
)


@dataclass(frozen=True)
class OperatorRow:
    """An operator account that is not disabled; `totp`: its second factor is on."""

    name: str
    role: str
    created_at: str
    last_login_at: str | None
    totp: bool = False


@dataclass(frozen=True)
class SessionRow:
    """A stored session of an operator not disabled; times as stored (ISO 8601 UTC)."""

    operator: OperatorRow
    csrf: str
    expires_at: str
    last_seen_at: str


def _operator(row: Any) -> OperatorRow:
    return OperatorRow(
        str(row.name),
        str(row.role),
        str(row.created_at),
        row.last_login_at,
        row.totp_enabled_at is not None,
    )


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


def reserve_attempt(
    tx: Tx, account: str, address: str, at: str, since: str, per_pair: int, per_address: int
) -> int | None:
    """Record a login attempt of `account` from `address` at `at` before it is checked, unless
    `address` already has `per_pair` attempts for `account` or `per_address` in all at or
    after `since`: the attempt's id, or None (limited, nothing recorded). The count and the
    insert are one step for every process on the store: the address's lock (PostgreSQL) or
    the write transaction (SQLite) makes concurrent attempts from an address wait in turn,
    so N simultaneous guesses cannot all pass the count. The attempt counts as a failure
    until `release_attempt` deletes it."""
    lock(tx, f"login:{address}")
    pair, by_address = failures_since(tx, account, address, since)
    if pair >= per_pair or by_address >= per_address:
        return None
    inserted = tx.execute(
        login_failures.insert()
        .values(account=account, address=address, at=at)
        .returning(login_failures.c.id)
    )
    return int(inserted.scalar_one())


def release_attempt(tx: Tx, attempt: int) -> None:
    """Delete a reserved attempt: it succeeded (it is no failure)."""
    tx.execute(delete(login_failures).where(login_failures.c.id == attempt))


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


# --- the second step of a login ----------------------------------------------------------


@dataclass(frozen=True)
class ChallengeRow:
    """A login whose password was right, waiting for a code (`purpose` "code") or for
    enrolment ("enrol"); `tries`: wrong codes given to it so far."""

    operator: str
    address: str
    purpose: str
    expires_at: str
    tries: int


def open_challenge(
    tx: Tx, token_sha256: str, operator: str, address: str, purpose: str, expires_at: str
) -> None:
    tx.execute(
        login_challenges.insert().values(
            token_sha256=token_sha256,
            operator=operator,
            address=address,
            purpose=purpose,
            expires_at=expires_at,
        )
    )


def challenge(tx: Tx, token_sha256: str) -> ChallengeRow | None:
    """The challenge of a token digest, if its operator is not disabled; expiry not judged."""
    row = tx.execute(
        select(
            login_challenges.c.operator,
            login_challenges.c.address,
            login_challenges.c.purpose,
            login_challenges.c.expires_at,
            login_challenges.c.tries,
        )
        .join_from(login_challenges, operators, operators.c.name == login_challenges.c.operator)
        .where(login_challenges.c.token_sha256 == token_sha256, operators.c.disabled == 0)
    ).first()
    if row is None:
        return None
    return ChallengeRow(
        str(row.operator), str(row.address), str(row.purpose), str(row.expires_at), int(row.tries)
    )


def count_challenge_try(tx: Tx, token_sha256: str) -> None:
    tx.execute(
        update(login_challenges)
        .where(login_challenges.c.token_sha256 == token_sha256)
        .values(tries=login_challenges.c.tries + 1)
    )


def end_challenge(tx: Tx, token_sha256: str) -> None:
    tx.execute(delete(login_challenges).where(login_challenges.c.token_sha256 == token_sha256))


def forget_challenges_expired_before(tx: Tx, before: str) -> None:
    tx.execute(delete(login_challenges).where(login_challenges.c.expires_at < before))


# --- TOTP and recovery codes ---------------------------------------------------------------


@dataclass(frozen=True)
class TotpRow:
    """An operator's TOTP state: `secret` (base32) once switched on, at `enabled_at`;
    `pending` a secret shown for enrolment, not yet confirmed; `last_step` the newest time
    step whose code was accepted."""

    secret: str | None
    pending: str | None
    enabled_at: str | None
    last_step: int | None


def totp(tx: Tx, name: str) -> TotpRow | None:
    """The TOTP state of `name`; None if there is no such operator or it is disabled."""
    row = tx.execute(
        select(
            operators.c.totp_secret,
            operators.c.totp_pending,
            operators.c.totp_enabled_at,
            operators.c.totp_last_step,
        ).where(operators.c.name == name, operators.c.disabled == 0)
    ).first()
    if row is None:
        return None
    step = None if row.totp_last_step is None else int(row.totp_last_step)
    return TotpRow(row.totp_secret, row.totp_pending, row.totp_enabled_at, step)


def set_totp_pending(tx: Tx, name: str, secret: str | None) -> None:
    """Keep `secret` as the one being enrolled (None: no enrolment under way)."""
    tx.execute(update(operators).where(operators.c.name == name).values(totp_pending=secret))


def enable_totp(tx: Tx, name: str, secret: str, at: str, step: int | None) -> None:
    """Switch TOTP on with `secret` (the pending one is dropped); `step` is the time step
    of the code that confirmed it (accepted: not again), None when none was given."""
    tx.execute(
        update(operators)
        .where(operators.c.name == name)
        .values(totp_secret=secret, totp_pending=None, totp_enabled_at=at, totp_last_step=step)
    )


def disable_totp(tx: Tx, name: str) -> None:
    """Switch TOTP off: the secret, any pending one and the recovery codes are deleted."""
    tx.execute(
        update(operators)
        .where(operators.c.name == name)
        .values(totp_secret=None, totp_pending=None, totp_enabled_at=None, totp_last_step=None)
    )
    tx.execute(delete(recovery_codes).where(recovery_codes.c.operator == name))


def use_totp_step(tx: Tx, name: str, step: int) -> bool:
    """Accept a code of time step `step` for `name` once: False (nothing changed) when a code
    of this step or a later one was already accepted. One compare-and-set statement, so two
    processes given the same code accept it once."""
    done = tx.execute(
        update(operators)
        .where(
            operators.c.name == name,
            (operators.c.totp_last_step.is_(None)) | (operators.c.totp_last_step < step),
        )
        .values(totp_last_step=step)
    )
    return done.rowcount == 1


def set_recovery_codes(tx: Tx, name: str, digests: list[str]) -> None:
    """Replace `name`'s recovery codes by these SHA-256 digests (all unused)."""
    tx.execute(delete(recovery_codes).where(recovery_codes.c.operator == name))
    if digests:
        tx.execute(recovery_codes.insert(), [{"operator": name, "code_sha256": d} for d in digests])


def use_recovery_code(tx: Tx, name: str, digest: str, at: str) -> bool:
    """Spend the unused recovery code of this digest at `at`; False if there is none (also
    when it was spent already). One statement: a code is spent once, whoever asks."""
    done = tx.execute(
        update(recovery_codes)
        .where(
            recovery_codes.c.operator == name,
            recovery_codes.c.code_sha256 == digest,
            recovery_codes.c.used_at.is_(None),
        )
        .values(used_at=at)
    )
    return done.rowcount == 1


def recovery_codes_left(tx: Tx, name: str) -> int:
    return int(
        tx.execute(
            select(func.count())
            .select_from(recovery_codes)
            .where(recovery_codes.c.operator == name, recovery_codes.c.used_at.is_(None))
        ).scalar_one()
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
