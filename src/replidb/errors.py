"""The one error tree of replidb. Every failure a user can see is one of these.

Each class says whose fault it is, so a caller knows whether retrying can help::

    Error                       (also the DB-API ``Error``)
    ├── InterfaceError          the client library was misused (closed cursor, ...): caller's fault
    └── DatabaseError
        ├── BadRequest          the request itself is wrong; retrying cannot help: caller's fault
        │   ├── SQLError        invalid SQL, missing table, bad parameters (DB-API ProgrammingError)
        │   └── ConstraintError a constraint refused the change (DB-API IntegrityError)
        ├── NotLeader           this node cannot accept writes; carries a leader hint: retry there
        ├── Unavailable         no leader, unreachable, overloaded; nothing was applied: retry
        ├── OutcomeUnknown      the write may or may not have been applied (timeout, leader lost)
        ├── Conflict            the write conflicted with a concurrent one (later topologies)
        ├── ProtocolError       a peer sent bytes that are not a valid frame/message: peer's fault
        └── InternalError       a bug in replidb: please report it

Foreign exceptions (apsw, OSError, msgspec decode errors) are translated at the
adapter that meets them (storage/, transport/, client/); none escapes raw.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "Conflict",
    "ConstraintError",
    "DataError",
    "DatabaseError",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotLeader",
    "NotSupportedError",
    "OperationalError",
    "OutcomeUnknown",
    "ProgrammingError",
    "ProtocolError",
    "SQLError",
    "Unavailable",
    "Warning",
]


class Warning(Exception):
    """DB-API warning (never raised by replidb today)."""


class Error(Exception):
    """Root of every replidb error."""

    #: a short machine-readable kind, sent over the wire and printed by the CLI
    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InterfaceError(Error):
    """The client library was used wrongly (caller's fault)."""

    kind = "interface"


class DatabaseError(Error):
    """An error reported by the database."""

    kind = "database"


class BadRequest(DatabaseError):
    """The request is invalid; retrying the same request cannot succeed (caller's fault)."""

    kind = "bad_request"


class SQLError(BadRequest):
    """Invalid SQL, a missing table or column, wrong parameters (caller's fault)."""

    kind = "sql"


class ConstraintError(BadRequest):
    """A UNIQUE, NOT NULL, CHECK or FOREIGN KEY constraint refused the change (caller's fault)."""

    kind = "constraint"


class NotLeader(DatabaseError):
    """This node is not the leader. ``leader_address`` names the one it believes in, if any."""

    kind = "not_leader"

    def __init__(self, message: str, leader_address: str | None = None) -> None:
        super().__init__(message)
        self.leader_address = leader_address


class Unavailable(DatabaseError):
    """The cluster cannot serve the request now; nothing was applied, retrying may succeed."""

    kind = "unavailable"


class OutcomeUnknown(DatabaseError):
    """A write may or may not have been applied (deadline passed, leader lost mid-request)."""

    kind = "outcome_unknown"


class Conflict(DatabaseError):
    """The write conflicted with a concurrent write."""

    kind = "conflict"


class ProtocolError(DatabaseError):
    """A peer sent something that is not a valid replidb frame or message (peer's fault)."""

    kind = "protocol"


class InternalError(DatabaseError):
    """A bug in replidb (our fault). Please report it with the node's log."""

    kind = "internal"


# DB-API 2.0 names, as aliases into the tree above.
ProgrammingError = SQLError
IntegrityError = ConstraintError
OperationalError = Unavailable
DataError = SQLError
NotSupportedError = BadRequest

_BY_KIND: dict[str, type[Error]] = {
    cls.kind: cls
    for cls in (
        Error,
        InterfaceError,
        DatabaseError,
        BadRequest,
        SQLError,
        ConstraintError,
        NotLeader,
        Unavailable,
        OutcomeUnknown,
        Conflict,
        ProtocolError,
        InternalError,
    )
}


def error_from_kind(kind: str, message: str, leader_address: str | None = None) -> Error:
    """Rebuild an error received over the wire; an unknown kind becomes DatabaseError."""
    cls = _BY_KIND.get(kind, DatabaseError)
    if cls is NotLeader:
        return NotLeader(message, leader_address)
    return cls(message)
