"""The connection to the collector's database: SQLite (one file) or PostgreSQL.

A `Store` owns a SQLAlchemy engine (SQLAlchemy Core 2.x: one query written once
runs on both backends; the pool, the drivers and their type conversion are
theirs) and hands out transactions: `read()` for a consistent read, `write()`
for a change. Outside `server/storage/` a transaction (`Tx`) is opaque: it is
passed to the storage modules' functions, never used to run SQL.

SQLite: every connection uses WAL and `synchronous=FULL` (a committed event
survives a power cut) and waits up to 30 s for a lock. `write()` begins with
`BEGIN IMMEDIATE` (https://sqlite.org/lang_transaction.html): the write lock
is taken first, so two writers never deadlock upgrading a read lock, and what
is read inside is still true at commit. pysqlite's own transaction handling
is switched off for that (SQLAlchemy's documented recipe, "Serializable
isolation / Savepoints / Transactional DDL" in its SQLite dialect notes).

PostgreSQL (psycopg 3): READ COMMITTED; writers that must not interleave take
a transaction-level advisory lock (`lock()`), released at commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

from protocol.errors import ProtocolError
from protocol.files import create_private

Tx = Connection
"""One transaction of a Store. Opaque outside server/storage/: pass it, never execute on it."""

Backend = Literal["sqlite", "postgresql"]
S = TypeVar("S")
SQLITE_FILE = "server.db"
"""The default store of a server directory: this SQLite file in it."""


class StoreUnavailable(Exception):
    """The store cannot be reached or used right now (PostgreSQL down or unreachable, a
    SQLite file locked past the busy timeout, its disk full or failing). Nothing of the
    transaction was committed; trying again later may succeed. Not a ProtocolError: no
    input was wrong."""


_SQLITE_UNAVAILABLE = ("locked", "busy", "disk i/o", "unable to open", "full", "readonly")


def unavailable(exc: BaseException) -> bool:
    """Whether a driver error says the database is out of reach or out of service, rather
    than that a statement was wrong (a bug: let it raise as it is)."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        return isinstance(exc, OperationalError | InterfaceError) and _driver_unavailable(exc)
    return isinstance(exc, sqlite3.Error) and _driver_unavailable(exc)


def _driver_unavailable(exc: BaseException) -> bool:
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, sqlite3.Error):
        return isinstance(orig, sqlite3.OperationalError) and any(
            word in str(orig).lower() for word in _SQLITE_UNAVAILABLE
        )
    return True  # psycopg: OperationalError / InterfaceError are the connection's


class StoreError(ProtocolError):
    """The store cannot be opened or used as configured; the message says why and what to do."""


def default_url(directory: Path) -> str:
    """The SQLite file of a server directory, as a SQLAlchemy URL."""
    return f"sqlite:///{(directory / SQLITE_FILE).resolve()}"


def normalise_url(url: str) -> str:
    """`postgresql://…` (libpq's form, what operators write) → psycopg 3's SQLAlchemy URL;
    `sqlite:///PATH` (PATH absolute) unchanged. Raises StoreError for anything else, and for a
    SQLite path that is relative (it would name another file in each working directory:
    the service's and an operator's commands would use two stores) or has a query string
    (the store sets SQLite's options itself; pysqlite ignores most, e.g. `?mode=ro`)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise StoreError(
            f"[store] url {redacted(url)!r} is not a database URL:"
            " use sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE"
        ) from None
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        if not parsed.database or parsed.database == ":memory:":
            raise StoreError("[store] url: a SQLite store needs a file path (sqlite:///PATH)")
        if not Path(parsed.database).is_absolute():
            raise StoreError(
                f"[store] url {redacted(url)!r}: the SQLite path must be absolute"
                " (sqlite:////srv/menwei/server.db), not relative to the working directory"
            )
        if parsed.query:
            raise StoreError(
                f"[store] url {redacted(url)!r}: a SQLite URL takes no options"
                " (?...): the store sets them itself"
            )
        return url
    raise StoreError(
        f"[store] url {redacted(url)!r}: use sqlite:///PATH or postgresql://USER@HOST/DATABASE"
    )


SECRET_OPTIONS = frozenset({"password", "sslpassword"})
"""Query options of a PostgreSQL URL that hold a secret (libpq takes `?password=` too)."""


def redacted(url: str) -> str:
    """The URL without its password (`***` in its place, also for `?password=` and
    `?sslpassword=`), for logs and messages; in text that is not a URL, whatever stands
    between a `:` and an `@`, and after `password=`."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        hidden = re.sub(r":[^:@/\s]*@", ":***@", url)
        return re.sub(r"(?i)((?:ssl)?password=)[^&\s]*", r"\1***", hidden)
    secrets = {k: "***" for k in parsed.query if k.lower() in SECRET_OPTIONS}
    if secrets:
        parsed = parsed.update_query_dict(secrets)
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


class Store:
    """The collector's database at `url` (sqlite:///PATH or postgresql://…), migrated to the
    newest schema on open (server/storage/migrate.py) unless `migrate=False`.

    Raises StoreError, naming the URL without its password, when the URL is not one of
    those, the database cannot be reached or read (a PostgreSQL server that is down waits
    `connect_timeout`, 10 s unless the URL says otherwise), or its schema is newer than
    this program's."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = normalise_url(url)
        self.label = redacted(url)
        """The URL as configured, without its password: how messages name this store."""
        self.backend: Backend = "postgresql" if self.url.startswith("postgresql") else "sqlite"
        self.engine = _engine(self.url, self.backend)
        self._closed = False
        if migrate:
            from server.storage.migrate import upgrade

            try:
                upgrade(self)
            except BaseException as exc:
                # Not close(): a subclass's close() may need what its __init__ had no time to make.
                self._closed = True
                self.engine.dispose()
                if isinstance(exc, StoreUnavailable):
                    exc = exc.__cause__ or exc
                if isinstance(exc, DBAPIError | sqlite3.Error):
                    raise StoreError(
                        f"cannot open the store {self.label}: {_reason(exc)}"
                    ) from None
                raise

    @property
    def sqlite_file(self) -> Path | None:
        """The database file of a SQLite store (its -wal and -shm sit beside it); None for
        PostgreSQL."""
        if self.backend != "sqlite":
            return None
        return Path(make_url(self.url).database or "")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        """A read-only transaction: every query inside sees one state of the database.
        Raises StoreUnavailable when the database cannot be reached or used right now."""
        with self._unavailable_as_error(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def write(self) -> Iterator[Tx]:
        """One write transaction, committed when the block ends, rolled back if it raises.
        On SQLite it holds the database's write lock from its first statement. Raises
        StoreUnavailable when the database cannot be reached or used right now."""
        with self._unavailable_as_error(), self.engine.connect() as conn:
            conn.execution_options(menwei_write=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _unavailable_as_error(self) -> Iterator[None]:
        try:
            yield
        except (DBAPIError, sqlite3.Error) as exc:
            if not unavailable(exc):
                raise
            raise StoreUnavailable(
                f"the store {self.label} is unavailable: {_reason(exc)}"
            ) from exc


def lock(tx: Tx, name: str) -> None:
    """Serialise, across every process on this store, the transactions that take the lock
    `name` (one household's conflict replay, one job): held until `tx` ends. A PostgreSQL
    transaction-level advisory lock; on SQLite a write transaction already excludes every
    other writer. A lock this transaction already holds is not asked for again (lock_all)."""
    lock_all(tx, (name,))


def lock_all(tx: Tx, names: Iterable[str]) -> None:
    """`lock` for each of `names`, in one statement, in ascending order of their keys: two
    transactions that take their sets of locks this way (one gate's batches and their
    households, say) never wait for each other in a cycle. PostgreSQL evaluates the volatile
    lock function after the sort (see "ORDER BY" in its SELECT documentation). The locks
    this transaction already took this way are not asked for again (a collector's group
    takes all its gates' and households' locks first; the storage functions it calls then
    cost no round trip for theirs). No-op on SQLite, as `lock`."""
    if tx.dialect.name != "postgresql":
        return
    transaction = tx.get_transaction()
    held: tuple[object, set[int]] | None = tx.info.get("menwei_locks")
    if held is None or held[0] is not transaction:
        held = tx.info["menwei_locks"] = (transaction, set())
    keys = sorted({lock_key(n) for n in names} - held[1])
    if keys:
        tx.execute(
            text(
                "SELECT pg_advisory_xact_lock(k)"
                " FROM unnest(CAST(:keys AS bigint[])) AS k ORDER BY k"
            ),
            {"keys": keys},
        )
        held[1].update(keys)


def insert(tx: Tx, table: Any) -> Any:
    """An INSERT of `tx`'s dialect, which has `on_conflict_do_nothing()` and
    `on_conflict_do_update()` (the same API on SQLite and PostgreSQL)."""
    return dialect_insert(tx.dialect.name, table)


def dialect_insert(dialect: str, table: Any) -> Any:
    """`insert` for the dialect named `dialect` ("sqlite" or "postgresql")."""
    return (postgresql if dialect == "postgresql" else sqlite).insert(table)


_PREPARED: dict[tuple[Callable[[str], Any], str], Any] = {}


def prepared(tx: Tx, build: Callable[[str], S]) -> S:
    """The statement `build(dialect name)` for `tx`'s dialect, built once and kept: for a
    statement with bind parameters that a hot path runs again and again (building a Core
    statement costs several times what SQLite takes to run it, and SQLAlchemy reuses the
    compiled form of the same statement object)."""
    key = (build, tx.dialect.name)
    statement = _PREPARED.get(key)
    if statement is None:
        statement = _PREPARED[key] = build(tx.dialect.name)
    return cast(S, statement)


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for `name` (PostgreSQL advisory locks take a bigint)."""
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )


def _reason(exc: DBAPIError | sqlite3.Error) -> str:
    """The driver's own words for a failure, on one line (psycopg adds hints on more)."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    lines = str(orig).strip().splitlines()
    return lines[0].strip() if lines else type(orig).__name__


CONNECT_TIMEOUT_S = 10
"""How long a PostgreSQL connection attempt waits (libpq waits forever by default)."""


def _engine(url: str, backend: Backend) -> Engine:
    if backend == "postgresql":
        timeout = (
            {}
            if "connect_timeout" in make_url(url).query
            else {"connect_timeout": CONNECT_TIMEOUT_S}
        )
        return create_engine(
            url, pool_pre_ping=True, pool_size=4, max_overflow=8, connect_args=timeout
        )
    path = make_url(url).database or ""
    if not Path(path).parent.is_dir():
        raise StoreError(f"[store] url: directory of {path} does not exist")
    if not Path(path).exists():
        # 0600 from the start (names, phones, password hashes): SQLite gives its -wal and
        # -shm files the database file's mode, and an empty file is a new database to it.
        create_private(Path(path))
    # Pooled connections stay open: closing SQLite's last connection checkpoints the WAL.
    engine = create_engine(
        url, pool_size=4, max_overflow=8, connect_args={"check_same_thread": False, "timeout": 30}
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: object) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _begin)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("menwei_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
