"""A SQLAlchemy dialect for replidb: SQLAlchemy Core and ORM over a replicated cluster.

    from replidb.sqla import create_engine
    engine = create_engine("replidb://127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103/")

SQLAlchemy's own URL parser takes one ``host:port``; the several-node form above goes
through ``replidb.sqla.create_engine``, which passes it on as the form SQLAlchemy
accepts everywhere (and ``sqlalchemy.create_engine`` takes directly)::

    replidb:///?host=127.0.0.1:7101&host=127.0.0.1:7102&consistency=session

Query options: ``host`` (repeatable), ``consistency``, ``timeout``, ``sync``. The SQL is
SQLite's, so this is SQLAlchemy's SQLite dialect with replidb's DB-API driver under it
(client/connection.py): transactions are replidb's interactive, optimistic ones, so a
``session.commit()`` may raise ``replidb.Conflict`` (wrapped by SQLAlchemy as
``sqlalchemy.exc.DatabaseError``) when a concurrent write changed what it read.
"""

from __future__ import annotations

import types
from typing import Any

import apsw
import sqlalchemy
from sqlalchemy.dialects.sqlite.base import SQLiteDialect
from sqlalchemy.engine import URL, make_url

import replidb

__all__ = ["ReplidbDialect", "create_engine", "engine_url"]


def engine_url(url: str) -> URL:
    """Parse ``replidb://h1:p1,h2:p2/?opts`` (or any form SQLAlchemy parses itself)."""
    head, sep, rest = url.partition("://")
    if head != "replidb" or not sep:
        return make_url(url)
    hosts, _, tail = rest.partition("/")
    if "," not in hosts:
        return make_url(url)
    query = tail.partition("?")[2]
    extra = "&".join(f"host={h}" for h in hosts.split(",") if h)
    return make_url(f"replidb:///?{extra}" + (f"&{query}" if query else ""))


def create_engine(url: str, **kwargs: Any) -> sqlalchemy.Engine:
    """``sqlalchemy.create_engine`` that also takes ``replidb://h1:p1,h2:p2/``."""
    return sqlalchemy.create_engine(engine_url(url), **kwargs)


def _dbapi() -> types.ModuleType:
    """replidb as SQLAlchemy's SQLite dialect wants its DB-API module: plus the SQLite
    version (the servers run the same library as this client's apsw)."""
    module = types.ModuleType("replidb_dbapi")
    for name in replidb.__all__:
        setattr(module, name, getattr(replidb, name))
    version = apsw.sqlite_lib_version()
    module.sqlite_version = version  # type: ignore[attr-defined]
    module.sqlite_version_info = tuple(int(p) for p in version.split("."))  # type: ignore[attr-defined]
    return module


class ReplidbDialect(SQLiteDialect):
    name = "replidb"
    driver = "replidb"
    supports_statement_cache = True
    default_paramstyle = "qmark"

    @classmethod
    def import_dbapi(cls) -> types.ModuleType:
        return _dbapi()

    def create_connect_args(self, url: URL) -> tuple[list[Any], dict[str, Any]]:
        hosts = list(url.query.get("host", ())) if "host" in url.query else []
        if isinstance(url.query.get("host"), str):
            hosts = [str(url.query["host"])]
        if url.host:
            hosts.insert(0, f"{url.host}:{url.port}" if url.port else url.host)
        if not hosts:
            raise replidb.InterfaceError(
                "a replidb URL needs at least one node: replidb://HOST:PORT[,HOST:PORT]/"
            )
        options: dict[str, Any] = {"addresses": hosts}
        for key in ("consistency", "sync"):
            if key in url.query:
                options[key] = str(url.query[key])
        if "timeout" in url.query:
            options["timeout"] = float(str(url.query["timeout"]))
        return [], options

    def on_connect(self) -> None:
        return None  # (SQLite's pysqlite hooks, regexp functions etc. do not apply)


dialect = ReplidbDialect
