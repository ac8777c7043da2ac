"""
Finding the real PostgreSQL server the queue's tests use.

The tests read its address from ``TXSMTP_TEST_POSTGRES``, a libpq URL of
a role allowed to create schemas in its database (``.ci/run`` starts
Debian's cluster and sets it, e.g.
``postgresql://txsmtp:txsmtp@127.0.0.1:5432/txsmtp_test``).  When it is
not set the tests are skipped, unless ``TXSMTP_REQUIRE_PEERS=1``, which
makes them fail: no test of the PostgreSQL store ever runs against a mock.

Each test gets a schema of its own (:func:`freshSchema`), dropped after
the test, and a URL whose ``options`` put that schema first on the
``search_path``: every table, function and notification channel of the
store lives in it, so tests never see each other's queues.
"""

from __future__ import annotations

import os
import secrets
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from twisted.trial.unittest import SkipTest

from tests.peers import PEERS_REQUIRED

__all__ = ["requirePostgres", "freshSchema", "withSearchPath", "dropSchema", "ENV"]

ENV = "TXSMTP_TEST_POSTGRES"


def requirePostgres() -> str:
    """
    The URL of the test server, once it answered a query.

    :raise SkipTest: when it is not configured (or psycopg is missing) and
        peers are optional.
    :raise AssertionError: likewise under ``TXSMTP_REQUIRE_PEERS=1``.
    """
    url = os.environ.get(ENV)
    problem = None
    if not url:
        problem = f"{ENV} is not set (see .ci/run for how to start PostgreSQL)"
    else:
        try:
            import psycopg
        except ImportError:
            problem = "psycopg is not installed: pip install 'txsmtp[postgresql]'"
        else:
            try:
                with psycopg.connect(url, connect_timeout=10) as db:
                    db.execute("SELECT 1")
            except psycopg.Error as e:
                problem = f"PostgreSQL at {ENV} does not answer: {e}"
    if problem is None:
        assert url is not None
        return url
    if PEERS_REQUIRED:
        raise AssertionError(problem + "; TXSMTP_REQUIRE_PEERS=1 makes this a failure")
    raise SkipTest(problem)


def withSearchPath(url: str, schema: str) -> str:
    """``url`` with ``options=-c search_path=SCHEMA`` (replacing any ``options``)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-c search_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def dropSchema(url: str, schema: str) -> None:
    """Drop ``schema`` and everything in it (blocking; for cleanups)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def freshSchema(testCase: Any, prefix: str = "t") -> str:
    """
    Make an empty schema for ``testCase`` (a trial ``TestCase``), dropped
    by a cleanup, and answer the URL of the test server with that schema
    as its ``search_path``.
    """
    import psycopg

    url = requirePostgres()
    schema = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f'CREATE SCHEMA "{schema}"')
    # Cleanups run last-added first: this one runs after the store's close.
    testCase.addCleanup(dropSchema, url, schema)
    return withSearchPath(url, schema)
