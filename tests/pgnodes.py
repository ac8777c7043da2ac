"""
Helpers for the tests of several ``twistd smtp`` nodes sharing one
PostgreSQL queue (:mod:`tests.test_queue_pg_nodes`):

- :func:`startNodes` runs N nodes (``--queue-node node1..N``) on one
  queue URL, relaying everything to one smtp-sink;
- :class:`Load` submits numbered messages across the nodes with txsmtp's
  client and records each outcome (250, a refusal, an error);
- :func:`tokenCounts` counts the messages at the sink by their token;
- :func:`query` asks the database (in a thread) and :func:`pollUntil`
  polls a condition through the reactor, with a deadline;
- :func:`queueCommand` runs ``txsmtp queue ... --queue URL``.

Every message carries ``Message-Id: <TOKEN@local.test>`` and ends with
``end of TOKEN``: a dump without that last line would be a message
delivered half.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from tests.relay_helpers import DirectoryWatch, sinkMessages
from tests.twistd_helpers import RawSMTPClient, RunningTwistd, childEnv, runProcess, startTwistd

__all__ = [
    "HOSTNAME",
    "RECIPIENT",
    "SENDER",
    "Load",
    "explainDuplicates",
    "incomplete",
    "message",
    "nodeArgs",
    "pollUntil",
    "query",
    "queueEmpty",
    "queueIds",
    "queueCommand",
    "queueList",
    "rawTransaction",
    "startNodes",
    "tokenCounts",
]

HOSTNAME = "mx.test.invalid"
SENDER = "alice@local.test"
RECIPIENT = "carol@remote.test"

REACTOR: Any = reactor

_TOKEN = re.compile(rb"Message-Id: <([A-Za-z0-9.-]+)@local\.test>")
_QUEUE_ID = re.compile(rb"\(txsmtp\) with [A-Z]+ id ([0-9A-Za-z]+)")


def message(token: str, size: int = 1000) -> bytes:
    """A message of about ``size`` octets carrying ``token`` at its start and its end."""
    lines = [f"Message-Id: <{token}@local.test>", f"Subject: {token}", ""]
    line = "x" * 76
    lines += [line] * max(0, size // 78)
    lines.append(f"end of {token}")
    return ("\r\n".join(lines) + "\r\n").encode()


def nodeArgs(
    url: str,
    node: str,
    sinkPort: int,
    *extra: str,
    lease: str = "15s",
    concurrency: int = 5,
    nextHop: list[str] | None = None,
) -> list[str]:
    """
    The options of one node: the shared queue, everything relayed to the
    sink on 127.0.0.1 (or through the options ``nextHop``).
    """
    if nextHop is None:
        nextHop = ["--relay-host", f"[127.0.0.1]:{sinkPort}", "--relay-tls", "none"]
    return [
        "--hostname", HOSTNAME, "--queue", url, "--queue-node", node, "--queue-lease", lease,
        *nextHop, "--relay-networks", "127.0.0.0/8", "--retry-min", "1", "--retry-max", "2",
        "--destination-concurrency", str(concurrency), *extra,
    ]  # fmt: skip


async def startNodes(
    testCase: unittest.TestCase,
    url: str,
    sinkPort: int,
    count: int = 3,
    *extra: str,
    lease: str = "15s",
    concurrency: int = 5,
) -> list[RunningTwistd]:
    """Start ``node1`` .. ``nodeN`` together on ``url`` (stopped in the test's cleanup)."""
    starting = [
        startTwistd(testCase, *nodeArgs(url, f"node{i + 1}", sinkPort, *extra, lease=lease, concurrency=concurrency))
        for i in range(count)
    ]
    nodes: list[RunningTwistd] = await defer.gatherResults(starting, consumeErrors=True).addErrback(
        lambda f: f.value.subFailure
    )
    return nodes


def tokenCounts(watch: DirectoryWatch) -> Counter[str]:
    """How many times each token reached the sink (whole messages only: see :func:`incomplete`)."""
    counts: Counter[str] = Counter()
    for dump in sinkMessages(watch):
        m = _TOKEN.search(dump.body)
        assert m is not None, dump.body[:300]
        counts[m.group(1).decode()] += 1
    return counts


_STORED = re.compile(r"accepted id=(\S+) .* stored=(\S+)")


def queueIds(watch: DirectoryWatch, nodes: Iterable[RunningTwistd]) -> dict[str, str]:
    """
    The id in the queue of each token at the sink: the node that accepted
    it wrote the session's id in its ``Received:`` and logged
    ``accepted id=SESSION ... stored=QUEUEID``.
    """
    stored = dict(m.groups() for node in nodes for m in _STORED.finditer(node.log))
    ids = {}
    for dump in sinkMessages(watch):
        token, sessionId = _TOKEN.search(dump.body), _QUEUE_ID.search(dump.body)
        assert token is not None and sessionId is not None, dump.body[:300]
        ids[token.group(1).decode()] = stored[sessionId.group(1).decode()]
    return ids


def explainDuplicates(
    duplicates: dict[str, int], ids: dict[str, str], nodes: list[RunningTwistd]
) -> str:
    """For a failure message: each duplicated token, and what the nodes logged about its message."""
    lines = []
    for token, count in sorted(duplicates.items()):
        queueId = ids.get(token, "?")
        lines.append(f"{token} x{count}, queued as {queueId}:")
        for i, node in enumerate(nodes):
            for line in node.log.splitlines():
                if queueId in line or "again after" in line:
                    lines.append(f"  node{i + 1}: {line[:400]}")
    return "\n".join(lines)


def incomplete(watch: DirectoryWatch) -> list[str]:
    """The tokens of the dumps that do not end with their ``end of TOKEN`` line."""
    bad = []
    for dump in sinkMessages(watch):
        m = _TOKEN.search(dump.body)
        token = m.group(1).decode() if m else "?"
        if not dump.body.endswith(f"\nend of {token}\n".encode()):
            bad.append(token)
    return bad


class Load:
    """
    Submits messages across the nodes (one txsmtp Mailer each) and
    records what each got: :attr:`acked` (250), :attr:`refused` (token ->
    ``(code, enhanced)``), :attr:`failed` (token -> error text: no reply,
    the outcome is unknown).
    """

    def __init__(self, ports: list[int], poolSize: int = 5, size: int = 1000) -> None:
        from txsmtp.client import Mailer

        self.mailers = [Mailer("127.0.0.1", port, poolSize=poolSize, tls="none") for port in ports]
        self.size = size
        self.acked: set[str] = set()
        self.refused: dict[str, tuple[int, str | None]] = {}
        self.failed: dict[str, str] = {}
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    def send(self, token: str, node: int) -> defer.Deferred[None]:
        """Send ``token``'s message to node number ``node`` (an index into the ports)."""
        from txsmtp.client.errors import SMTPReplyError

        d = self.mailers[node % len(self.mailers)].send(SENDER, [RECIPIENT], message(token, self.size))

        def ok(_: Any) -> None:
            self.acked.add(token)

        def bad(f: Any) -> None:
            if isinstance(f.value, SMTPReplyError):
                self.refused[token] = (f.value.code, f.value.enhanced)
            else:
                self.failed[token] = f"{type(f.value).__name__}: {f.value}"

        d.addCallbacks(ok, bad)
        d.addBoth(lambda _: self._check())
        return d

    def sendAll(self, tokens: Iterable[str], offset: int = 0) -> defer.Deferred[Any]:
        """Send every token, spread round-robin over the nodes; fires when all have an outcome."""
        return defer.DeferredList(
            [self.send(t, i + offset) for i, t in enumerate(tokens)], consumeErrors=True
        )

    def outcomes(self) -> int:
        return len(self.acked) + len(self.refused) + len(self.failed)

    def when(self, predicate: Callable[[], bool]) -> defer.Deferred[None]:
        """Fire once ``predicate()`` holds (checked after each outcome)."""
        if predicate():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((predicate, d))
        return d

    def _check(self) -> None:
        ready = [(p, d) for p, d in self._waiters if p()]
        self._waiters = [(p, d) for p, d in self._waiters if (p, d) not in ready]
        for _, d in ready:
            d.callback(None)

    def summary(self) -> str:
        codes = Counter(f"{c} {e}" for c, e in self.refused.values())
        return f"{len(self.acked)} acknowledged, refused {dict(codes)}, {len(self.failed)} failed {sorted(set(self.failed.values()))[:3]}"

    async def close(self) -> None:
        for mailer in self.mailers:
            await mailer.close()


async def rawTransaction(client: RawSMTPClient, token: str, timeout: float = 15.0) -> list[Any]:
    """
    MAIL, RCPT, DATA and ``token``'s message on an open session: every
    reply (the one to the final dot may take up to ``timeout`` seconds).
    """
    replies = []
    for line in [f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", "DATA"]:
        replies += await client.command(line.encode())
    if replies[-1].code != 354:
        return replies
    start = len(client.replies)
    client.send(message(token) + b".\r\n")
    replies += (await client.waitReplies(start + 1, timeout))[start:]
    return replies


async def queueEmpty(url: str) -> bool:
    """Whether the queue at ``url`` holds no message and no recipient."""
    [(n,)] = await query(url, "SELECT count(*) FROM recipients")
    [(m,)] = await query(url, "SELECT count(*) FROM messages")
    return bool(n == 0 and m == 0)


def _query(url: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as db:
        cursor = db.execute(sql, params)
        return cursor.fetchall() if cursor.description is not None else []


def query(url: str, sql: str, *params: Any) -> defer.Deferred[list[tuple[Any, ...]]]:
    """Run one statement on ``url`` in a thread; fire with its rows."""
    return threads.deferToThread(_query, url, sql, params)


async def pollUntil(
    check: Callable[[], Awaitable[bool] | bool],
    timeout: float,
    describe: Callable[[], str],
    interval: float = 0.25,
) -> None:
    """
    Call ``check`` (which may return a Deferred or coroutine) every
    ``interval`` seconds, through the reactor, until it answers true;
    fail with ``describe()`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {describe()}")
        await task.deferLater(REACTOR, interval, lambda: None)


async def queueCommand(url: str, *args: str, timeout: float = 60.0) -> Any:
    """``txsmtp queue ARGS --queue URL`` (this checkout's), through the reactor."""
    return await runProcess(
        sys.executable,
        ["-m", "txsmtp.cli", "queue", *args, "--queue", url],
        env=childEnv(),
        timeout=timeout,
    )


async def queueList(url: str) -> list[dict[str, Any]]:
    """``txsmtp queue list --json --queue URL``, parsed."""
    result = await queueCommand(url, "list", "--json")
    assert result.code == 0, result.describe()
    return [json.loads(line) for line in result.out.decode().splitlines() if line.strip()]
