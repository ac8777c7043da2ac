"""
The relay benchmark (benchmarks/relay.py) on PostgreSQL: a fresh schema
for each configuration, and the claim latency of a PostgresStore with
many messages queued.

Every configuration (one node, two nodes, the queue at size) gets a schema
of its own, created here and dropped at the end, and a URL whose
``options`` put it first on the ``search_path``: the store keeps all its
tables there, so runs never see each other's queues or earlier runs'.

The queue at size is filled through the store's API (``newMessage``,
``write``, ``commit``), as the SMTP server fills it, in concurrent batches:
the same rows and chunks a node writes, nothing copied in behind its back.

Not part of txsmtp; see benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from _bench import BenchError, progress
from relay_nodes import TWISTD

RELAY_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay.py")
#: Commits in flight while the queue at size is filled.
FILL_IN_FLIGHT = 256


def isPostgres(queue: str | None) -> bool:
    return bool(queue) and queue.split(":", 1)[0] in ("postgresql", "postgres")


def withSearchPath(url: str, schema: str) -> str:
    """
    ``url`` with ``options=-c search_path=SCHEMA`` (replacing any
    ``options``), percent-encoded: libpq does not read ``+`` as a space.
    """
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-c search_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def redact(url: str) -> str:
    """``url`` without its password (for the JSON record)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def createSchema(url: str, prefix: str) -> tuple[str, str]:
    """A new empty schema: its name, and ``url`` with it first on the search_path."""
    import psycopg

    schema = f"{prefix}_{secrets.token_hex(5)}"
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as db:
        db.execute(f'CREATE SCHEMA "{schema}"')
    return schema, withSearchPath(url, schema)


def dropSchema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as db:
        db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def serverVersion(url: str) -> str | None:
    """The server's ``server_version``, for the record (None when it does not answer)."""
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=10) as db:
            row = db.execute("SHOW server_version").fetchone()
    except Exception:
        return None
    return row[0] if row else None


def unavailable(url: str, repo: str) -> str | None:
    """Why the PostgreSQL runs cannot be made, or None."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed: pip install 'txsmtp[postgresql]'"
    try:
        with psycopg.connect(url, connect_timeout=10) as db:
            db.execute("SELECT 1")
    except psycopg.Error as e:
        return f"PostgreSQL at {url} does not answer: {e}"
    env = dict(os.environ, PYTHONPATH=repo)
    out = subprocess.run(
        [*TWISTD, "smtp", "--help"], env=env, cwd=repo, capture_output=True, text=True, timeout=60
    )
    if "--queue-node" not in out.stdout:
        return "this checkout's twistd smtp has no --queue-node (no PostgreSQL store yet)"
    return None


def claimWorker(url: str, count: int, claims: int) -> None:
    """The queue at size in a PostgresStore (see :func:`relay_queue.runClaimWorker`)."""
    from relay_queue import runClaimWorker

    from txsmtp.queue.postgres import PostgresStore

    def makeStore(reactor, filling: bool):
        if filling:
            return PostgresStore(url, reactor=reactor, node="bench-fill", poolSize=16)
        return PostgresStore(url, reactor=reactor, node="bench")

    runClaimWorker(makeStore, count, claims, inFlight=FILL_IN_FLIGHT)


def claimsAtSize(args) -> dict:
    """The claim worker on a fresh schema of ``args.queue``; the schema dropped after."""
    schema, url = createSchema(args.queue, "relaybench_claims")
    progress(
        f"filling a PostgreSQL queue (schema {schema}) with {args.queued:,} messages"
        " through the store's API ..."
    )
    env = dict(os.environ, PYTHONPATH=args.repo)
    try:
        out = subprocess.run(
            [sys.executable, RELAY_SCRIPT, "--claim-worker", url,
             "--queued", str(args.queued), "--claims", str(args.claims), "--repo", args.repo],
            env=env, stdout=subprocess.PIPE, text=True, timeout=args.run_timeout * 10,
        )  # fmt: skip
    finally:
        if not args.keep_tmp:
            dropSchema(args.queue, schema)
    if out.returncode != 0:
        raise BenchError(f"PostgreSQL claim worker failed (exit {out.returncode}); see above")
    return json.loads(out.stdout.strip().splitlines()[-1])
