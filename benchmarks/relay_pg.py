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
import math
import os
import secrets
import statistics
import subprocess
import sys
import time
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from _bench import BenchError, progress
from relay_nodes import RECIPIENT, SENDER, TWISTD, readStatusKiB

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


def percentile(times: list[float], p: float) -> float:
    """The nearest-rank percentile ``p`` (0-100) of sorted ``times``."""
    return times[max(0, math.ceil(p / 100 * len(times)) - 1)]


def claimWorker(url: str, count: int, claims: int) -> None:
    """Fill a PostgresStore with ``count`` messages, then time claim(); print one JSON line."""
    from twisted.internet import defer, task

    from txsmtp.queue.model import QueuedRecipient
    from txsmtp.queue.postgres import PostgresStore

    body = b"Subject: queued\r\n\r\n" + b"x" * 1000 + b"\r\n"

    async def fill(reactor) -> float:
        store = PostgresStore(url, reactor=reactor, node="bench-fill", poolSize=16)
        await store.open()
        start = time.perf_counter()
        done = 0
        reported = time.monotonic()
        while done < count:
            batch = []
            for _ in range(min(FILL_IN_FLIGHT, count - done)):
                writer = store.newMessage()
                writer.write(body)
                batch.append(writer.commit(SENDER, [QueuedRecipient(0, RECIPIENT)], {}))
            await defer.gatherResults(batch, consumeErrors=True)
            done += len(batch)
            if time.monotonic() - reported > 10:
                reported = time.monotonic()
                rate = done / (time.perf_counter() - start)
                progress(f"  {done:,} of {count:,} queued ({rate:,.0f} msg/s)")
        elapsed = time.perf_counter() - start
        await store.close()
        return elapsed

    async def measure(reactor) -> dict:
        fillSeconds = await fill(reactor)
        store = PostgresStore(url, reactor=reactor, node="bench")
        start = time.perf_counter()
        await store.open()
        openSeconds = time.perf_counter() - start
        start = time.perf_counter()
        await store.nextDue()
        nextDueSeconds = time.perf_counter() - start
        times, claimed = [], 0
        for _ in range(claims):
            start = time.perf_counter()
            leases = await store.claim("bench", 100, 600)
            times.append(time.perf_counter() - start)
            claimed += sum(len(lease.message.recipients) for lease in leases)
        await store.close()
        times.sort()
        return {
            "queued": count,
            "fillSeconds": fillSeconds,
            "openMs": openSeconds * 1000,
            "nextDueMs": nextDueSeconds * 1000,
            "claimMedianMs": statistics.median(times) * 1000,
            "claimP95Ms": percentile(times, 95) * 1000,
            "claimMaxMs": times[-1] * 1000,
            "claims": claims,
            "claimed": claimed,
            "workerRssKiB": readStatusKiB(os.getpid(), "VmHWM"),
        }

    result = {}

    async def main(reactor) -> None:
        result.update(await measure(reactor))

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code:
            raise
    print(json.dumps(result), flush=True)


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
