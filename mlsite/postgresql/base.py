"""Django's PostgreSQL backend, with a health check that costs no round trip while the connection is quiet.

With persistent connections (CONN_MAX_AGE) and CONN_HEALTH_CHECKS, Django sends `SELECT 1` before
the first query of every request, so a connection the server closed (a restart, an admin's
pg_terminate_backend) is replaced instead of failing the request. That check is one round trip in
three of a cache-hit POST (docs/performance.md, Quiet-connection health check). A server that closes a
connection first sends on it (a FATAL message, then end of file): an idle connection whose socket has nothing
to read has not been closed by the server, so the check is skipped; when the socket is readable,
or psycopg already knows the connection is broken, Django's own check runs and reconnects.
"""

from __future__ import annotations

import select

from django.db.backends.postgresql import base

from mlsite.fastpaths import fast_path


class DatabaseWrapper(base.DatabaseWrapper):
    health_check_enabled: bool  # set by Django's BaseDatabaseWrapper; absent from django-stubs
    health_check_done: bool

    def close_if_health_check_failed(self) -> None:
        if (
            fast_path("quiet_health_check")
            and not self.pool
            and self.connection is not None
            and self.health_check_enabled
            and not self.health_check_done
            and self._quiet()
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def _quiet(self) -> bool:
        """True when the connection looks open and the server has sent nothing since its last answer."""
        connection = self.connection
        if connection.closed or connection.broken:
            return False
        try:
            readable, _, _ = select.select([connection.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable
