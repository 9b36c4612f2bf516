"""A bridge for server/metrics.py, whose queries are still SQL text: it runs them in a read
transaction of the store (SQLite or PostgreSQL). Delete this module when those queries move
into the storage layer."""

from __future__ import annotations

from typing import Any

from server.storage.engine import Store


class TextRows:
    """`rows(sql, params)` as server/metrics.Rows asks: the rows of one SELECT, as tuples.
    `params` are in the driver's style (`?` on SQLite, `%s` on PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def rows(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.store.read() as tx:
            result = tx.exec_driver_sql(sql, tuple(params)) if params else tx.exec_driver_sql(sql)
            return [tuple(r) for r in result]
