"""Telling a database that cannot be reached from a statement that failed.

PostgreSQL refusing connections, restarting, or dropping a connection (pg_terminate_backend, a
failover) is an outage: the API answers 503 with Retry-After, and a read may be tried again on a new
connection. A constraint, a deadlock or a timeout is the statement's own error and stays one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import psycopg
from django.db import DatabaseError, InterfaceError, OperationalError, connection

T = TypeVar("T")

# SQLSTATE prefixes of a connection going or refused: 08 connection exception, 57P01-57P03 the
# server shutting down, crashed or starting up, 53300 too many connections.
_UNREACHABLE_STATES = ("08", "57P01", "57P02", "57P03", "53300")


def database_unreachable(exc: BaseException) -> bool:
    """True when `exc` says the database could not be reached or the connection was lost.

    A psycopg error without a SQLSTATE is the client's own (connection refused, server closed the
    connection, the connection is closed); one with a SQLSTATE came from the server. Other drivers'
    errors (SQLite's "database is locked", "no such table") are never an outage."""
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    cause = exc.__cause__
    if not isinstance(cause, psycopg.Error):
        return False
    return cause.sqlstate is None or cause.sqlstate.startswith(_UNREACHABLE_STATES)


def reconnecting(query: Callable[[], T]) -> T:
    """`query()`, tried once more on a new connection when the first try finds the connection lost
    (the server restarted or ended the session). Only for a read or an idempotent write outside a
    transaction: a transaction's work is gone with its connection."""
    try:
        return query()
    except DatabaseError as exc:
        if not database_unreachable(exc) or connection.in_atomic_block:
            raise
        connection.close()  # the broken one; the next query connects again
        return query()
