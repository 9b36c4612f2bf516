"""Named values of the site (`meta`): counters that number passes and documents.

Values are text; a counter's is its last value in decimal.
"""

from __future__ import annotations

from sqlalchemy import select

from server.storage.engine import Tx, insert, lock
from server.storage.schema import meta


def get(tx: Tx, key: str) -> str | None:
    """The value of `key`, None when it was never set."""
    value = tx.execute(select(meta.c.value).where(meta.c.key == key)).scalar()
    return None if value is None else str(value)


def put(tx: Tx, key: str, value: str) -> None:
    """Set `key` to `value`, replacing what it held."""
    ins = insert(tx, meta).values(key=key, value=value)
    tx.execute(ins.on_conflict_do_update(index_elements=[meta.c.key], set_={"value": value}))


def next_counter(tx: Tx, key: str, *, above: int = 0, count: int = 1) -> int:
    """Increment the counter `key` (pass ids, document versions) and return its new value,
    which is also greater than `above` (a version already out in the world the counter does
    not know); a counter never set starts at 1. With `count` (>= 1) it takes that many values
    at once: the one returned and the count - 1 after it (the counter ends at the last).
    `tx` must be a write transaction (`Store.write()`): no two transactions, in any process,
    get the same value, and a rolled-back transaction takes its increment back."""
    if count < 1:
        raise ValueError(f"count {count} is not >= 1")
    lock(tx, f"meta:{key}")  # PostgreSQL; a SQLite write transaction excludes the others
    held = get(tx, key)
    n = max(int(held) if held else 0, above) + 1
    put(tx, key, str(n + count - 1))
    return n
