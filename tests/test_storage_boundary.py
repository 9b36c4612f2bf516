"""Issue 9: no server module outside the storage layer holds SQL or a database handle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STORAGE = REPO / "server" / "storage"
DATABASE_MODULES = ("sqlalchemy", "sqlite3", "sqlite_utils", "psycopg", "alembic")
SQL = re.compile(
    r"\b(SELECT\b.+\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM"
    r"|CREATE\s+(UNIQUE\s+)?(TABLE|INDEX)|ALTER\s+TABLE|PRAGMA)\b",
    re.DOTALL,  # SQL here is written in capitals; prose ("Select a household") is not
)


def server_modules() -> list[Path]:
    return [p for p in (REPO / "server").rglob("*.py") if STORAGE not in p.parents]


def test_the_check_sees_sql_and_database_imports() -> None:
    """Positive controls: what the checks below must find."""
    assert SQL.search("SELECT body FROM events WHERE gate = ?")
    assert SQL.search("INSERT OR IGNORE INTO conflicts (gate) VALUES (?)")
    assert SQL.search("UPDATE passes SET revoked_at = ?")
    assert not SQL.search("Select a household from the list")
    assert "sqlite3" in imports("import sqlite3\nfrom sqlalchemy import text\n")
    assert "sqlalchemy" in imports("from sqlalchemy import text\n")


def imports(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_no_server_module_outside_storage_holds_sql() -> None:
    offenders = []
    for path in server_modules():
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and SQL.search(node.value)
            ):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == [], offenders


def test_no_server_module_outside_storage_opens_a_database() -> None:
    offenders = {
        str(p.relative_to(REPO)): sorted(
            imports(p.read_text(encoding="utf-8")) & set(DATABASE_MODULES)
        )
        for p in server_modules()
    }
    assert {k: v for k, v in offenders.items() if v} == {}
