"""
The queue at size, for the relay benchmark (benchmarks/relay.py): a
worker process fills a store with many messages through its API and times
opening it, ``nextDue()`` and ``claim()``; then ``twistd`` relays that queue
into smtp-sink while its memory is read.

Not part of txsmtp; see benchmarks/README.md.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time

from _bench import BenchError, progress
from relay_nodes import RECIPIENT, SENDER, Sink, Txsmtp, readStatusKiB

RELAY_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay.py")

# ---------------------------------------------------------------------------
# The queue at size (a worker process of its own)
# ---------------------------------------------------------------------------


def runClaimWorker(makeStore, count: int, claims: int, inFlight: int = 256) -> None:
    """
    Fill a store with ``count`` messages of 1 KiB through its writer API
    (``inFlight`` commits at a time), open it again and time ``open``,
    ``nextDue`` and ``claims`` calls of ``claim(100)``; print one JSON line.

    :param makeStore: ``makeStore(reactor, filling)``: a new, unopened
        store (``filling`` is true for the one that fills it).
    """
    from twisted.internet import defer, task

    from txsmtp.queue.model import QueuedRecipient

    body = b"Subject: queued\r\n\r\n" + b"x" * 1000 + b"\r\n"

    async def fill(reactor) -> float:
        store = makeStore(reactor, True)
        await store.open()
        start = time.perf_counter()
        done = 0
        reported = time.monotonic()
        while done < count:
            batch = []
            for _ in range(min(inFlight, count - done)):
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
        store = makeStore(reactor, False)
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
            "claimP95Ms": times[max(0, math.ceil(0.95 * len(times)) - 1)] * 1000,
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


def claimWorker(directory: str, count: int, claims: int) -> None:
    """The queue at size in a SQLiteStore (filled without fsync, measured with)."""
    from txsmtp.queue.sqlite import SQLiteStore

    runClaimWorker(lambda reactor, filling: SQLiteStore(directory, reactor=reactor, sync=not filling), count, claims)


def queueAtSize(args, workdir: str, sink: Sink) -> dict:
    directory = os.path.join(workdir, "bigqueue")
    progress(f"filling a queue with {args.queued:,} messages through the store's API ...")
    env = dict(os.environ, PYTHONPATH=args.repo)
    out = subprocess.run(
        [sys.executable, RELAY_SCRIPT, "--claim-worker", directory,
         "--queued", str(args.queued), "--claims", str(args.claims), "--repo", args.repo],
        env=env, capture_output=True, text=True, timeout=args.run_timeout * 10,
    )  # fmt: skip
    if out.returncode != 0:
        raise BenchError(f"claim worker failed: {out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # twistd on that queue (leases of the claims above are reset when it opens
    # the store): its memory while it relays the queue into smtp-sink, for
    # --serve-seconds or, with --drain, until the queue is empty.
    limit = args.run_timeout * 10 if args.drain else args.serve_seconds
    progress(f"twistd on that queue, relaying into smtp-sink for up to {limit:.0f} s ...")
    before = sink.count
    target = before + args.queued
    start = time.perf_counter()
    relay = Txsmtp(args.repo, os.path.join(workdir, "bigqueue-twistd"), sink.port, queue=directory)
    try:
        drained = sink.waitFor(target, limit)
        elapsed = time.perf_counter() - start
        result.update(relay.rss())
    finally:
        relay.stop()
    result["served"] = sink.count - before
    result["serveSeconds"] = elapsed
    result["servePerSec"] = result["served"] / elapsed
    result["drained"] = drained
    if args.drain and not drained:
        raise BenchError(f"drain: smtp-sink counted {result['served']} of {args.queued}")
    return result
