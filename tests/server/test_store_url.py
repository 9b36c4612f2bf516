"""Where the store is: `[store] url` and `server init --store`, and what a store that cannot be
used does to the commands (one clear line, no traceback, a non-zero exit, nothing half-made).

Tests that take `store_url` run on SQLite and on the session's real PostgreSQL."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text

from menwei.mosquitto import free_port
from menwei.postgres import PostgresServer
from server.site import Site, SiteError
from server.storage import Store, StoreError
from server.storage.migrate import HEAD, revision
from tests.conftest import run_menwei
from tests.server.test_storage_schema import schema_differences

SECRET = "s3cret-pw"


def refused(*args: str) -> str:
    """The stderr of a menwei command that must fail cleanly: exit status 2 and one line,
    `menwei: error: ...`, no traceback."""
    proc: subprocess.CompletedProcess[str] = run_menwei(*args, check=False, timeout=90)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("menwei: error:")]
    return line


def server_dir(tmp_path: Path, url: str) -> Path:
    directory = tmp_path / "srv"
    directory.mkdir()
    (directory / "server.toml").write_text(
        f'[server]\nsite = "s1"\n\n[store]\nurl = "{url}"\n', encoding="utf-8"
    )
    return directory


def test_a_store_newer_than_this_program_is_refused(store_url: str) -> None:
    with Store(store_url) as store, store.write() as tx:
        tx.execute(text("UPDATE alembic_version SET version_num = 'zzzz'"))
    with pytest.raises(StoreError) as caught:
        Store(store_url)
    message = str(caught.value)
    assert "schema revision zzzz, newer than this Menwei" in message
    assert f"({HEAD})" in message and "upgrade Menwei" in message


def test_commands_refuse_a_newer_store_with_one_line(tmp_path: Path) -> None:
    Site.init(tmp_path / "srv", "s1").close()
    db = tmp_path / "srv" / "server.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'zzzz'")
    conn.close()
    for command in ("status", "run"):
        line = refused("server", command, str(tmp_path / "srv"))
        assert f"the store sqlite:///{db.resolve()} is at schema revision zzzz" in line
        assert "newer than this Menwei" in line
    with sqlite3.connect(db) as conn:  # nothing touched it
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("zzzz",)]
    conn.close()


def test_a_store_url_that_is_not_a_url_is_named_without_its_password(tmp_path: Path) -> None:
    directory = server_dir(tmp_path, f"postgres//menwei:{SECRET}@db.example/menwei")
    for command in ("status", "run"):
        line = refused("server", command, str(directory))
        assert "postgres//menwei:***@db.example/menwei" in line and SECRET not in line
        assert "is not a database URL" in line
    line = refused("server", "init", str(tmp_path / "other"), "--store", f"mysql://u:{SECRET}@h/db")
    assert "mysql://u:***@h/db" in line and SECRET not in line
    assert not (tmp_path / "other").exists()


def test_a_password_given_as_a_url_option_is_hidden_too(tmp_path: Path) -> None:
    """libpq takes ?password= (and ?sslpassword=) as well as user:password@: every message
    naming the store showed those as they were."""
    url = (
        f"postgresql://menwei@127.0.0.1:{free_port()}/menwei?password={SECRET}&sslpassword={SECRET}"
    )
    line = refused("server", "status", str(server_dir(tmp_path, url)))
    assert "cannot open the store" in line and "?password=***&sslpassword=***" in line
    assert SECRET not in line


def test_a_port_that_is_not_a_number_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://menwei:{SECRET}@127.0.0.1:abc/menwei"
    line = refused("server", "init", str(tmp_path / "new"), "--store", url)
    assert "postgresql://menwei:***@127.0.0.1:abc/menwei" in line and SECRET not in line
    assert "is not a database URL" in line
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///server.db", "the SQLite path must be absolute"),
        ("sqlite:///../x/server.db", "the SQLite path must be absolute"),
        ("sqlite:///{tmp}/x.db?mode=ro", "a SQLite URL takes no options"),
        ("sqlite:///{tmp}/x.db?timeout=abc", "a SQLite URL takes no options"),
    ],
)
def test_a_sqlite_url_relative_or_with_options_is_refused_before_anything_is_made(
    tmp_path: Path, url: str, message: str
) -> None:
    """A relative path names a file in each working directory (`server run` under systemd
    and an operator's `server status` would use two stores); pysqlite ignores `?mode=ro` (the
    store was written all the same) and a bad `?timeout=` was a traceback."""
    url = url.format(tmp=tmp_path)
    directory = server_dir(tmp_path, url)
    line = refused("server", "status", str(directory))
    assert message in line, line
    assert list(directory.iterdir()) == [directory / "server.toml"]
    line = refused("server", "init", str(tmp_path / "new"), "--store", url)
    assert message in line, line
    assert not (tmp_path / "new").exists() and not (tmp_path / "x.db").exists()


def test_an_unreachable_postgresql_is_one_line_naming_the_url_without_password(
    tmp_path: Path,
) -> None:
    url = f"postgresql://menwei:{SECRET}@127.0.0.1:{free_port()}/menwei"  # nobody listens
    shown = url.replace(SECRET, "***")
    directory = server_dir(tmp_path, url)
    for command in ("status", "run"):
        line = refused("server", command, str(directory))
        assert f"cannot open the store {shown}: " in line and SECRET not in line
        assert "Connection refused" in line
    # init makes nothing that would refuse the next attempt.
    line = refused("server", "init", str(tmp_path / "new"), "--store", url)
    assert f"cannot open the store {shown}" in line
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(StoreError, match="cannot open the store"):
        Site.init(tmp_path / "kept", "s1", store=url)
    assert list((tmp_path / "kept").iterdir()) == []


def test_init_creates_the_schema_in_a_fresh_store_and_status_reads_it(
    request: pytest.FixtureRequest, store_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "srv"
    made = json.loads(
        run_menwei(
            "server", "init", str(directory), "--site", "s1", "--store", store_url, "--json"
        ).stdout
    )
    assert made["site"] == "s1" and made["keys"] == [1]
    assert f'url = "{store_url}"' in (directory / "server.toml").read_text(encoding="utf-8")
    assert not (directory / "server.db").exists()
    with Store(store_url) as store:
        assert revision(store) == HEAD
        assert schema_differences(store) == []
    status = json.loads(run_menwei("server", "status", str(directory), "--json").stdout)
    assert (status["site"], status["events"], status["gates"]) == ("s1", 0, [])


def test_init_refuses_a_store_that_already_holds_a_site(
    request: pytest.FixtureRequest, store_url: str, tmp_path: Path
) -> None:
    Site.init(tmp_path / "first", "s1", store=store_url).close()
    with pytest.raises(SiteError, match="already holds a Menwei site"):
        Site.init(tmp_path / "second", "s2", store=store_url)
    assert not (tmp_path / "second" / "server.toml").exists()
    line = refused("server", "init", str(tmp_path / "third"), "--store", store_url)
    assert "already holds a Menwei site" in line
    assert not (tmp_path / "third").exists()
    with Site(tmp_path / "first") as site:  # the first site is untouched
        assert site.site == "s1" and [k.key_id for k in site.trust_keys()] == [1]


def test_init_writes_a_url_with_a_backslash_or_a_quote_as_it_was_given(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """server.toml is TOML: `\\b` in a password written between quotes as it came was read
    back as a backspace (another password), and a '"' made the file unreadable."""
    url = postgres.create_database(f"quoted_{os.getpid()}")
    with_password = url.replace(
        f"{PostgresServer.USER}@", f'{PostgresServer.USER}:a\\bc"d\\q@'
    )  # the test server trusts 127.0.0.1: any password opens it
    with Site.init(tmp_path / "srv", "s1", store=with_password) as site:
        assert site.config.store.url == with_password


def test_a_server_toml_holding_a_store_password_is_for_its_owner_only(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database(f"private_{os.getpid()}")
    with_password = url.replace(f"{PostgresServer.USER}@", f"{PostgresServer.USER}:pw@")
    Site.init(tmp_path / "a", "s1", store=with_password).close()
    assert (tmp_path / "a" / "server.toml").stat().st_mode & 0o077 == 0
