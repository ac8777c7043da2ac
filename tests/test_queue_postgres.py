"""
The PostgreSQL store (:class:`txsmtp.queue.postgres.PostgresStore`) against
a real PostgreSQL server (``TXSMTP_TEST_POSTGRES``, see
:mod:`tests.pghelpers`): the store conformance suite, then what only a
shared store has: two stores (nodes) on one queue, node names, wake-ups
across nodes, destination slots, chunked bodies, the database going away.
"""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from tests.pghelpers import freshSchema
from tests.queue_conformance import StoreConformanceMixin


class PostgresConformanceTests(StoreConformanceMixin, unittest.TestCase):
    """The store contract, on PostgreSQL."""

    def makeStore(self) -> Any:
        from txsmtp.queue.postgres import PostgresStore

        return PostgresStore(freshSchema(self), clock=self.clock, node="node1", pollInterval=3600)
