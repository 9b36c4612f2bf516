"""Bringing a store to the newest schema: one ordered history per backend, run by Alembic.

- PostgreSQL: the Alembic revisions in `migrations/versions/`, from 0001 (the schema
  as it stood when the storage layer was made) onwards.
- SQLite: first the sqlite-utils sets of `legacy.py` that the file lacks (a site
  database made before the storage layer, or a new empty file), which bring it to
  revision 0001; it is stamped 0001 once, and the Alembic revisions after 0001 follow.

Each step runs in one write transaction, and the Alembic one (stamp and revisions) under
the store's "migrate" lock (engine.lock: the write lock on SQLite, an advisory lock on
PostgreSQL) where it first reads the revision: two processes opening a store at once
migrate it once, and the second finds it done. Opening a store that is already at HEAD
reads one row.
Alembic (https://alembic.sqlalchemy.org) rather than a runner of our own: its version
table, ordering and offline SQL (`alembic upgrade --sql`) are what operators of a
PostgreSQL server know.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlite_utils import Database

from server.storage.engine import Store, StoreError, lock
from server.storage.legacy import SETS

if TYPE_CHECKING:
    from alembic.config import Config

HEAD = "0006"
"""The newest revision (tests/server/test_storage_schema.py checks it against the scripts)."""
BASELINE = "0001"
log = logging.getLogger("menwei.storage")
SCRIPTS = Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    from alembic.config import Config  # imported when a migration runs: ~0.1 s per command

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    return cfg


def revision(store: Store) -> str | None:
    """The store's schema revision, None for a store Alembic never touched."""
    with store.read() as tx:
        if not inspect(tx).has_table("alembic_version"):
            return None
        row = tx.execute(text("SELECT version_num FROM alembic_version")).first()
    return None if row is None else str(row[0])


def upgrade(store: Store) -> None:
    """Migrate `store` to HEAD. Raises StoreError for a store newer than this program."""
    current = revision(store)
    if current == HEAD:
        return
    if current is not None and current not in _known():
        raise StoreError(
            f"the store {store.label} is at schema revision {current}, newer than this"
            f" Menwei ({HEAD}): upgrade Menwei, never the other way round"
        )
    from alembic import command

    cfg = alembic_config()
    fresh = _empty(store)
    if store.backend == "sqlite" and current is None:
        _apply_legacy(make_url(store.url).database or "")
    with store.write() as tx:
        lock(tx, "migrate")
        cfg.attributes["connection"] = tx
        # Read again under the lock: another process may have stamped and migrated it.
        if store.backend == "sqlite" and not inspect(tx).has_table("alembic_version"):
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, "head")
    if fresh:
        log.debug("store %s: created at schema revision %s", store.label, HEAD)
    else:
        before = current or "made before revision 0001"
        log.info("store %s: schema revision %s (was %s)", store.label, HEAD, before)


def _empty(store: Store) -> bool:
    with store.read() as tx:
        return not inspect(tx).get_table_names()


def _apply_legacy(path: str) -> None:
    """The sqlite-utils sets the file lacks, in one BEGIN IMMEDIATE transaction."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if (
                conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'"
                ).fetchone()
                is None
            ):  # another process may have migrated it meanwhile
                db = Database(conn)
                for migrations in SETS:
                    migrations.apply(db)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
    finally:
        conn.close()


def _known() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
