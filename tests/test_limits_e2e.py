"""
The limits end to end: a real ``twistd -n smtp`` with ``--max-connections-per-ip``
and ``--auth-failures``, loaded by many parallel real clients (Python's
smtplib in threads, Postfix's ``smtp-source``) over loopback.  Loopback is
exempt by default, so these servers run with ``--limits-exempt none``.

No sleeps: the clients run in threads with socket timeouts, every wait
is bounded, and the reactor keeps reading twistd's output meanwhile.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twisted.internet import threads
from twisted.trial import unittest

from tests.certs import certificates
from tests.peers import requirePeer
from tests.twistd_helpers import connectClient, startTwistd

HOSTNAME = "mx.limits.test"
PASSWORD = "right horse battery"


def newDirectory(testCase: unittest.TestCase) -> str:
    cwd = os.path.abspath(testCase.mktemp())
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(cwd, "Maildir", sub))
    return cwd


def inThreads(count: int, work: Any) -> Any:
    """Run ``work(i)`` for i in range(count) at once in threads, off the reactor; fire with the results."""

    def run() -> list[Any]:
        with ThreadPoolExecutor(max_workers=count) as pool:
            return list(pool.map(work, range(count)))

    return threads.deferToThread(run)


class ConnectionCapTests(unittest.TestCase):
    timeout = 120

    async def test_parallelConnectionsOverTheCap(self) -> None:
        """
        50 parallel connections from one address, all held open at once:
        exactly the cap (5) are greeted 220, the other 45 get 421 and are
        closed; the server names the limit in its log.
        """
        cwd = newDirectory(self)
        running = await startTwistd(
            self, "--hostname", HOSTNAME, "--max-connections-per-ip", "5", "--limits-exempt", "none", cwd=cwd
        )
        barrier = threading.Barrier(50, timeout=60)

        def client(i: int) -> tuple[int, bool]:
            s = smtplib.SMTP(timeout=60)
            try:
                code, _ = s.connect("127.0.0.1", running.port)
            except smtplib.SMTPConnectError as e:
                code = e.smtp_code
            closed = False
            barrier.wait()
            if code == 421:
                # The server closed the connection after its 421.
                try:
                    s.noop()
                except smtplib.SMTPServerDisconnected:
                    closed = True
            else:
                # QUIT, and wait for the server to close: then it counts one less.
                s.docmd("QUIT")
                assert s.sock is not None
                while s.sock.recv(4096):
                    pass
            s.close()
            return code, closed

        results = await inThreads(50, client)
        codes = sorted(code for code, _ in results)
        self.assertEqual(codes, [220] * 5 + [421] * 45)
        self.assertTrue(all(closed for code, closed in results if code == 421), results)
        await running.waitForLog(r"Too many connections from 127\.0\.0\.1 \(limit 5 at once, --max-connections-per-ip\)")
        # All closed again: a new client is let in.
        # Once the 5 have left (each QUIT answered and closed by the server), a new client is let in.
        fresh = await connectClient(self, running.port)
        self.assertEqual(fresh.replies[0].code, 220)

    async def test_smtpSource(self) -> None:
        """
        With the cap (3) held by slow clients, Postfix's smtp-source (20
        parallel sessions) is refused 421 at the banner, nothing is delivered;
        once the slow clients leave, smtp-source's mail gets through (one
        connection per message).
        """
        source = requirePeer("smtp-source")
        cwd = newDirectory(self)
        running = await startTwistd(
            self, "--hostname", HOSTNAME, "--max-connections-per-ip", "3", "--limits-exempt", "none", cwd=cwd
        )
        held = [await connectClient(self, running.port) for _ in range(3)]
        args = [source, "-c", "-s", "20", "-m", "20", "-f", "a@source.test", "-t", "b@local.test"]
        args.append(f"127.0.0.1:{running.port}")

        def runSource() -> subprocess.CompletedProcess[str]:
            return subprocess.run(args, capture_output=True, text=True, timeout=60)

        refused = await threads.deferToThread(runSource)
        # smtp-source gives up at the first refused banner (a fatal error).
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn(
            "rejected at server banner: 421 mx.limits.test Too many connections from 127.0.0.1 "
            "(limit 3 at once, --max-connections-per-ip)",
            refused.stderr + refused.stdout,
        )
        self.assertEqual(os.listdir(os.path.join(cwd, "Maildir", "new")), [])
        await running.waitForLog(r"refused connect from 127\.0\.0\.1: 421 4\.7\.0 Too many connections")
        # The slow clients leave: QUIT, and the server closes (its count
        # drops as it closes, before the client sees the end).
        for client in held:
            await client.command(b"QUIT")
            await client.whenLost()
        # One session at a time, nine messages: each new connection may
        # reach the server just before the close of the one before it, so
        # two at once at most, under the cap.
        args[args.index("-s") + 1] = "1"
        args[args.index("-m") + 1] = "9"

        def untilAccepted() -> subprocess.CompletedProcess[str]:
            return subprocess.run(args, capture_output=True, text=True, timeout=60)

        accepted = await threads.deferToThread(untilAccepted)
        self.assertEqual(accepted.returncode, 0, accepted.stdout + accepted.stderr)
        self.assertNotIn("421", accepted.stdout + accepted.stderr)
        self.assertEqual(len(os.listdir(os.path.join(cwd, "Maildir", "new"))), 9)


class AuthLimiterTests(unittest.TestCase):
    timeout = 180

    async def test_parallelPasswordGuessing(self) -> None:
        """
        50 parallel connections over TLS each guess passwords with AUTH
        PLAIN until the server stops them.  The cap lets 20 in at once,
        their failures are answered ever later, the 5th failure of the
        address locks AUTH out for it: every other AUTH from it gets 421
        and the connection is closed.  The server checks at most
        5 + 20 passwords in all (the lockout threshold plus the guesses
        already in flight on the connections let in), and then not even the
        right password gets through from that address.
        """
        c = certificates()
        cwd = newDirectory(self)
        running = await startTwistd(
            self,
            "--hostname", HOSTNAME, "--tls-cert", c.chain, "--tls-key", c.key,
            "--auth", f"memory:alice:{PASSWORD}", "--limits-exempt", "none",
            "--max-connections-per-ip", "20", "--auth-failures", "5/10m", "--auth-lockout", "1h",
            cwd=cwd,
        )  # fmt: skip
        context = ssl.create_default_context(cafile=c.ca)
        context.check_hostname = False

        def guesser(i: int) -> list[int]:
            codes: list[int] = []
            try:
                s = smtplib.SMTP("127.0.0.1", running.port, timeout=60)
            except smtplib.SMTPConnectError as e:
                return [e.smtp_code]
            try:
                s.starttls(context=context)
                s.ehlo("guesser.test")
                # Bounded: a client that would go on forever gives up after 10 tries.
                for attempt in range(10):
                    s.user, s.password = "alice", f"guess-{i}-{attempt}"
                    try:
                        s.auth("PLAIN", s.auth_plain, initial_response_ok=True)
                        codes.append(235)
                        break
                    except smtplib.SMTPAuthenticationError as e:
                        codes.append(e.smtp_code)
                        if e.smtp_code == 421:
                            break
            except smtplib.SMTPServerDisconnected:
                codes.append(-1)
            finally:
                s.close()
            return codes

        started = time.monotonic()
        results = await inThreads(50, guesser)
        elapsed = time.monotonic() - started
        tries = sum(codes.count(535) for codes in results)
        self.assertNotIn(235, [code for codes in results for code in codes])
        # Every client was stopped with 421: at the greeting (over the cap) or at AUTH.
        self.assertTrue(all(codes[-1] == 421 for codes in results), results)
        self.assertGreaterEqual(tries, 5)
        self.assertLessEqual(tries, 25, results)
        serverTries = running.log.count("authentication failed for 'alice'")
        self.assertEqual(serverTries, tries)
        self.assertLess(elapsed, 90)
        # Slowed across connections: a connection's own first failure is
        # answered after 1 s; the address's 3rd and later after 4 s and more.
        self.assertGreaterEqual(elapsed, 4.0)
        self.assertEqual(running.log.count("AUTH locked out for 127.0.0.1"), 1, running.log[-3000:])

        # The right password from the locked address: 421 too.
        def rightPassword(i: int) -> int:
            s = smtplib.SMTP("127.0.0.1", running.port, timeout=60)
            try:
                s.starttls(context=context)
                s.ehlo("alice.test")
                s.user, s.password = "alice", PASSWORD
                try:
                    return s.auth("PLAIN", s.auth_plain, initial_response_ok=True)[0]
                except smtplib.SMTPAuthenticationError as e:
                    return e.smtp_code
            finally:
                s.close()

        [code] = await inThreads(1, rightPassword)
        self.assertEqual(code, 421)
