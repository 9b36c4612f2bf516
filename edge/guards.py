"""The guards who may open the gate from the guard page, and the check every override passes.

Each guard has a name and a PIN of digits (at least PIN_MIN, no trivial ones such as
000000 or 123456), enrolled on the gate with `menwei gate guard add`. The gate keeps
only an Argon2id hash of each PIN, in `DATA_DIR/guards.json`, mode 0600 (owned by the
data folder's owner when root enrols: the service's user reads it).

Argon2id parameters: 19 MiB, 2 passes, 1 lane (OWASP's first choice). Measured on a
2-core x86 build machine: 27 ms and +19 MiB of resident memory per hash; a Pi 4's
Cortex-A72 is several times slower (an estimate, not measured on a Pi: roughly
0.1-0.2 s). At most MAX_CONCURRENT_HASHES run at once, so the guard page adds at most
about 40 MiB to the gate's 512 MiB (MemoryMax of the shipped unit).

Limits, counted before any hash is computed (so concurrent guesses cannot outrun them):
- per guard: WRONG_PER_GUARD wrong PINs lock that guard for LOCK_S; each further lock in a
  row doubles, up to LOCK_MAX_S; a right PIN ends the series;
- in total: ATTEMPTS_PER_MINUTE attempts (any name) a minute;
- at most MAX_CONCURRENT_HASHES hashes at once (a further attempt waits HASH_WAIT_S, then
  is refused as busy).
Locks are kept in memory: a restart of the daemon ends them. Every lock is reported
(`on_lockout`): the daemon logs it and records a `guard_locked` alert event.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from protocol.errors import ProtocolError
from protocol.reasons import Message

GUARDS_FILE = "guards.json"
PIN_MIN = 6
PIN_MAX = 12
NAME_MAX = 32
MAX_GUARDS = 200
MAX_FILE_BYTES = 256 * 1024
WRONG_PER_GUARD = 5
LOCK_S = 300.0
LOCK_MAX_S = 3600.0
ATTEMPTS_PER_MINUTE = 20
MAX_CONCURRENT_HASHES = 2
HASH_WAIT_S = 5.0
MAX_STRANGERS = 256
"""Names nobody enrolled whose wrong PINs are counted (to lock them like a guard's)."""
MAX_SHOWN_NAME = 32
"""Characters of a name nobody enrolled shown in the lock's log line and alert."""

_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

# Well-known PINs that are not plain repeats or runs (those are refused by pattern).
_COMMON = frozenset(
    {"112233", "123321", "147258", "147369", "159357", "159753", "258369", "5201314", "1314520"}
)


class GuardError(ProtocolError):
    """A guard cannot be enrolled or removed, or guards.json cannot be used; says why."""


@dataclass(frozen=True)
class Guard:
    name: str
    pin_hash: str
    added_at: str
    """UTC, ISO 8601 to the second."""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "added_at": self.added_at}


@dataclass(frozen=True)
class OverrideRefused:
    """Why an override was not made: `code`, the text for the guard and the HTTP status."""

    code: str
    """no_guards | wrong_pin | locked | busy | guards_unreadable | storage_fault"""
    message: Message
    status: int
    retry_after_s: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.code, **self.message.as_dict()}
        if self.retry_after_s is not None:
            out["retry_after_s"] = self.retry_after_s
        return out


NO_GUARDS = OverrideRefused(
    "no_guards",
    Message(
        "尚未登记门卫，不能人工放行：请安装人员在闸机上运行 menwei gate guard add 登记门卫及其 PIN",
        "No guard is enrolled, so no override: an installer enrols one on the gate with "
        "`menwei gate guard add GATE_DIR NAME`",
    ),
    503,
)
WRONG_PIN = OverrideRefused(
    "wrong_pin", Message("门卫姓名或 PIN 不正确", "Wrong guard name or PIN"), 403
)
BUSY = OverrideRefused(
    "busy",
    Message("尝试过于频繁，请一分钟后再试", "Too many attempts: try again in a minute"),
    429,
    60,
)


def locked(seconds: float) -> OverrideRefused:
    minutes = max(1, int(-(-seconds // 60)))
    return OverrideRefused(
        "locked",
        Message(
            f"PIN 错误次数过多，该门卫已锁定 {minutes} 分钟",
            f"Too many wrong PINs: this guard is locked for {minutes} minutes",
        ),
        429,
        int(-(-seconds // 1)),
    )


def unreadable(path: Path, error: str) -> OverrideRefused:
    return OverrideRefused(
        "guards_unreadable",
        Message(
            f"门卫名单无法读取，不能人工放行（{path}）",
            f"The guard list cannot be read, so no override ({error})",
        ),
        503,
    )


# --- names and PINs -------------------------------------------------------------------------


def name_key(name: str) -> str:
    """The form names are compared in: NFC, case-folded, outer spaces removed."""
    return unicodedata.normalize("NFC", name).strip().casefold()


def check_name(name: str) -> str:
    """The name as stored (NFC, stripped). Raises GuardError for an empty, long or
    unprintable name."""
    name = unicodedata.normalize("NFC", name).strip()
    if not name or len(name) > NAME_MAX or not name.isprintable():
        raise GuardError(f"a guard's name must be 1-{NAME_MAX} printable characters")
    return name


def check_pin(pin: str) -> None:
    """Raises GuardError unless `pin` is PIN_MIN..PIN_MAX ASCII digits and not trivial."""
    if not (PIN_MIN <= len(pin) <= PIN_MAX) or not pin.isascii() or not pin.isdigit():
        raise GuardError(f"a PIN must be {PIN_MIN}-{PIN_MAX} digits")
    steps = {(int(b) - int(a)) % 10 for a, b in itertools.pairwise(pin)}
    repeats = any(pin == (pin[:n] * len(pin))[: len(pin)] for n in (1, 2, 3))
    if repeats or steps in ({1}, {9}) or pin in _COMMON:
        raise GuardError(
            "that PIN is too easy to guess (repeated digits, a run like 123456, or a common"
            " PIN): choose another"
        )


# --- the file -------------------------------------------------------------------------------


def guards_path(data_dir: Path) -> Path:
    return data_dir / GUARDS_FILE


def read_guards(path: Path) -> list[Guard]:
    """The enrolled guards ([] when the file does not exist). Raises GuardError for a file
    that cannot be read or is damaged, OSError's message included."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise GuardError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise GuardError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        data = json.loads(raw)
        return [
            Guard(str(g["name"]), str(g["pin_hash"]), str(g["added_at"])) for g in data["guards"]
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise GuardError(f"{path}: damaged ({exc}): enrol the guards again") from None


def write_guards(path: Path, guards: list[Guard]) -> None:
    """Replace the file atomically, mode 0600; owned like its folder when root writes it."""
    body = json.dumps(
        {"guards": [{**g.to_json(), "pin_hash": g.pin_hash} for g in guards]},
        ensure_ascii=False,
        indent=1,
    ).encode()
    fd, tmp = tempfile.mkstemp(prefix=".guards-", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        if os.geteuid() == 0:  # `sudo menwei gate guard add`: the service's user must read it
            folder = path.parent.stat()
            os.chown(tmp, folder.st_uid, folder.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def add_guard(data_dir: Path, name: str, pin: str) -> Guard:
    """Enrol a guard. Raises GuardError for a bad name or PIN, a name already enrolled, or
    more than MAX_GUARDS."""
    name = check_name(name)
    check_pin(pin)
    path = guards_path(data_dir)
    guards = read_guards(path)
    if any(name_key(g.name) == name_key(name) for g in guards):
        raise GuardError(f"guard {name!r} is already enrolled (remove it first to change the PIN)")
    if len(guards) >= MAX_GUARDS:
        raise GuardError(f"at most {MAX_GUARDS} guards per gate")
    guard = Guard(name, _hasher.hash(pin), datetime.now(UTC).isoformat(timespec="seconds"))
    write_guards(path, [*guards, guard])
    return guard


def remove_guard(data_dir: Path, name: str) -> Guard:
    """Remove a guard. Raises GuardError when no guard has that name."""
    path = guards_path(data_dir)
    guards = read_guards(path)
    gone = [g for g in guards if name_key(g.name) == name_key(name)]
    if not gone:
        raise GuardError(f"no guard named {name!r} is enrolled")
    write_guards(path, [g for g in guards if g not in gone])
    return gone[0]


# --- the check ------------------------------------------------------------------------------


@dataclass
class _Tries:
    wrong: int = 0
    """Wrong PINs (and checks under way) since the last lock or right PIN."""
    locked_until: float = 0.0
    locks_in_a_row: int = 0


class GuardCheck:
    """Checks a (guard, PIN) from the guard page against guards.json, within the limits
    above. Thread-safe: the page calls it from its worker threads. `clock` is monotonic
    seconds (injected by tests); `on_lockout(guard, seconds)` is called (outside the lock)
    for each new lock, `guard` None for the total cap."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_lockout: Callable[[str | None, float], None] | None = None,
    ) -> None:
        self.path = path
        self._clock = clock
        self._on_lockout = on_lockout
        self._lock = threading.Lock()
        self._hashes = threading.BoundedSemaphore(MAX_CONCURRENT_HASHES)
        self._guards: dict[str, Guard] = {}
        self._seen: tuple[int, int, int] | None = None
        self.error: str | None = None
        """Why guards.json cannot be used (every override is then refused), else None."""
        self._tries: dict[str, _Tries] = {}
        self._strangers: dict[str, _Tries] = {}
        """Counts of names not enrolled (kept apart: an enrolment does not inherit them)."""
        self._recent: deque[float] = deque()
        self._capped_until = 0.0
        self.lockouts = 0
        """Locks since start (per guard, and the total cap reached)."""
        self._dummy: str | None = None

    def _reload(self) -> None:
        """Read guards.json again when it changed (an enrolment while the gate runs)."""
        try:
            st = self.path.stat()
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = (0, 0, 0)
        except OSError as exc:
            self.error, self._guards, self._seen = f"{self.path}: {exc.strerror}", {}, None
            return
        if seen == self._seen:
            return
        try:
            guards = read_guards(self.path)
        except GuardError as exc:
            self.error, self._guards, self._seen = str(exc), {}, None
            return
        self.error, self._seen = None, seen
        self._guards = {name_key(g.name): g for g in guards}
        self._tries = {k: v for k, v in self._tries.items() if k in self._guards}
        self._strangers = {k: v for k, v in self._strangers.items() if k not in self._guards}

    def enrolled(self) -> int:
        with self._lock:
            self._reload()
            return len(self._guards)

    def locked_guards(self) -> list[str]:
        """Names of the guards locked now."""
        with self._lock:
            now = self._clock()
            return [
                self._guards[k].name
                for k, t in self._tries.items()
                if t.locked_until > now and k in self._guards
            ]

    def verify(self, name: str, pin: str) -> Guard | OverrideRefused:
        """The enrolled guard when `pin` is theirs, else why not. Never raises for bad input."""
        key = name_key(name)
        lockout: tuple[str | None, float] | None = None
        with self._lock:
            self._reload()
            if self.error is not None:
                return unreadable(self.path, self.error)
            if not self._guards:
                return NO_GUARDS
            now = self._clock()
            guard = self._guards.get(key)
            tries = self._tries_of(key, guard is not None)
            if tries.locked_until > now:
                return locked(tries.locked_until - now)
            while self._recent and self._recent[0] <= now - 60:
                self._recent.popleft()
            if len(self._recent) >= ATTEMPTS_PER_MINUTE:
                if self._capped_until <= now:  # once per minute the cap is reached
                    self._capped_until = now + 60
                    self.lockouts += 1
                    lockout = (None, 60.0)
                refused: OverrideRefused | None = BUSY
            else:
                refused = None
                self._recent.append(now)
                tries.wrong += 1  # counted as wrong until the hash says otherwise
                if tries.wrong >= WRONG_PER_GUARD:
                    tries.locked_until = now + self._lock_s(tries)
        if refused is not None:
            self._report(lockout)
            return refused
        right = self._hash_check(guard, pin)
        with self._lock:
            now = self._clock()
            if right is None:  # no hash was computed: not the guard's fault
                tries.wrong = max(0, tries.wrong - 1)
                if tries.wrong < WRONG_PER_GUARD:
                    tries.locked_until = 0.0
                return BUSY
            if right and guard is not None:
                tries.wrong, tries.locked_until, tries.locks_in_a_row = 0, 0.0, 0
                return guard
            if tries.wrong >= WRONG_PER_GUARD:
                seconds = tries.locked_until - now
                tries.wrong = 0
                tries.locks_in_a_row += 1
                self.lockouts += 1
                shown = guard.name if guard else f"{name[:MAX_SHOWN_NAME]} (not enrolled)"
                lockout = (shown, seconds)
        if lockout is not None:
            self._report(lockout)
            return locked(lockout[1])
        return WRONG_PIN

    def _tries_of(self, key: str, enrolled: bool) -> _Tries:
        """The counts of the name `key`. A name nobody enrolled is counted and locked the same
        way, so the 429 "locked" answer does not tell which names are enrolled; at most
        MAX_STRANGERS such names are kept (the oldest is forgotten first)."""
        tries = self._tries.get(key) if enrolled else self._strangers.get(key)
        if tries is not None:
            return tries
        tries = _Tries()
        if enrolled:
            self._tries[key] = tries
        else:
            if len(self._strangers) >= MAX_STRANGERS:
                del self._strangers[next(iter(self._strangers))]
            self._strangers[key] = tries
        return tries

    def _lock_s(self, tries: _Tries) -> float:
        return float(min(LOCK_MAX_S, LOCK_S * 2**tries.locks_in_a_row))

    def _hash_check(self, guard: Guard | None, pin: str) -> bool | None:
        """Is `pin` the guard's (a dummy hash for an unknown name, so both cost the same)?
        None when no hash slot came free within HASH_WAIT_S."""
        if not self._hashes.acquire(timeout=HASH_WAIT_S):
            return None
        try:
            if guard is None:
                if self._dummy is None:
                    self._dummy = _hasher.hash("menwei-no-such-guard")
                with contextlib.suppress(VerificationError, InvalidHashError):
                    _hasher.verify(self._dummy, pin)
                return False
            try:
                return bool(_hasher.verify(guard.pin_hash, pin))
            except (VerificationError, InvalidHashError):
                return False
        finally:
            self._hashes.release()

    def _report(self, lockout: tuple[str | None, float] | None) -> None:
        if lockout is not None and self._on_lockout is not None:
            self._on_lockout(*lockout)
