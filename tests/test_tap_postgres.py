"""
``twistd smtp --queue postgresql://...``: the options of a shared queue,
what :func:`~txsmtp.tap.makeService` builds from them, a real ``twistd -n
smtp`` on the test database (a node name in use, or a database that
cannot be reached, stops it in one line), and ``txsmtp queue`` on the
database.
"""

from __future__ import annotations

import io
import socket

from twisted.internet import defer, reactor
from twisted.python import usage
from twisted.trial import unittest

from tests.pghelpers import freshSchema
from tests.queue_conformance import recipients
from tests.test_tap import _InScratchDirectory, parse
from tests.twistd_helpers import TWISTD, childEnv, runProcess, startTwistd, withTimeout
from txsmtp import cli
from txsmtp.tap import makeService

URL = "postgresql://mail:secret@db.example:5432/mail"


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresOptionTests(_InScratchDirectory, unittest.TestCase):
    def test_values(self) -> None:
        s = parse("--deliver", "discard", "--queue", URL, "--queue-node", "mx1", "--queue-lease", "90s",
                  "--queue-pool", "4")["relaySetup"]  # fmt: skip
        self.assertEqual((s.queue, s.node, s.lease, s.pool, s.shared), (URL, "mx1", 90.0, 4, True))

    def test_defaults(self) -> None:
        s = parse("--deliver", "discard", "--queue", "postgres://db.example/mail")["relaySetup"]
        self.assertEqual((s.node, s.lease, s.pool, s.shared), (socket.gethostname(), 300.0, 10, True))
        d = parse("--deliver", "discard", "--queue", "q")["relaySetup"]
        self.assertEqual((d.node, d.lease, d.shared), (None, 300.0, False))

    def test_bad_values(self) -> None:
        cases = [
            (["--queue", "q", "--queue-node", "n1"], ["--queue-node applies only to a PostgreSQL queue"]),
            (["--queue", "q", "--queue-pool", "3"], ["--queue-pool applies only to a PostgreSQL queue"]),
            (["--queue-node", "n1"], ["--queue-node applies only to the relay"]),
            (["--queue", URL, "--queue-lease", "2s"], ["--queue-lease must be at least 5s"]),
            (["--queue", URL, "--queue-pool", "0"], ["--queue-pool"]),
        ]
        for args, words in cases:
            with self.assertRaises(usage.UsageError, msg=args) as cm:
                parse("--deliver", "discard", *args)
            for word in words:
                self.assertIn(word, str(cm.exception), f"{args}: {cm.exception}")

    def test_makeService(self) -> None:
        """A PostgresStore under the node's name, no control socket; the scheduler claims as the node."""
        from txsmtp.queue.postgres import PostgresStore

        service = makeService(parse("--deliver", "discard", "--queue", URL, "--queue-node", "mx1", "--queue-lease", "1m"))
        queue = service.queue
        self.assertIsInstance(queue.store, PostgresStore)
        self.assertEqual((queue.store.node, queue.directory, queue.controlPath), ("mx1", None, None))
        (scheduler,) = list(queue)
        self.assertEqual((scheduler.owner, scheduler.leaseSeconds), ("mx1", 60.0))


class TwistdPostgresTests(unittest.TestCase):
    """A real ``twistd -n smtp`` on the test database."""

    timeout = 60

    async def _refused(self, cwd: str, *args: str) -> str:
        port = _freePort()
        result = await runProcess(
            TWISTD[0],
            [*TWISTD[1:], "-n", "--pidfile=", "--logfile=-", "smtp", "--deliver", "discard", *args,
             "--listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=cwd, env=childEnv(), timeout=30,
        )  # fmt: skip
        self.assertEqual(result.code, 1, result.describe())
        self.assertNotIn(b"Traceback", result.out + result.err)
        self.assertNotIn(b"listening on", result.out)
        return str(result.err.decode())

    async def test_nodeNameInUse(self) -> None:
        url = freshSchema(self)
        first = await startTwistd(self, "--deliver", "discard", "--queue", url, "--queue-node", "mx1")
        self.assertIn("node mx1, lease 300s", first.log)
        self.assertNotIn(":txsmtp@", first.log)  # the password is not logged
        err = await self._refused(first.cwd, "--queue", url, "--queue-node", "mx1")
        self.assertRegex(err, r"^twistd smtp: cannot open the queue: another live process uses the queue under the node name 'mx1'")

    async def test_unreachable(self) -> None:
        err = await self._refused(".", "--queue", "postgresql://txsmtp:pw@127.0.0.1:1/none?connect_timeout=5")
        self.assertRegex(err, r"^twistd smtp: cannot open the queue: opening the queue: the queue database is unreachable")
        self.assertNotIn(":pw@", err)


class PostgresCommandTests(unittest.TestCase):
    """``txsmtp queue`` on a queue in PostgreSQL."""

    async def test_listAndFlushWakesNodes(self) -> None:
        from txsmtp.queue.postgres import PostgresStore

        url = freshSchema(self)
        node = PostgresStore(url, node="mx1", pollInterval=3600)
        await node.open()
        self.addCleanup(node.close)
        writer = node.newMessage()
        writer.write(b"Subject: t\r\n\r\nHi.\r\n")
        messageId = await writer.commit("alice@example.org", recipients("bob@example.com"), {})
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(await cli.run(["queue", "list", "--queue", url], reactor, out, err), 0, err.getvalue())
        self.assertIn(messageId, out.getvalue())
        self.assertIn("bob@example.com  queued", out.getvalue())
        woken: defer.Deferred[None] = defer.Deferred()
        node.addWakeListener(lambda: woken.called or woken.callback(None))
        out = io.StringIO()
        self.assertEqual(await cli.run(["queue", "flush", "--queue", url], reactor, out, err), 0, err.getvalue())
        self.assertEqual(out.getvalue(), "0 recipients due now\n")
        await withTimeout(woken, 10, lambda: "the node was not woken by txsmtp queue flush")
        err = io.StringIO()
        self.assertEqual(await cli.run(["queue", "show", "nosuch", "--queue", url], reactor, io.StringIO(), err), 1)
        self.assertEqual(err.getvalue(), "txsmtp: no message nosuch in the queue\n")
