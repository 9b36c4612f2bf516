"""Operator accounts: Argon2id passwords, TOTP for admins, sessions kept in the database,
login rate limits.

Roles, from least to most: `viewer` (reads everything, changes nothing), `operator`
(acknowledges alerts, quarantines and releases households), `admin` (everything).

A session is a random token in a cookie; the database keeps only its SHA-256, so a
copy of the database does not let anyone log in. A session ends 12 h after login
(absolute) or after 1 h without a request (sliding), whichever comes first.

Limits: every login attempt (a password, or a second-step code) is recorded in the store
*before* it is checked, and only while (account, client address) has fewer than 5 and the
address fewer than 20 in the last 15 minutes (server/storage/accounts.py reserve_attempt:
one step across processes); otherwise it is answered 429 unchecked. An attempt that
succeeds is deleted, so what counts is failures and checks under way. At most
`PasswordChecks.slots` passwords are hashed at once in a process; a login beyond them is
answered 503 unchecked and uncounted (server/web/password_checks.py).

Two factors: an operator with TOTP switched on (server/web/totp.py) gets, after the right
password, a challenge (a token valid 5 minutes, 3 wrong codes at most, from the same
address) that a code or a one-time recovery code turns into a session. With
`require_totp_for_admins`, an admin without TOTP enrols in that step instead.

Rows: server/storage/accounts.py.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from server.storage import Store, audit
from server.storage import accounts as stored
from server.storage.engine import Tx
from server.web import totp
from server.web.password_checks import PasswordChecks, hasher

ROLES = ("viewer", "operator", "admin")
NAME_MAX = 64
PASSWORD_MIN = 8
SESSION_ABSOLUTE = timedelta(hours=12)
SESSION_IDLE = timedelta(hours=1)
FAIL_WINDOW = timedelta(minutes=15)
FAILS_PER_ACCOUNT_AND_ADDRESS = 5
FAILS_PER_ADDRESS = 20  # spraying many account names from one address
CHALLENGE_TIME = timedelta(minutes=5)
CHALLENGE_TRIES = 3

# Verified when the account does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = hasher.hash("menwei-no-such-operator")


class AccountError(ValueError):
    """An account cannot be created or changed; the message says why."""


@dataclass(frozen=True)
class Operator:
    name: str
    role: str
    created_at: str
    last_login_at: str | None
    totp: bool = False

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
    """One step of a login. `token`: a session was opened. Refused unchecked: `limited`
    (too many attempts, 429) or `busy` (every password check slot in use, 503). `challenge`:
    the password was right and a code is due (a TOTP or recovery code; with `enrol`, the
    first code of the new secret in `uri`). `expired`: the challenge is over (log in again).
    `recovery_codes`: shown once, after enrolment. All false/None: wrong password or code."""

    token: str | None = None
    limited: bool = False
    busy: bool = False
    challenge: str | None = None
    enrol: bool = False
    uri: str | None = None
    expired: bool = False
    recovery_codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TotpStatus:
    """An operator's second factor: `enabled` since `enabled_at`; `recovery_left` unused
    recovery codes; `uri` of an enrolment under way (None if none)."""

    enabled: bool
    enabled_at: str | None
    recovery_left: int
    uri: str | None


@dataclass(frozen=True)
class CodeResult:
    """A code checked for a signed-in operator's account page: `ok`, or refused unchecked
    (`limited`); `recovery_codes` after switching TOTP on."""

    ok: bool = False
    limited: bool = False
    recovery_codes: tuple[str, ...] = ()


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def _time(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AccountStore:
    """The accounts of a site's store (server/storage/accounts.py holds the rows). Audited
    through the store's audit log, in the transaction of each change. `checks` bounds the
    password checks of this process; `site` names the issuer in TOTP URIs; `clock` is the
    time (UTC) the limits, sessions and codes are judged at."""

    def __init__(
        self,
        store: Store,
        *,
        checks: PasswordChecks | None = None,
        require_totp_for_admins: bool = False,
        site: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.checks = checks if checks is not None else PasswordChecks()
        self.require_totp_for_admins = require_totp_for_admins
        self.site = site
        self.clock = clock

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
        digest = hasher.hash(password)
        with self.store.write() as tx:
            if not stored.add_operator(tx, name, role, digest, _iso(self.clock())):
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

    def _reserve(self, tx: Tx, account: str, address: str, now: datetime) -> int | None:
        """Record an attempt before checking it (the module doc); None when limited, which
        is audited in `tx`."""
        attempt = stored.reserve_attempt(
            tx,
            account,
            address,
            _iso(now),
            _iso(now - FAIL_WINDOW),
            FAILS_PER_ACCOUNT_AND_ADDRESS,
            FAILS_PER_ADDRESS,
        )
        if attempt is None:
            audit.record(tx, account or "-", "login_limited", address)
        return attempt

    def login(self, account: str, password: str, address: str) -> LoginResult:
        """Check a password from `address`: a session, a challenge for the second step, or
        a refusal (LoginResult). Attempts are counted before the password is hashed;
        failures and refusals are audited."""
        account = account.strip()[:NAME_MAX]
        with self.checks.slot() as free:
            if not free:
                return LoginResult(busy=True)
            with self.store.write() as tx:
                attempt = self._reserve(tx, account, address, self.clock())
            if attempt is None:
                return LoginResult(limited=True)
            with self.store.read() as tx:
                known = stored.password_hash(tx, account)
            ok = self.checks.verify(known or _DUMMY_HASH, password) and known is not None
        now = self.clock()
        if not ok or known is None:
            with self.store.write() as tx:  # the attempt stays: it is a failure
                stored.forget_failures_before(tx, _iso(now - FAIL_WINDOW))
                audit.record(tx, account or "-", "login_failed", address)
            return LoginResult()
        with self.store.write() as tx:
            stored.release_attempt(tx, attempt)
            if hasher.check_needs_rehash(known):
                stored.set_password_hash(tx, account, hasher.hash(password))
            state = stored.totp(tx, account)
            operator = stored.operator(tx, account)
            if state is None or operator is None:  # disabled while its password was checked
                return LoginResult()
            if state.secret is not None:
                return LoginResult(challenge=self._challenge(tx, account, address, "code", now))
            if self.require_totp_for_admins and operator.role == "admin":
                secret = totp.new_secret()
                stored.set_totp_pending(tx, account, secret)
                token = self._challenge(tx, account, address, "enrol", now)
                return LoginResult(challenge=token, enrol=True, uri=self._uri(secret, account))
            token = self._open_session(tx, account, address, now, "password")
        return LoginResult(token=token)

    def second_step(self, challenge: str, code: str, address: str) -> LoginResult:
        """The code (TOTP or recovery) for a challenge `login` gave, from the same address:
        a session, or a refusal. Counted against the same limits as passwords, before it is
        checked; a code's time step is accepted once (no replay)."""
        now = self.clock()
        digest = _digest(challenge)
        with self.store.write() as tx:
            row = stored.challenge(tx, digest)
            if row is None or row.address != address or now >= _time(row.expires_at):
                return LoginResult(expired=True)
            state = stored.totp(tx, row.operator)
            enrol = row.purpose == "enrol"
            secret = None if state is None else state.pending if enrol else state.secret
            if secret is None:
                return LoginResult(expired=True)
            attempt = self._reserve(tx, row.operator, address, now)
            if attempt is None:
                return LoginResult(limited=True)
            how = self._check_code(tx, row.operator, secret, code, now, pending=enrol)
            if how is None:
                stored.count_challenge_try(tx, digest)
                audit.record(tx, row.operator, "login_code_failed", address)
                if row.tries + 1 >= CHALLENGE_TRIES:
                    stored.end_challenge(tx, digest)
                    return LoginResult(expired=True)
                uri = self._uri(secret, row.operator) if enrol else None
                return LoginResult(challenge=challenge, enrol=enrol, uri=uri)
            stored.release_attempt(tx, attempt)
            stored.end_challenge(tx, digest)
            codes = self._new_recovery_codes(tx, row.operator) if enrol else ()
            if enrol:
                audit.record(tx, row.operator, "totp_enable", row.operator, "at login")
            token = self._open_session(tx, row.operator, address, now, how)
        return LoginResult(token=token, recovery_codes=codes)

    def _challenge(self, tx: Tx, account: str, address: str, purpose: str, now: datetime) -> str:
        token = secrets.token_urlsafe(32)
        stored.forget_challenges_expired_before(tx, _iso(now))
        stored.open_challenge(
            tx, _digest(token), account, address, purpose, _iso(now + CHALLENGE_TIME)
        )
        return token

    def _check_code(
        self, tx: Tx, name: str, secret: str, code: str, now: datetime, *, pending: bool
    ) -> str | None:
        """How `code` is right for `name` ("totp", or "recovery code"), spending it; None when
        it is not (wrong, or a time step already accepted). A `pending` secret is being
        enrolled: its first right code switches it on."""
        code = code.strip()
        if totp.is_code(code):
            step = totp.step_of(secret, code, now)
            if step is None:
                return None
            if pending:
                stored.enable_totp(tx, name, secret, _iso(now), step)
                return "totp"
            return "totp" if stored.use_totp_step(tx, name, step) else None
        if pending or not code:
            return None
        if not stored.use_recovery_code(tx, name, totp.recovery_digest(code), _iso(now)):
            return None
        left = stored.recovery_codes_left(tx, name)
        audit.record(tx, name, "totp_recovery_used", name, f"{left} left")
        return "recovery code"

    def _open_session(self, tx: Tx, account: str, address: str, now: datetime, how: str) -> str:
        token = secrets.token_urlsafe(32)
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
        audit.record(tx, account, "login", address, how)
        return token

    # --- the second factor ------------------------------------------------------------

    def _uri(self, secret: str, name: str) -> str:
        return totp.uri(secret, name, self.site)

    def _new_recovery_codes(self, tx: Tx, name: str) -> tuple[str, ...]:
        codes = totp.new_recovery_codes()
        stored.set_recovery_codes(tx, name, [totp.recovery_digest(c) for c in codes])
        return tuple(codes)

    def totp_status(self, name: str) -> TotpStatus:
        """The second factor of `name`. Raises AccountError for an unknown operator."""
        with self.store.read() as tx:
            state = stored.totp(tx, name)
            left = stored.recovery_codes_left(tx, name)
        if state is None:
            raise AccountError(f"no operator {name!r}")
        uri = None if state.pending is None else self._uri(state.pending, name)
        return TotpStatus(state.secret is not None, state.enabled_at, left, uri)

    def start_enrolment(self, name: str) -> str:
        """A new secret for `name`, pending until `confirm_enrolment`: its otpauth URI.
        Raises AccountError for an unknown operator or one whose TOTP is on already."""
        secret = totp.new_secret()
        with self.store.write() as tx:
            state = stored.totp(tx, name)
            if state is None:
                raise AccountError(f"no operator {name!r}")
            if state.secret is not None:
                raise AccountError(f"two-factor login is already on for {name!r}")
            stored.set_totp_pending(tx, name, secret)
        return self._uri(secret, name)

    def confirm_enrolment(self, name: str, code: str, address: str) -> CodeResult:
        """Switch TOTP on for `name` if `code` is right for the pending secret (the attempt
        counted first, as at login): the new recovery codes, shown once."""

        def switch_on(tx: Tx, state: stored.TotpRow, now: datetime) -> tuple[str, ...] | None:
            if state.pending is None:
                return None
            if self._check_code(tx, name, state.pending, code, now, pending=True) is None:
                return None
            audit.record(tx, name, "totp_enable", name, "account page")
            return self._new_recovery_codes(tx, name)

        return self._code_attempt(name, address, switch_on)

    def disable_with_code(self, name: str, code: str, address: str) -> CodeResult:
        """Switch TOTP off for `name` if `code` (TOTP or recovery) is right (counted first)."""

        def switch_off(tx: Tx, state: stored.TotpRow, now: datetime) -> tuple[str, ...] | None:
            if state.secret is None:
                return None
            if self._check_code(tx, name, state.secret, code, now, pending=False) is None:
                return None
            stored.disable_totp(tx, name)
            audit.record(tx, name, "totp_disable", name, "account page")
            return ()

        return self._code_attempt(name, address, switch_off)

    def _code_attempt(
        self,
        name: str,
        address: str,
        change: Callable[[Tx, stored.TotpRow, datetime], tuple[str, ...] | None],
    ) -> CodeResult:
        now = self.clock()
        with self.store.write() as tx:
            state = stored.totp(tx, name)
            if state is None:
                return CodeResult()
            attempt = self._reserve(tx, name, address, now)
            if attempt is None:
                return CodeResult(limited=True)
            codes = change(tx, state, now)
            if codes is None:
                audit.record(tx, name, "totp_code_failed", address)
                return CodeResult()
            stored.release_attempt(tx, attempt)
        return CodeResult(ok=True, recovery_codes=codes)

    def enable_totp(self, name: str, *, actor: str) -> tuple[str, tuple[str, ...]]:
        """Switch TOTP on for `name` at once with a new secret (the command line, run by
        whoever administers the server): its otpauth URI and new recovery codes, to be shown
        once. Replaces a secret already on. Raises AccountError for an unknown operator."""
        secret = totp.new_secret()
        with self.store.write() as tx:
            if stored.totp(tx, name) is None:
                raise AccountError(f"no operator {name!r}")
            stored.enable_totp(tx, name, secret, _iso(self.clock()), None)
            codes = self._new_recovery_codes(tx, name)
            audit.record(tx, actor, "totp_enable", name, "command line")
        return self._uri(secret, name), codes

    def disable_totp(self, name: str, *, actor: str) -> bool:
        """Switch TOTP off for `name` (the command line: an admin who lost the phone and the
        recovery codes); False if it was off. Raises AccountError for an unknown operator."""
        with self.store.write() as tx:
            state = stored.totp(tx, name)
            if state is None:
                raise AccountError(f"no operator {name!r}")
            stored.disable_totp(tx, name)
            if state.secret is not None:
                audit.record(tx, actor, "totp_disable", name, "command line")
        return state.secret is not None

    # --- sessions ---------------------------------------------------------------------

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie token, its idle timer restarted; None if expired."""
        if not token:
            return None
        now = self.clock()
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
    return Operator(row.name, row.role, row.created_at, row.last_login_at, row.totp)
