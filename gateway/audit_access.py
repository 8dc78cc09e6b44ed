"""Opening an existing audit log from outside the daemon: read-only by default, never creating it.

The daemon creates and migrates the audit log (`AuditLog.prepare`); the command line and other
readers only open what is there. SQLite is opened through a `file:` URI with `mode=ro` (or `rw`
for pruning), which fails on a missing file instead of creating an empty one. In WAL mode, which
the daemon sets, a reader neither waits for the daemon's writes nor holds them up. PostgreSQL
sessions are opened with `default_transaction_read_only`, so a reader cannot write by mistake.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import URL, Engine, create_engine, inspect, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from gateway.audit import QuarantineEvent
from gateway.errors import RuntimeFailure, UserError

SQLITE_BUSY_TIMEOUT_S = 5.0  # a prune waits this long for the daemon's write lock


def audit_url(db: str) -> str:
    """`--db`: a SQLAlchemy URL, or the path of a SQLite file."""
    return db if "://" in db else f"sqlite:///{Path(db).expanduser().resolve()}"


def open_audit_log(url: str, *, writable: bool = False) -> Engine:
    """An engine on an existing audit log; a UserError saying why it cannot be used."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(f"not a database URL: {url!r}") from None
    if parsed.get_backend_name() == "sqlite":
        engine = sqlite_engine(parsed, writable)
        shown = str(Path(parsed.database or "").resolve())
    elif parsed.get_backend_name() == "postgresql":
        engine = postgresql_engine(parsed, writable)
        shown = parsed.render_as_string(hide_password=True)
    else:
        raise UserError(f"audit log on {parsed.get_backend_name()!r} is not supported (use SQLite or PostgreSQL)")
    check_schema(engine, shown, server=parsed.get_backend_name() != "sqlite")
    return engine


def sqlite_engine(url: URL, writable: bool) -> Engine:
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        raise UserError(f"the audit log must be a SQLite file, not {url.render_as_string()!r}")
    path = Path(url.database).resolve()
    if not path.exists():
        raise UserError(f"audit log not found: {path} (no event recorded yet, or another state_dir / audit.url?)")
    if not path.is_file():
        raise UserError(f"the audit log {path} is not a file")
    if not os.access(path, os.R_OK):
        raise UserError(
            f"cannot read the audit log {path}: permission denied (run as its owner: "
            f"sudo -u {owner_name(path)} defed quarantine …)"
        )
    if os.geteuid() == 0 and path.stat().st_uid != 0:
        # SQLite leaves its -wal and -shm files behind after a read; created by root, they would
        # stop the daemon's user from opening its own database.
        raise UserError(f"run as the audit log's owner, not as root: sudo -u {owner_name(path)} defed quarantine …")
    ro_url = URL.create(
        "sqlite+pysqlite",
        database=f"file:{quote(str(path))}",
        query={"mode": "rw" if writable else "ro", "uri": "true"},
    )
    return create_engine(ro_url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})


def owner_name(path: Path) -> str:
    try:
        return path.owner()
    except (KeyError, NotImplementedError):
        return str(path.stat().st_uid)


def postgresql_engine(url: URL, writable: bool) -> Engine:
    # libpq's `options` applies at session start, so every transaction is read-only, whatever
    # the pool does with transactions afterwards.
    connect_args = {} if writable else {"options": "-c default_transaction_read_only=on"}
    try:
        return create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise UserError(f"no driver for {url.drivername}: {exc} (install the `postgres` extra)") from None


def check_schema(engine: Engine, shown: str, server: bool) -> None:
    """A UserError unless the database answers and holds the quarantine table.

    A database server that does not answer is a failure at run time (RuntimeFailure, exit 1);
    a file that is not a database is bad input.
    """
    try:
        with engine.connect() as connection:
            has_table = inspect(connection).has_table(QuarantineEvent.__tablename__)
    except DBAPIError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        error = RuntimeFailure if server else UserError
        raise error(f"cannot open the audit log {shown}: {reason}") from None
    if not has_table:
        engine.dispose()
        raise UserError(f"{shown} is not a defed audit log (no {QuarantineEvent.__tablename__} table)")
