"""
Real policy services for the policy tests: postgrey (Debian's
``postgrey``) on a loopback TCP port, policyd-spf (Debian's
``postfix-policyd-spf-python``) on a unix socket behind
:mod:`tests.policyspfpeer`, and a service that never answers.

Each starts in the foreground for one test and is stopped by the test's
cleanup; waits are bounded retries driven by the reactor, never sleeps.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
)
from twisted.trial import unittest

from tests.peers import requirePeer
from tests.twistd_helpers import withTimeout

__all__ = ["Silent", "freePort", "startPolicydSPF", "startPostgrey", "startSilentService", "waitForService"]

HERE = os.path.dirname(os.path.abspath(__file__))

SPF_CONFIG = """\
debugLevel = 1
TestOnly = 1
HELO_reject = Fail
Mail_From_reject = Fail
PermError_reject = False
TempError_Defer = False
skip_addresses = 192.0.2.254/32
"""


class _Process(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.ready: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"ready\n" in self.output and not self.ready.called:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


def freePort() -> int:
    """A loopback TCP port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def waitForService(endpoint: Any, seconds: float = 15.0) -> None:
    """Connect to ``endpoint`` until it answers (every 0.1 s, at most ``seconds``)."""
    for _ in range(int(seconds * 10)):
        try:
            connected = await connectProtocol(endpoint, protocol.Protocol())
        except Exception:
            await task.deferLater(reactor, 0.1, lambda: None)
            continue
        connected.transport.loseConnection()
        return
    raise AssertionError(f"{endpoint} did not start within {seconds}s")


def _stop(process: Any, proto: _Process) -> defer.Deferred[None]:
    """TERM, and KILL if it has not ended 5 seconds later (postgrey may linger on an open client)."""
    if not proto.ended.called:
        try:
            process.signalProcess("TERM")
        except Exception:
            pass

        def kill() -> None:
            if not proto.ended.called:
                try:
                    process.signalProcess("KILL")
                except Exception:
                    pass

        call = reactor.callLater(5, kill)  # type: ignore[attr-defined]
        proto.ended.addBoth(lambda result: (call.active() and call.cancel(), result)[1])
    return withTimeout(proto.ended, 15, lambda: "the peer did not stop")


async def startPostgrey(testCase: unittest.TestCase, delay: int = 1, port: int | None = None, dbdir: str | None = None, *extra: str) -> tuple[int, Any]:
    """
    Run ``postgrey --inet=127.0.0.1:PORT --delay=DELAY`` in the foreground
    until the test ends; fires with ``(port, stop)`` once it accepts
    connections (``stop()`` ends it sooner).
    """
    program = requirePeer("postgrey")
    if dbdir is None:
        dbdir = tempfile.mkdtemp(prefix="txsmtp-test-postgrey-")
        testCase.addCleanup(shutil.rmtree, dbdir, True)
    if os.getuid() == 0:
        # As root, postgrey switches to its own user: its database must be that user's.
        user = "postgrey" if _exists(pwd.getpwnam, "postgrey") else "nobody"
        group = "postgrey" if _exists(grp.getgrnam, "postgrey") else "nogroup"
        shutil.chown(dbdir, user, group)
    else:
        user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    port = port or freePort()
    proto = _Process()
    args = [program, f"--inet=127.0.0.1:{port}", f"--dbdir={dbdir}", f"--delay={delay}",
            f"--user={user}", f"--group={group}", f"--pidfile={dbdir}/postgrey.pid", *extra]  # fmt: skip
    process = reactor.spawnProcess(proto, program, args, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})  # type: ignore[attr-defined]

    def stop() -> defer.Deferred[None]:
        return _stop(process, proto)

    testCase.addCleanup(stop)
    try:
        await waitForService(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    except AssertionError as e:
        raise AssertionError(f"{e}: {proto.output.decode(errors='replace')}") from None
    return port, stop


def _exists(lookup: Any, name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


async def startPolicydSPF(testCase: unittest.TestCase, zones: dict[str, Any]) -> str:
    """
    Run policyd-spf behind :mod:`tests.policyspfpeer` (its own network
    namespace, DNS from ``zones``) until the test ends; fires with the
    unix socket's path once it accepts connections.
    """
    requirePeer("policyd-spf")
    unshare = requirePeer("unshare")
    if os.getuid() != 0 or subprocess.run([unshare, "--mount", "--net", "true"], capture_output=True).returncode != 0:
        message = "policyd-spf's DNS needs a private network namespace (unshare --mount --net, as root)"
        from tests.peers import PEERS_REQUIRED

        if PEERS_REQUIRED:
            raise AssertionError(message)
        raise unittest.SkipTest(message)
    directory = tempfile.mkdtemp(prefix="txsmtp-test-spf-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    config = os.path.join(directory, "policyd-spf.conf")
    with open(config, "w") as f:
        f.write(SPF_CONFIG)
    path = os.path.join(directory, "policy.sock")
    proto = _Process()
    args = [unshare, "--mount", "--net", sys.executable, os.path.join(HERE, "policyspfpeer.py"), path, config, json.dumps(zones)]
    process = reactor.spawnProcess(proto, unshare, args, env=dict(os.environ))  # type: ignore[attr-defined]

    def stop() -> defer.Deferred[None]:
        if not proto.ended.called:
            process.closeStdin()
            try:
                process.signalProcess("TERM")
            except Exception:
                pass
        return withTimeout(proto.ended, 15, lambda: "policyspfpeer did not stop")

    testCase.addCleanup(stop)
    await withTimeout(proto.ready, 15, lambda: proto.output.decode(errors="replace"))
    await waitForService(UNIXClientEndpoint(reactor, path))
    return path


class Silent(protocol.Protocol):
    """A policy service that takes requests and never answers."""

    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.closed += 1
        waiters, self.factory.waiters = self.factory.waiters, []
        for d in waiters:
            d.callback(None)


async def startSilentService(testCase: unittest.TestCase) -> tuple[int, Any]:
    """A TCP service on loopback that accepts and never answers; ``(port, factory)``."""
    factory = protocol.Factory.forProtocol(Silent)
    factory.received = []  # type: ignore[attr-defined]
    factory.closed = 0  # type: ignore[attr-defined]
    factory.waiters = []  # type: ignore[attr-defined]
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    testCase.addCleanup(port.stopListening)
    return port.getHost().port, factory

