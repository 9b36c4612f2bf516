"""The storage layer: the only server code that holds SQL.

- `engine`: `Store` (SQLite file or PostgreSQL, by URL), transactions, advisory locks.
- `schema`: the tables, as SQLAlchemy Core; `migrate`, `migrations/`, `legacy`: how a
  store reaches them.
- one module per subject for the queries (events, gates, passes, …); each function takes
  a transaction (`Tx`) from `Store.read()` / `Store.write()`, so a caller can make several
  changes atomically without ever seeing SQL.
"""

from server.storage.engine import Store, StoreError, StoreUnavailable, Tx, default_url

__all__ = ["Store", "StoreError", "StoreUnavailable", "Tx", "default_url"]
