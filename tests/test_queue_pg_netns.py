"""
A node cut off from PostgreSQL at the network level: ``node1`` runs in a
network namespace of its own (``ip netns``) joined to the host by two
veth pairs, one to the database (a private cluster, :mod:`tests.pgcluster`),
one to the sink; ``node2`` runs on the host.  The test talks to ``node1``
over a UNIX socket (the file system is shared), so taking the database's
veth down cuts node1 from the database only.

The cut comes while node1 holds leases (deliveries under way, slowed by
the sink).  While cut, node1 answers ``451 4.3.0`` at the end of DATA
(after libpq's ``tcp_user_timeout``, 30 s); its leases lapse and node2
delivers what it held; node1's deliveries that reached the sink but could
not be recorded come twice (duplicates, at most the destination's
concurrency, all among what node1 held).  Once the link is back node1
accepts again.  Nothing acknowledged is lost.

Needs root and ``ip``: skipped otherwise (failed under
``TXSMTP_REQUIRE_PEERS=1``).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.trial import unittest

from tests.peers import PEERS_REQUIRED, requirePeer
from tests.pgcluster import privateCluster
from tests.pghelpers import requirePostgres, withSearchPath
from tests.pgnodes import (
    Load,
    explainDuplicates,
    incomplete,
    nodeArgs,
    pollUntil,
    query,
    queueEmpty,
    queueIds,
    rawTransaction,
    tokenCounts,
)
from tests.relay_helpers import DirectoryWatch, shortDirectory, sinkDirectory
from tests.test_client_interop import SINK_NAME, _SinkProcess, freePort
from tests.twistd_helpers import (
    TWISTD,
    RawSMTPClient,
    RunningTwistd,
    _TwistdProcess,
    childEnv,
    startTwistd,
    withTimeout,
)

REACTOR: Any = reactor

#: The server drops the sessions of a client it can no longer reach within
#: seconds (else hours: the system's keepalives; or, for a session it was
#: sending to, when its retransmissions give up or the link returns).  The
#: sessions of a node cut off mid-delivery hold its destination slots
#: (advisory locks) until then, and the other nodes wait for those slots.
SERVER_TIMEOUTS = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10000",
}


class Namespace:
    """
    A network namespace joined to the host by two veth pairs, each on a
    /30: the database's link (:attr:`dbHost` on the host side,
    :attr:`dbAddress` inside) and the mail's (:attr:`mailHost` on the host
    side), so that the database can be cut off alone.  Removed in the
    test's cleanup.
    """

    def __init__(self, testCase: unittest.TestCase) -> None:
        if os.geteuid() != 0:
            message = "network namespaces need root"
            if PEERS_REQUIRED:
                raise AssertionError(message + "; TXSMTP_REQUIRE_PEERS=1 makes this a failure")
            raise unittest.SkipTest(message)
        self.ip = requirePeer("ip")
        tag = secrets.token_hex(3)
        net = int(tag[:2], 16)
        self.name = f"txsmtp-{tag}"
        self.dbNetwork = f"10.231.{net}.0/30"
        self.dbHost, self.dbAddress = f"10.231.{net}.1", f"10.231.{net}.2"
        self.mailHost = f"10.232.{net}.1"
        self.dbLink = f"txd{tag}"
        self._links: list[str] = []
        testCase.addCleanup(self.destroy)
        self._run("netns", "add", self.name)
        self._inside("link", "set", "lo", "up")
        self._join(self.dbLink, f"txe{tag}", self.dbHost, self.dbAddress)
        self._join(f"txm{tag}", f"txn{tag}", self.mailHost, f"10.232.{net}.2")

    def _join(self, hostLink: str, link: str, hostAddress: str, address: str) -> None:
        self._run("link", "add", hostLink, "type", "veth", "peer", "name", link)
        self._links.append(hostLink)
        self._run("link", "set", link, "netns", self.name)
        self._run("addr", "add", f"{hostAddress}/30", "dev", hostLink)
        self._run("link", "set", hostLink, "up")
        self._inside("addr", "add", f"{address}/30", "dev", link)
        self._inside("link", "set", link, "up")

    def _run(self, *args: str) -> None:
        result = subprocess.run([self.ip, *args], capture_output=True, timeout=30)
        if result.returncode != 0:
            raise AssertionError(f"ip {' '.join(args)}: {result.stderr.decode(errors='replace')}")

    def _inside(self, *args: str) -> None:
        self._run("netns", "exec", self.name, self.ip, *args)

    def cut(self) -> None:
        """Take the host side of the database's veth down: nothing crosses it."""
        self._run("link", "set", self.dbLink, "down")

    def restore(self) -> None:
        self._run("link", "set", self.dbLink, "up")

    def destroy(self) -> None:
        for link in self._links:
            subprocess.run([self.ip, "link", "del", link], capture_output=True, timeout=30)
        subprocess.run([self.ip, "netns", "del", self.name], capture_output=True, timeout=30)


async def startTwistdIn(
    testCase: unittest.TestCase, namespace: Namespace, socket: str, *smtpArgs: str
) -> RunningTwistd:
    """``twistd -n smtp --listen unix:SOCKET ARGS`` inside ``namespace`` (stopped in the cleanup)."""
    cwd = shortDirectory(testCase)
    args = [namespace.ip, "netns", "exec", namespace.name, *TWISTD, "-n", "--pidfile=", "--logfile=-", "smtp"]
    args += ["--listen", f"unix:{socket}", *smtpArgs]
    process = _TwistdProcess()
    REACTOR.spawnProcess(process, namespace.ip, args, env=childEnv(), path=cwd)
    running = RunningTwistd(process, cwd)
    testCase.addCleanup(running.stop)
    await withTimeout(process.waitFor(r"txsmtp listening on"), 30, lambda: f"twistd in {namespace.name}:\n{process.text}")
    return running


async def startSinkAt(
    testCase: unittest.TestCase, address: str, port: int, directory: str, *flags: str
) -> _SinkProcess:
    """smtp-sink on ``address:port`` (as :func:`tests.relay_helpers.startSinkOn` on 127.0.0.1)."""
    path = requirePeer("smtp-sink")
    privileges = ["-u", "nobody"] if os.geteuid() == 0 else []
    args = [path, *privileges, "-vvv", "-h", SINK_NAME, "-d", os.path.join(directory, "%M%S."), *flags]
    args += [f"{address}:{port}", "64"]
    process = _SinkProcess()
    REACTOR.spawnProcess(process, path, args, env=dict(os.environ), path=directory)
    testCase.addCleanup(process.stop)
    await withTimeout(process.whenReady(), 15, lambda: f"smtp-sink not listening: {process.text}")
    return process


async def connectUNIX(testCase: unittest.TestCase, path: str) -> RawSMTPClient:
    client = await connectProtocol(UNIXClientEndpoint(REACTOR, path, timeout=10), RawSMTPClient())
    testCase.addCleanup(client.close)
    await client.waitReplies(1)
    await client.command(b"EHLO client.test.invalid")
    return client


class NetworkCutTests(unittest.TestCase):
    timeout = 300

    async def test_node_cut_from_database(self) -> None:
        requirePostgres()
        namespace = Namespace(self)
        cluster = privateCluster(
            self,
            addresses=("127.0.0.1", namespace.dbHost),
            trustNetworks=(namespace.dbNetwork,),
            settings=SERVER_TIMEOUTS,
        )
        await query(cluster.url, "CREATE SCHEMA q")
        hostURL = withSearchPath(cluster.url, "q")
        nsURL = withSearchPath(cluster.urlFor(namespace.dbHost), "q")
        sinkDir = sinkDirectory(self)
        watch = DirectoryWatch(self, sinkDir)
        sinkPort = freePort()
        # Slow deliveries (a second before the reply to DATA), so that the cut
        # catches some.  (Not the delay after the final dot of the kill test:
        # over LMTP, smtp-sink then stalls sessions now and then.)
        await startSinkAt(self, namespace.mailHost, sinkPort, sinkDir, "-L", "-p", "-w", "1")
        # An LMTP route (to the sink, speaking LMTP): mail for it is accepted
        # from any client, the UNIX socket's too, as for a local domain.
        route = ["--route", f"remote.test=lmtp:[{namespace.mailHost}]:{sinkPort}"]
        socket = os.path.join(shortDirectory(self), "n1.sock")
        node1 = await startTwistdIn(
            self, namespace, socket, *nodeArgs(nsURL, "node1", sinkPort, lease="10s", nextHop=route)
        )
        node2 = await startTwistd(self, *nodeArgs(hostURL, "node2", sinkPort, lease="10s", nextHop=route))
        acked: set[str] = set()
        refused: set[str] = set()
        # Some mail through each node.
        client = await connectUNIX(self, socket)
        for i in range(10):
            replies = await rawTransaction(client, f"ns-{i}")
            self.assertEqual(replies[-1].code, 250, replies)
            acked.add(f"ns-{i}")
        load = Load([node2.port])
        await withTimeout(load.sendAll([f"host-{i}" for i in range(20)]), 60, load.summary)
        # The cut, once node1 holds leases: it answers 451 4.3.0 at the end
        # of DATA; node2 delivers what it held once its leases lapse.
        leased = "SELECT DISTINCT message FROM recipients WHERE lease_owner = 'node1'"
        held: list[str] = []

        async def node1Delivers() -> bool:
            held[:] = [row[0] for row in await query(hostURL, leased)]
            return bool(held)

        await pollUntil(node1Delivers, 60, lambda: f"node1 never held a lease:\n{node1.log[-3000:]}", 0.05)
        namespace.cut()
        cutAt = time.monotonic()
        replies = await rawTransaction(client, "cut-0", timeout=120)
        answeredIn = time.monotonic() - cutAt
        self.assertEqual([r.code for r in replies[:3]], [250, 250, 354], replies)
        self.assertEqual((replies[3].code, replies[3].enhanced), (451, "4.3.0"), replies[3])
        refused.add("cut-0")
        # node2 goes on meanwhile.
        await withTimeout(load.sendAll([f"during-{i}" for i in range(20)]), 60, load.summary)
        await load.close()
        acked |= load.acked
        self.assertEqual(len(load.acked), 40, load.summary())
        # The server does not know yet that node1's sessions are gone (its
        # own keepalives are the system's, hours): they hold their locks.
        sessions = (
            "SELECT count(DISTINCT a.pid), count(l.pid) FROM pg_stat_activity a "
            "LEFT JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' WHERE a.client_addr = %s"
        )
        lingering = await query(cluster.adminURL, sessions, namespace.dbAddress)
        namespace.restore()
        restoredAt = time.monotonic()
        attempts: list[str] = []

        async def acceptsAgain() -> bool:
            attempts.append(f"back-{len(attempts)}")
            got = await rawTransaction(client, attempts[-1])
            return bool(got[-1].code == 250)

        await pollUntil(acceptsAgain, 90, lambda: f"node1 does not accept again:\n{node1.log[-3000:]}", 0.5)
        back = time.monotonic() - restoredAt
        acked.add(attempts[-1])
        refused |= set(attempts[:-1])
        await watch.waitUntil(
            lambda names: set(tokenCounts(watch)) >= acked,
            120,
            lambda: f"missing: {sorted(acked - set(tokenCounts(watch)))}",
        )
        await pollUntil(lambda: queueEmpty(hostURL), 60, lambda: "the queue is not empty")
        atEnd = await query(cluster.adminURL, sessions, namespace.dbAddress)
        counts = tokenCounts(watch)
        duplicates = {t: c for t, c in counts.items() if c > 1}
        print(
            f"\nnetwork cut: node1 answered 451 {answeredIn:.1f}s after the cut, accepted again {back:.1f}s "
            f"after the link came back; node1 held {len(held)} messages at the cut; {len(counts)} delivered, {len(duplicates)} duplicated {sorted(duplicates)}; "
            f"(sessions, advisory locks) of node1 on the server: {lingering[0]} while cut, {atEnd[0]} at the end"
        )
        self.assertEqual(refused & set(counts), set())
        # Duplicates: node1's deliveries in flight at the cut (the sink had the
        # message, node1 never heard the reply), at most its concurrency.
        ids = queueIds(watch, [node1, node2])
        explanation = explainDuplicates(duplicates, ids, [node1, node2])
        self.assertLessEqual({ids[t] for t in duplicates}, set(held), explanation)
        self.assertLessEqual(len(duplicates), 5, explanation)
        self.assertTrue(all(c == 2 for c in duplicates.values()), explanation)
        self.assertEqual(incomplete(watch), [])

