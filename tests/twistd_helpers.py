"""
Shared helpers for the twistd, Maildir and interop tests.

- :func:`startTwistd` runs ``twistd -n smtp`` from this checkout in a
  subprocess (through the reactor) and fires once it listens.
- :func:`connectClient` opens a raw SMTP connection (a Twisted protocol) to
  a loopback port; :class:`RawSMTPClient` waits for replies by events, never
  by polling.
- :class:`LogEvents` waits for a twisted.logger event of the in-process
  server.
- :func:`parseStored` splits a Maildir file into its trace headers and the
  message, strictly.
- :func:`maildirFiles` lists ``new/`` and ``tmp/`` of a Maildir.

Nothing here sleeps: every wait is a Deferred fired by an event (output, a
reply, a closed connection, an exited process), bounded by a
``reactor.callLater`` timeout that fails with what was seen so far.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from txsmtp.wire.reply import Reply, ReplyParser

__all__ = [
    "REPO_ROOT",
    "TWISTD",
    "LogEvents",
    "RawSMTPClient",
    "ProcessResult",
    "RunningTwistd",
    "Stored",
    "childEnv",
    "connectClient",
    "maildirFiles",
    "parseStored",
    "readAll",
    "runProcess",
    "startTwistd",
    "withTimeout",
]

#: The checkout this file belongs to (its twisted/plugins and txsmtp are
#: what the subprocesses must use, even when another copy is installed).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

_LISTENING = re.compile(r"txsmtp listening on .*?port=(\d+)")

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
WAIT_TIMEOUT = 15.0


def childEnv(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a subprocess: ours, with the checkout first on PYTHONPATH."""
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + old if old else "")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def withTimeout(
    d: defer.Deferred[Any], seconds: float, describe: Callable[[], str]
) -> defer.Deferred[Any]:
    """
    Fail ``d`` with an :class:`AssertionError` (text from ``describe()``)
    unless it fires within ``seconds``.  The timer is cancelled when it fires.
    """
    result: defer.Deferred[Any] = defer.Deferred()
    state = {"done": False}

    def expire() -> None:
        if not state["done"]:
            state["done"] = True
            result.errback(Failure(AssertionError(f"timed out after {seconds}s: {describe()}")))

    call = reactor.callLater(seconds, expire)  # type: ignore[attr-defined]

    def fired(value: Any) -> None:
        if call.active():
            call.cancel()
        if not state["done"]:
            state["done"] = True
            if isinstance(value, Failure):
                result.errback(value)
            else:
                result.callback(value)
        elif isinstance(value, Failure):
            pass  # already reported as a timeout; swallow the late error

    d.addBoth(fired)
    return result


# -- twistd ---------------------------------------------------------------------


class _TwistdProcess(protocol.ProcessProtocol):
    """Collects a twistd's output and tells waiters about patterns and exit."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.exitValue: Any = None
        self.running = True
        self._patternWaiters: list[tuple[re.Pattern[str], defer.Deferred[re.Match[str]]]] = []
        self._endWaiters: list[defer.Deferred[Any]] = []

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    errReceived = outReceived

    def _check(self) -> None:
        if not self._patternWaiters:
            return
        text = self.text
        ready, waiting = [], []
        for pattern, d in self._patternWaiters:
            m = pattern.search(text)
            if m is not None:
                ready.append((d, m))
            else:
                waiting.append((pattern, d))
        # Detach before firing: a callback may produce more output.
        self._patternWaiters = waiting
        for d, m in ready:
            d.callback(m)

    def waitFor(self, pattern: str | re.Pattern[str]) -> defer.Deferred[re.Match[str]]:
        if isinstance(pattern, str):
            pattern = re.compile(pattern)
        m = pattern.search(self.text)
        if m is not None:
            return defer.succeed(m)
        if not self.running:
            return defer.fail(
                AssertionError(
                    f"twistd exited ({self.exitValue}) before logging {pattern.pattern!r}; output:\n{self.text}"
                )
            )
        d: defer.Deferred[re.Match[str]] = defer.Deferred()
        self._patternWaiters.append((pattern, d))
        return d

    def whenEnded(self) -> defer.Deferred[Any]:
        if not self.running:
            return defer.succeed(self.exitValue)
        d: defer.Deferred[Any] = defer.Deferred()
        self._endWaiters.append(d)
        return d

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self.exitValue = reason.value
        waiters, self._patternWaiters = self._patternWaiters, []
        for pattern, d in waiters:
            d.errback(
                AssertionError(
                    f"twistd exited ({reason.value}) before logging {pattern.pattern!r}; output:\n{self.text}"
                )
            )
        ends, self._endWaiters = self._endWaiters, []
        for d in ends:
            d.callback(reason.value)

    def signal(self, name: str) -> None:
        if self.running:
            try:
                self.transport.signalProcess(name)
            except ProcessExitedAlready:
                pass


class RunningTwistd:
    """
    A ``twistd -n smtp`` started by :func:`startTwistd`.

    :ivar port: the TCP port it listens on (127.0.0.1).
    :ivar cwd: its working directory.
    """

    def __init__(self, process: _TwistdProcess, cwd: str) -> None:
        self.process = process
        self.cwd = cwd
        self.port = 0

    @property
    def log(self) -> str:
        """Everything it printed so far (stdout and stderr)."""
        return self.process.text

    def path(self, *parts: str) -> str:
        return os.path.join(self.cwd, *parts)

    def waitForLog(
        self, pattern: str, timeout: float = WAIT_TIMEOUT
    ) -> defer.Deferred[re.Match[str]]:
        """Fire with the first match of ``pattern`` in the log (now or later)."""
        return withTimeout(
            self.process.waitFor(pattern),
            timeout,
            lambda: f"no {pattern!r} in twistd's log:\n{self.log}",
        )

    def stop(self) -> defer.Deferred[Any]:
        """
        SIGTERM, and fire with the exit value (``ProcessDone`` or
        ``ProcessTerminated``) once it is gone; SIGKILL if it is still there
        after :data:`STOP_TIMEOUT` seconds.
        """
        if not self.process.running:
            return defer.succeed(self.process.exitValue)
        d = self.process.whenEnded()
        self.process.signal("TERM")
        kill = reactor.callLater(STOP_TIMEOUT, self.process.signal, "KILL")  # type: ignore[attr-defined]

        def ended(value: Any) -> Any:
            if kill.active():
                kill.cancel()
            return value

        return d.addCallback(ended)


def startTwistd(
    testCase: Any,
    *smtpArgs: str,
    cwd: str | None = None,
    listen: str | None = "tcp:0:interface=127.0.0.1",
    timeout: float = STARTUP_TIMEOUT,
) -> defer.Deferred[RunningTwistd]:
    """
    Run ``twistd -n --pidfile= --logfile=- smtp --listen LISTEN *smtpArgs``
    with this checkout first on ``PYTHONPATH``, in ``cwd`` (default: a new
    temporary directory of ``testCase``).  Fires with a :class:`RunningTwistd`
    once it logs ``txsmtp listening on ... port=N``; fails with its output if
    it exits first or takes longer than ``timeout`` (it is then killed).
    The process is stopped in the test's cleanup.
    """
    if cwd is None:
        cwd = os.path.abspath(testCase.mktemp())
        os.makedirs(cwd)
    args = [*TWISTD, "-n", "--pidfile=", "--logfile=-", "smtp"]
    if listen is not None:
        args += ["--listen", listen]
    args += list(smtpArgs)
    process = _TwistdProcess()
    reactor.spawnProcess(process, sys.executable, args, env=childEnv(), path=cwd)  # type: ignore[attr-defined]
    running = RunningTwistd(process, cwd)
    testCase.addCleanup(running.stop)

    def describe() -> str:
        process.signal("KILL")
        return (
            f"twistd did not log 'txsmtp listening on' within {timeout}s; output:\n{process.text}"
        )

    d = withTimeout(process.waitFor(_LISTENING), timeout, describe)

    def listening(m: re.Match[str]) -> RunningTwistd:
        running.port = int(m.group(1))
        return running

    return d.addCallback(listening)


# -- any other program -------------------------------------------------------------


class _Collect(protocol.ProcessProtocol):
    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out = bytearray()
        self.err = bytearray()
        self.ended: defer.Deferred[Any] = defer.Deferred()
        self.running = True

    def connectionMade(self) -> None:
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self.ended.callback(reason.value)


@dataclass
class ProcessResult:
    out: bytes
    err: bytes
    #: the exit status, or None when a signal ended it
    code: int | None
    signal: int | None

    def describe(self) -> str:
        return f"exit={self.code} signal={self.signal}\nstdout:\n{self.out.decode('utf-8', 'replace')}\nstderr:\n{self.err.decode('utf-8', 'replace')}"


async def runProcess(
    executable: str,
    args: list[str],
    *,
    cwd: str | None = None,
    stdin: bytes = b"",
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> ProcessResult:
    """
    Run ``executable args...`` through the reactor and return its output and
    exit status.  Killed (and reported as an AssertionError) after ``timeout``.
    """
    proc = _Collect(stdin)
    reactor.spawnProcess(
        proc,
        executable,
        [executable, *args],
        env=env if env is not None else dict(os.environ),
        path=cwd,
    )  # type: ignore[attr-defined]
    timedOut = []

    def kill() -> None:
        timedOut.append(True)
        if proc.running:
            try:
                proc.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass

    call = reactor.callLater(timeout, kill)  # type: ignore[attr-defined]
    value = await proc.ended
    if call.active():
        call.cancel()
    result = ProcessResult(
        bytes(proc.out),
        bytes(proc.err),
        getattr(value, "exitCode", None),
        getattr(value, "signal", None),
    )
    if timedOut:
        raise AssertionError(f"{executable} did not finish within {timeout}s; {result.describe()}")
    return result


# -- a raw SMTP client ------------------------------------------------------------


class RawSMTPClient(protocol.Protocol):
    """
    Sends exactly the bytes it is given; parses the replies as they come.

    :ivar replies: every :class:`~txsmtp.wire.reply.Reply` so far, greeting first.
    :ivar received: every byte received.
    """

    def __init__(self) -> None:
        self.parser = ReplyParser()
        self.replies: list[Reply] = []
        self.received = b""
        self.connected = False
        self.lostReason: Failure | None = None
        self._replyWaiters: list[tuple[int, defer.Deferred[list[Reply]]]] = []
        self._lostWaiters: list[defer.Deferred[Exception]] = []

    def connectionMade(self) -> None:
        self.connected = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.replies.extend(self.parser.feed(data))
        ready = [(n, d) for n, d in self._replyWaiters if len(self.replies) >= n]
        self._replyWaiters = [(n, d) for n, d in self._replyWaiters if len(self.replies) < n]
        for n, d in ready:
            d.callback(self.replies[:n])

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = False
        self.lostReason = reason
        waiters, self._replyWaiters = self._replyWaiters, []
        for n, d in waiters:
            d.errback(
                AssertionError(
                    f"connection closed with {len(self.replies)} replies, wanted {n}: {self.describe()}"
                )
            )
        lost, self._lostWaiters = self._lostWaiters, []
        for d in lost:
            d.callback(reason.value if reason is not None else None)

    def describe(self) -> str:
        return f"replies={[str(r) for r in self.replies]!r} received={self.received[-2000:]!r}"

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def waitReplies(self, n: int, timeout: float = WAIT_TIMEOUT) -> defer.Deferred[list[Reply]]:
        """Fire with the first ``n`` replies of the session once they have arrived."""
        if len(self.replies) >= n:
            return defer.succeed(self.replies[:n])
        if not self.connected:
            return defer.fail(
                AssertionError(f"connection closed; wanted {n} replies: {self.describe()}")
            )
        d: defer.Deferred[list[Reply]] = defer.Deferred()
        self._replyWaiters.append((n, d))
        return withTimeout(d, timeout, lambda: f"wanted {n} replies: {self.describe()}")

    async def command(self, line: bytes, replies: int = 1) -> list[Reply]:
        """Send ``line`` + CRLF and return the next ``replies`` replies."""
        start = len(self.replies)
        self.send(line + b"\r\n")
        got = await self.waitReplies(start + replies)
        return got[start:]

    def whenLost(self, timeout: float = WAIT_TIMEOUT) -> defer.Deferred[Exception]:
        """Fire with the reason (an exception, as a value) once the connection is closed."""
        if not self.connected and self.lostReason is not None:
            return defer.succeed(self.lostReason.value)
        d: defer.Deferred[Exception] = defer.Deferred()
        self._lostWaiters.append(d)
        return withTimeout(d, timeout, lambda: f"connection still open: {self.describe()}")

    def close(self) -> defer.Deferred[Any]:
        """Close (if still open) and fire once closed."""
        if not self.connected:
            return defer.succeed(None)
        d = self.whenLost()
        self.transport.loseConnection()
        return d

    def abort(self) -> defer.Deferred[Any]:
        """Reset the connection (RST) and fire once closed."""
        if not self.connected:
            return defer.succeed(None)
        d = self.whenLost()
        self.transport.abortConnection()
        return d


async def connectClient(testCase: Any, port: int, *, greeting: bool = True) -> RawSMTPClient:
    """
    Connect a :class:`RawSMTPClient` to ``127.0.0.1:port`` (closed in the
    test's cleanup) and, by default, wait for the greeting.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
    client = await connectProtocol(endpoint, RawSMTPClient())
    testCase.addCleanup(client.close)
    if greeting:
        await client.waitReplies(1)
    return client


# -- in-process log events -----------------------------------------------------------


class LogEvents:
    """Records twisted.logger events for the rest of a test and waits for one."""

    def __init__(self, testCase: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self._waiters: list[
            tuple[Callable[[dict[str, Any]], bool], defer.Deferred[dict[str, Any]]]
        ] = []
        globalLogPublisher.addObserver(self)
        testCase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        ready, waiting = [], []
        for predicate, d in self._waiters:
            if predicate(event):
                ready.append(d)
            else:
                waiting.append((predicate, d))
        # Detach before firing: a callback may log, and so call us again.
        self._waiters = waiting
        for d in ready:
            d.callback(event)

    def waitFor(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = WAIT_TIMEOUT
    ) -> defer.Deferred[dict[str, Any]]:
        """Fire with the first event (already seen or future) ``predicate`` accepts."""
        return self.waitForCount(predicate, 1, timeout)

    def waitForCount(
        self, predicate: Callable[[dict[str, Any]], bool], n: int, timeout: float = WAIT_TIMEOUT
    ) -> defer.Deferred[dict[str, Any]]:
        """Fire with the ``n``-th event (already seen or future) ``predicate`` accepts."""
        seen = [event for event in self.events if predicate(event)]
        if len(seen) >= n:
            return defer.succeed(seen[n - 1])
        remaining = [n - len(seen)]

        def counting(event: dict[str, Any]) -> bool:
            if predicate(event):
                remaining[0] -= 1
            return remaining[0] <= 0

        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._waiters.append((counting, d))
        return withTimeout(
            d, timeout, lambda: f"fewer than {n} such log events among {len(self.events)}"
        )


# -- Maildir files ----------------------------------------------------------------------


@dataclass
class Stored:
    """A Maildir file, split: the trace headers txsmtp adds, then the message."""

    returnPath: bytes
    deliveredTo: list[bytes]
    heloName: bytes
    peer: bytes
    hostname: bytes
    withKeyword: bytes
    queueId: bytes
    forAddress: bytes | None
    date: bytes
    body: bytes


_STORED = re.compile(
    rb"Return-Path: <(?P<returnPath>[^<>\r\n]*)>\r\n"
    rb"(?P<deliveredTo>(?:Delivered-To: [^\r\n]+\r\n)+)"
    # (local): a message that came over a UNIX socket.
    rb"Received: from (?P<helo>[^ \r\n]+) \((?P<peer>local|\[[^\]\r\n]+\])\)\r\n"
    rb"\tby (?P<hostname>[^ \r\n]+) \(txsmtp\) with (?P<with>[A-Z0-9]+) id (?P<id>[0-9A-F]+)"
    rb"(?:\r\n\tfor <(?P<for>[^<>\r\n]+)>)?; (?P<date>[^\r\n]+)\r\n",
)


def parseStored(data: bytes) -> Stored:
    """
    Split a stored message: ``Return-Path:``, one or more ``Delivered-To:``,
    the server's ``Received:`` header (its date must parse), then the
    message exactly as the client sent it.  Raises AssertionError otherwise.
    """
    m = _STORED.match(data)
    if m is None:
        raise AssertionError(f"not a txsmtp Maildir file (trace headers): {data[:600]!r}")
    date = m.group("date")
    try:
        parsedate_to_datetime(date.decode("ascii"))
    except (TypeError, ValueError) as e:
        raise AssertionError(f"bad date in Received: {date!r}") from e
    delivered = [
        line[len(b"Delivered-To: ") :] for line in m.group("deliveredTo").split(b"\r\n") if line
    ]
    return Stored(
        returnPath=m.group("returnPath"),
        deliveredTo=delivered,
        heloName=m.group("helo"),
        peer=m.group("peer"),
        hostname=m.group("hostname"),
        withKeyword=m.group("with"),
        queueId=m.group("id"),
        forAddress=m.group("for"),
        date=date,
        body=data[m.end() :],
    )


def maildirFiles(path: str, sub: str = "new") -> list[str]:
    """The full paths of the files in ``path/sub`` (sorted), or [] if it does not exist."""
    d = os.path.join(path, sub)
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, name) for name in os.listdir(d))


def readAll(paths: list[str]) -> list[bytes]:
    out = []
    for p in paths:
        with open(p, "rb") as f:
            out.append(f.read())
    return out
