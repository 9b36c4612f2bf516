"""The storage layer's schema: migrations reach server/storage/schema.py on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from server.storage import Store
from server.storage.migrate import HEAD, alembic_config, revision
from server.storage.schema import metadata


def test_head_is_the_newest_script() -> None:
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD


def schema_differences(store: Store) -> list[object]:
    """What Alembic's autogenerate would change to make `store` match schema.py. On SQLite
    types are affinities (BIGINT and INTEGER are one) and the legacy tables' text primary
    keys are nullable (a SQLite quirk kept by legacy.py): those are not differences."""
    sqlite = store.backend == "sqlite"

    def include(_obj: object, name: str | None, kind: str, _reflected: bool, _c: object) -> bool:
        return not (kind == "table" and name in ("_sqlite_migrations", "alembic_version"))

    with store.read() as tx:
        ctx = MigrationContext.configure(
            tx, opts={"compare_type": not sqlite, "include_object": include}
        )
        diff = compare_metadata(ctx, metadata)
    pk = {(t.name, c.name) for t in metadata.tables.values() for c in t.primary_key}
    return [
        d
        for d in diff
        if not (
            sqlite
            and isinstance(d, list)
            and d[0][0] == "modify_nullable"
            and (d[0][2], d[0][3]) in pk
        )
    ]


def test_a_new_store_is_migrated_to_the_schema_the_queries_use(store_url: str) -> None:
    with Store(store_url) as store:
        assert revision(store) == HEAD
        assert schema_differences(store) == []


def test_opening_a_store_again_changes_nothing(store_url: str) -> None:
    Store(store_url).close()
    with Store(store_url) as store:
        assert revision(store) == HEAD
