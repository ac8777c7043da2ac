"""
Benchmark txsmtp's SMTP client side by side with the Python clients people use.

Every client sends the same messages (default 5,000, a 1 KiB body each, one
recipient) to Postfix's ``smtp-sink``, a C server that accepts and discards
everything, started by this script on a free port of 127.0.0.1.  Each run of
each client is a fresh Python process (``client.py --worker NAME``), so no
two clients share a reactor, an event loop or warm caches.  The runs are
interleaved (for each repetition, for each client, the order rotating by one
each repetition) so that any drift of the machine hits every client alike,
and the median of the repetitions is reported together with txsmtp's ratio to
each of the others.

The clients:

- ``txsmtp``: ``txsmtp.client.Mailer(..., poolSize=20, tls=TLSPolicy.NONE)``
  on Twisted's default reactor (epoll on Linux); every ``send()`` is made at
  once, the results are gathered with a ``DeferredList``, then the mailer is
  closed;
- ``txsmtp-pool4``: the same with ``poolSize=4``;
- ``aiosmtplib``: 20 ``aiosmtplib.SMTP`` connections, each reused, taking the
  messages from one asyncio queue, on asyncio's own event loop;
- ``smtplib``: one ``smtplib.SMTP`` connection reused for every message;
- ``twisted.mail``: ``twisted.mail.smtp.sendmail``, one connection per
  message, at most 20 in flight;
- ``twisted-floor``: not a client but a floor: 20 Twisted connections that
  write canned commands, pipelined like txsmtp's, and only look at reply
  codes; what it costs per message is the reactor's and the kernel's share,
  under any client on Twisted.

Every message must be accepted: a client's refusals, errors and messages it
never got to send are counted, and a run with any of them is invalid (left
out of the medians and flagged in the report).

``--profile`` runs the txsmtp client once under cProfile instead and prints
the 30 functions with the most time of their own.

This is not part of the test suite.  Run ``python3 benchmarks/client.py
--help`` for the options; see benchmarks/README.md.
"""

import argparse
import collections
import importlib.util
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in map(os.path.abspath, sys.path):
    # `python3 benchmarks/client.py` (the driver and every worker) puts this
    # directory first on sys.path already, but `python3 -P` and `-m` do not.
    sys.path.insert(0, HERE)

from _bench import (  # noqa: E402 (helpers shared with server.py)
    BUSY_WARNING,
    HOST,
    BenchError,
    MachineTime,
    cpuRatio,
    formatRatio,
    freePort,
    idleCheck,
    machineInfo,
    measureQuietly,
    otherShare,
    progress,
    ratio,
    readCpuSeconds,
    sourceHash,
    targetsTable,
)

DEFAULT_REPO = os.path.dirname(HERE)

#: listen(2) backlog of smtp-sink.
LISTEN_BACKLOG = 1024
#: smtp-sink's -m: the most connections it serves at once.
SINK_MAX_CONCURRENCY = 1000

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
#: Identity every client uses in EHLO, MAIL FROM and RCPT TO.
CLIENT_NAME = "client.bench.invalid"
SENDER = "sender@bench.invalid"
RECIPIENT = "recipient@bench.invalid"

CLIENT_ORDER = ("txsmtp", "txsmtp-pool4", "aiosmtplib", "smtplib", "twisted.mail", "twisted-floor")
#: The anchors txsmtp's throughput is divided by, in the report's columns.
ANCHORS = ("aiosmtplib", "smtplib", "twisted.mail")
#: (anchor, wanted ratio of txsmtp's msg/s to the anchor's); None: no target.
TARGETS = (("aiosmtplib", 7.0), ("twisted.mail", 30.0), ("smtplib", None))
#: Pool size of the txsmtp-pool4 variant.
SMALL_POOL = 4
#: Distinct error texts kept per run.
MAX_ERRORS = 5
#: What sourceHash() hashes: the client's code is all in the txsmtp package.
SOURCE_DIRECTORIES = ("txsmtp",)


# ---------------------------------------------------------------------------
# The message
# ---------------------------------------------------------------------------

#: Words the body is made of: plain ASCII prose, so no line starts with a dot.
WORDS = (
    "the quarterly figures are attached as discussed on the call please review "
    "them before thursday and let me know whether the numbers for the northern "
    "region still look right to you since the last revision changed a few of the "
    "assumptions about shipping costs and the exchange rate"
).split()


def makeMessage(size):
    """
    A small, ordinary text message: eight header lines, an empty line, then
    a body of exactly C{size} octets (line ends included) of prose in lines
    of at most 76 characters, every line ending in CRLF.
    """
    eol = b"\r\n"
    headers = [
        f"From: Sender <{SENDER}>",
        f"To: Recipient <{RECIPIENT}>",
        "Subject: Quarterly figures for review",
        "Date: Mon, 06 Jan 2025 09:30:00 +0000",
        "Message-ID: <20250106093000.4711@client.bench.invalid>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
    ]
    head = eol.join(h.encode("ascii") for h in headers) + eol + eol
    lines = []
    remaining = size
    word = 0
    while remaining > 0:
        width = min(76, remaining - len(eol))
        if width < 0:
            # Too little left for another line end: make the previous line
            # longer instead (it stays far below 998 characters).
            lines[-1] = lines[-1][: -len(eol)] + b"x" * remaining + eol
            break
        line = ""
        while True:
            candidate = (line + " " + WORDS[word]) if line else WORDS[word]
            if len(candidate) > width:
                break
            line = candidate
            word = (word + 1) % len(WORDS)
        # Pad to the width when the end of the body is near, so the body
        # comes out at exactly `size` octets.
        if remaining - (len(line) + len(eol)) < 20:
            line = line.ljust(width, "x")
        lines.append(line.encode("ascii") + eol)
        remaining -= len(lines[-1])
    body = b"".join(lines)
    assert len(body) == size, (len(body), size)
    return head + body


# ---------------------------------------------------------------------------
# Worker side: one client, one run, in its own process
# ---------------------------------------------------------------------------


class Tally:
    """What became of each message of one run."""

    def __init__(self):
        self.accepted = 0
        self.failed = 0
        self.errors = collections.Counter()
        #: Failures of the run rather than of a message (a session that
        #: broke off, close() failing): any of them makes the run invalid.
        self.problems = []
        #: A function describing the client's inner state, for a run that
        #: hangs (see L{dumpState}); set by the client's run function.
        self.state = None

    def ok(self):
        self.accepted += 1

    def fail(self, what, count=1):
        self.failed += count
        self.errors[" / ".join(str(what).split("\n"))[:200]] += count

    def failException(self, exc):
        self.fail(f"{type(exc).__name__}: {exc}")

    def problem(self, what):
        self.problems.append(str(what)[:500])


def dumpState(tally):
    """
    Print what a run has done so far, the client's state and the main
    thread's stack on stderr, then exit with status 3.

    The driver sends SIGUSR1 to a run that does not finish in time, so that
    a hang can be diagnosed.
    """
    import faulthandler

    state = None
    if tally.state is not None:
        try:
            state = tally.state()
        except Exception as e:
            state = f"unavailable: {type(e).__name__}: {e}"
    partial = {
        "accepted": tally.accepted,
        "failed": tally.failed,
        "errors": [f"{n} x {text}" for text, n in tally.errors.most_common(MAX_ERRORS)],
        "problems": tally.problems,
        "state": state,
    }
    sys.stderr.write("HUNG " + json.dumps(partial, default=str) + "\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(sys.stderr, all_threads=False)
    os._exit(3)


def describeFailure(failure):
    """A Twisted Failure as ``ExceptionName: text``."""
    return f"{failure.type.__name__}: {failure.getErrorMessage()}"


def txsmtpClient(poolSize):
    """
    The txsmtp Mailer: every send() at once, gathered, then close().

    @param poolSize: the Mailer's pool size; C{None} for C{--sessions}.

    Imports happen here, before the timed run; the run itself is the
    function returned.
    """
    from twisted.internet import defer, reactor

    from txsmtp.client import Mailer, TLSPolicy

    def check(result, tally):
        try:
            good = (
                list(result.accepted) == [RECIPIENT]
                and not result.refused
                and 200 <= result.reply.code < 300
            )
        except Exception as e:
            tally.fail(f"unexpected result {result!r}: {e}")
            return
        if good:
            tally.ok()
        else:
            tally.fail(f"not accepted: reply {result.reply}, refused {dict(result.refused)}")

    def mailerState(mailer):
        # Private attributes: only read when a run hangs, to say where.
        return {
            name: (len(value) if hasattr(value, "__len__") else value)
            for name, value in vars(mailer).items()
            if name in ("_queue", "_idle", "_busy", "_connecting", "_closing")
        }

    def run(port, message, count, sessions, tally):
        pool = sessions if poolSize is None else poolSize

        @defer.inlineCallbacks
        def go():
            mailer = Mailer(HOST, port, poolSize=pool, tls=TLSPolicy.NONE, heloName=CLIENT_NAME)
            tally.state = lambda: mailerState(mailer)
            sends = [mailer.send(SENDER, [RECIPIENT], message) for _ in range(count)]
            results = yield defer.DeferredList(sends, consumeErrors=True)
            for success, value in results:
                if success:
                    check(value, tally)
                else:
                    tally.fail(describeFailure(value))
            try:
                yield mailer.close()
            except Exception as e:
                tally.problem(f"close() failed: {type(e).__name__}: {e}")

        def start():
            d = go()
            d.addErrback(lambda f: tally.problem("run aborted: " + describeFailure(f)))
            d.addBoth(lambda _: reactor.stop())

        reactor.callWhenRunning(start)
        reactor.run()

    cls = type(reactor)
    return run, {
        "reactor": f"{cls.__module__}.{cls.__name__}",
        "poolSize": poolSize,
        # Which txsmtp was measured (an installed copy would hide the checkout's).
        "module": sys.modules[Mailer.__module__].__file__,
    }


def aiosmtplibClient():
    """aiosmtplib: C{sessions} reused connections sharing one asyncio queue."""
    import asyncio

    import aiosmtplib

    async def session(port, message, queue, tally):
        smtp = aiosmtplib.SMTP(
            hostname=HOST, port=port, local_hostname=CLIENT_NAME, start_tls=False
        )
        await smtp.connect()
        try:
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                try:
                    refused, _ = await smtp.sendmail(SENDER, [RECIPIENT], message)
                except aiosmtplib.SMTPException as e:
                    tally.failException(e)
                    if not smtp.is_connected:
                        await smtp.connect()
                    continue
                if refused:
                    tally.fail(f"refused: {refused}")
                else:
                    tally.ok()
        finally:
            if smtp.is_connected:
                await smtp.quit()

    async def main(port, message, count, sessions, tally):
        queue = asyncio.Queue()
        for i in range(count):
            queue.put_nowait(i)
        outcomes = await asyncio.gather(
            *(session(port, message, queue, tally) for _ in range(sessions)),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                tally.problem(f"session aborted: {type(outcome).__name__}: {outcome}")

    def run(port, message, count, sessions, tally):
        asyncio.run(main(port, message, count, sessions, tally))

    return run, {"loop": "asyncio", "sessions": None}


def smtplibClient():
    """smtplib: one connection, reused for every message."""
    import smtplib

    def run(port, message, count, sessions, tally):
        smtp = smtplib.SMTP(HOST, port, local_hostname=CLIENT_NAME)
        try:
            for _ in range(count):
                try:
                    refused = smtp.sendmail(SENDER, [RECIPIENT], message)
                except smtplib.SMTPServerDisconnected as e:
                    tally.failException(e)
                    smtp.connect(HOST, port)
                    continue
                except smtplib.SMTPException as e:
                    tally.failException(e)
                    continue
                if refused:
                    tally.fail(f"refused: {refused}")
                else:
                    tally.ok()
        finally:
            try:
                smtp.quit()
            except smtplib.SMTPException as e:
                tally.problem(f"QUIT failed: {type(e).__name__}: {e}")

    return run, {"sessions": 1}


def twistedMailClient():
    """twisted.mail.smtp.sendmail: a connection per message, C{sessions} at a time."""
    from twisted.internet import defer, reactor
    from twisted.mail.smtp import sendmail

    def check(result, tally):
        numOk, addresses = result
        if numOk == 1 and [code for _, code, _ in addresses] == [250]:
            tally.ok()
        else:
            tally.fail(f"not accepted: {result!r}")

    def run(port, message, count, sessions, tally):
        limit = defer.DeferredSemaphore(sessions)

        def one():
            d = limit.run(
                sendmail,
                HOST,
                SENDER,
                [RECIPIENT],
                message,
                senderDomainName=CLIENT_NAME,
                port=port,
                reactor=reactor,
                requireAuthentication=False,
                requireTransportSecurity=False,
            )
            d.addCallbacks(check, lambda f: tally.fail(describeFailure(f)), (tally,))
            return d

        def start():
            d = defer.DeferredList([one() for _ in range(count)], consumeErrors=True)
            d.addBoth(lambda _: reactor.stop())

        reactor.callWhenRunning(start)
        reactor.run()

    cls = type(reactor)
    return run, {"reactor": f"{cls.__module__}.{cls.__name__}"}


def twistedFloorClient():
    """
    Not a real client: the floor under any client on Twisted.  C{sessions}
    connections write canned commands, pipelined as txsmtp pipelines them
    (the next message's MAIL, RCPT and DATA in the same write as the end of
    the current one), and only look at the reply codes: no checking of
    addresses, no encoding of the body, no Deferred or result per message.
    What it costs per message is what the reactor and the kernel cost.
    """
    from collections import deque

    from twisted.internet import protocol, reactor

    def run(port, message, count, sessions, tally):
        group = b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (SENDER.encode(), RECIPIENT.encode())
        # makeMessage() ends in CRLF and no line starts with a dot.
        body = message + b".\r\n"
        left = [count]
        open_ = [sessions]

        class Canned(protocol.Protocol):
            def connectionMade(self):
                self.buf = b""
                self.expect = deque(["greeting"])

            def dataReceived(self, data):
                lines = (self.buf + data).split(b"\r\n")
                self.buf = lines.pop()
                out = []
                for line in lines:
                    if line[3:4] == b"-":
                        continue
                    what = self.expect.popleft()
                    code = line[:3]
                    if what == "greeting":
                        out.append(b"EHLO " + CLIENT_NAME.encode() + b"\r\n")
                        self.expect.append("ehlo")
                    elif what in ("ehlo", "data") and (what == "ehlo" or code == b"354"):
                        if what == "data":
                            out.append(body)
                            self.expect.append("final")
                        if left[0]:
                            left[0] -= 1
                            out.append(group)
                            self.expect.extend(("mail", "rcpt", "data"))
                        elif what == "ehlo":
                            out.append(b"QUIT\r\n")
                            self.expect.append("quit")
                    elif what == "final":
                        if code == b"250":
                            tally.ok()
                        else:
                            tally.fail(f"refused: {line!r}")
                        if not self.expect:
                            out.append(b"QUIT\r\n")
                            self.expect.append("quit")
                    elif what == "quit":
                        self.transport.loseConnection()
                    elif code != b"250":
                        tally.fail(f"refused: {line!r}")
                        self.transport.abortConnection()
                        return
                if out:
                    self.transport.write(b"".join(out))

            def connectionLost(self, reason):
                open_[0] -= 1
                if not open_[0]:
                    reactor.stop()

        factory = protocol.ClientFactory()
        factory.protocol = Canned

        def start():
            for _ in range(sessions):
                reactor.connectTCP(HOST, port, factory)

        reactor.callWhenRunning(start)
        reactor.run()

    cls = type(reactor)
    return run, {"reactor": f"{cls.__module__}.{cls.__name__}"}


def makeClient(name):
    """C{(run function, details)} for the client called C{name}."""
    if name == "txsmtp":
        return txsmtpClient(None)
    if name == "txsmtp-pool4":
        return txsmtpClient(SMALL_POOL)
    if name == "aiosmtplib":
        return aiosmtplibClient()
    if name == "smtplib":
        return smtplibClient()
    if name == "twisted.mail":
        return twistedMailClient()
    if name == "twisted-floor":
        return twistedFloorClient()
    raise ValueError(name)


def worker(args):
    """
    Run one client once and print one JSON object on stdout.

    The time runs from just before the client is made to just after it has
    closed its last connection; imports and interpreter start-up do not
    count.
    """
    if sys.path and os.path.abspath(sys.path[0]) == HERE:
        # Don't let this directory's scripts shadow modules of the same name.
        del sys.path[0]
    run, details = makeClient(args.worker)
    if details.get("poolSize", 0) is None:
        details["poolSize"] = args.sessions
    if details.get("sessions", 0) is None:
        details["sessions"] = args.sessions
    if args.worker == "twisted.mail":
        details["inFlight"] = args.sessions
    wire = makeMessage(args.size)
    # twisted.mail.smtp's client expects local line ends (LF) and turns each
    # into CRLF: given the LF form it sends the same octets as the others.
    message = wire.replace(b"\r\n", b"\n") if args.worker == "twisted.mail" else wire
    tally = Tally()
    signal.signal(signal.SIGUSR1, lambda signum, frame: dumpState(tally))
    profiler = None
    if args.profile_out:
        import cProfile

        profiler = cProfile.Profile()
    machineBefore = MachineTime.now()
    cpuBefore = time.process_time()
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    try:
        run(args.port, message, args.messages, args.sessions, tally)
    except Exception as e:
        tally.problem(f"run aborted: {type(e).__name__}: {e}")
    finally:
        if profiler is not None:
            profiler.disable()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpuBefore
    machine = MachineTime.now() - machineBefore
    if profiler is not None:
        profiler.dump_stats(args.profile_out)
    missing = args.messages - tally.accepted - tally.failed
    if missing > 0:
        tally.fail("never sent (or no outcome reported)", missing)
    report = {
        "client": args.worker,
        "messages": args.messages,
        "messageOctets": len(wire),
        "accepted": tally.accepted,
        "failed": tally.failed,
        "errors": [f"{n} x {text}" for text, n in tally.errors.most_common(MAX_ERRORS)],
        "problems": tally.problems,
        "seconds": elapsed,
        "cpuSeconds": cpu,
        "machine": asdict(machine),
        "details": details,
    }
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    # Skip interpreter teardown (and any reactor shutdown noise).
    os._exit(0)


# ---------------------------------------------------------------------------
# Driver side: smtp-sink, the runs, the report
# ---------------------------------------------------------------------------


def raiseFileLimit(wanted=4096):
    """Raise this process's soft RLIMIT_NOFILE towards C{wanted} (for smtp-sink)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        top = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


class Sink:
    """Postfix's smtp-sink on a free port of 127.0.0.1, discarding everything."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.port = None
        self.process = None
        self._output = None

    @property
    def pid(self):
        return self.process.pid

    def command(self):
        argv = [SMTP_SINK]
        if os.geteuid() == 0:
            # smtp-sink refuses to keep running as root.
            argv += ["-u", "nobody"]
        return argv + ["-m", str(SINK_MAX_CONCURRENCY), f"{HOST}:{self.port}", str(LISTEN_BACKLOG)]

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def start(self, readyTimeout=15.0):
        """Start smtp-sink and wait until it answers with a 220 greeting."""
        os.makedirs(self.workdir, exist_ok=True)
        self.port = freePort()
        self._output = open(os.path.join(self.workdir, "smtp-sink.txt"), "ab")
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            preexec_fn=raiseFileLimit,
            start_new_session=True,
        )
        deadline = time.monotonic() + readyTimeout
        lastError = "no attempt"
        while time.monotonic() < deadline:
            if not self.alive():
                self.stop()
                raise BenchError(
                    f"smtp-sink exited with status {self.process.returncode}: {self.outputTail()}"
                )
            try:
                with socket.create_connection((HOST, self.port), timeout=2) as sock:
                    greeting = sock.recv(512)
                    if greeting.startswith(b"220"):
                        sock.sendall(b"QUIT\r\n")
                        return
                    lastError = f"unexpected greeting {greeting[:60]!r}"
            except OSError as e:
                lastError = str(e)
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"smtp-sink not ready on port {self.port} ({lastError})")

    def outputTail(self, lines=3):
        try:
            with open(os.path.join(self.workdir, "smtp-sink.txt"), "rb") as f:
                text = f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout=10.0):
        """Terminate smtp-sink (SIGTERM, then SIGKILL), bounded."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        if self._output is not None:
            self._output.close()
            self._output = None

    def cpuSeconds(self):
        return readCpuSeconds(self.pid)


def workerEnvironment(repo):
    """The environment of a worker: the checkout first on PYTHONPATH."""
    env = dict(os.environ)
    paths = [repo] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def unavailable(name, repo):
    """C{None} when client C{name} can run here, else the reason it cannot."""
    if name.startswith("txsmtp"):
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "from txsmtp.client import Mailer, TLSPolicy; TLSPolicy.NONE",
            ],
            cwd=repo,
            env=workerEnvironment(repo),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode != 0:
            lines = probe.stderr.strip().splitlines()
            return "txsmtp.client.Mailer cannot be imported: " + (
                lines[-1] if lines else f"exit {probe.returncode}"
            )
        return None
    if name == "aiosmtplib" and importlib.util.find_spec("aiosmtplib") is None:
        return "aiosmtplib is not installed (pip install aiosmtplib)"
    if name == "twisted.mail" and importlib.util.find_spec("twisted.mail") is None:
        return "twisted.mail is not importable"
    return None


@dataclass
class RunResult:
    """The outcome of one run of one client."""

    rep: int
    client: str
    #: The worker ran and reported.
    ok: bool
    #: ok, and every message was accepted.
    valid: bool = False
    messages: int = 0
    accepted: int = 0
    failed: int = 0
    errors: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    seconds: float = 0.0
    msgPerSec: float = 0.0
    clientCpuSeconds: float = 0.0
    #: The client's CPU time over the run's time: near 1.0 means the client
    #: was busy all along (and so set the pace).
    clientShare: float = 0.0
    sinkCpuSeconds: float = 0.0
    sinkShare: float = 0.0
    otherShare: float = 0.0
    attempts: int = 1
    #: sourceHash() of the checkout when the run started.
    sourceHash: str = ""
    details: dict = field(default_factory=dict)
    #: Anything the worker printed on stderr (warnings), shortened.
    stderr: str = ""
    error: str = ""


def workerArgs(name, port, args, messages=None, profileOut=None):
    """The command line of one worker run."""
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        name,
        "--port",
        str(port),
        "--messages",
        str(args.messages if messages is None else messages),
        "--size",
        str(args.size),
        "--sessions",
        str(args.sessions),
    ]
    if profileOut:
        argv += ["--profile-out", profileOut]
    return argv


def runWorker(name, sink, args, rep, messages=None, profileOut=None):
    """Run one client once against C{sink} and return the L{RunResult}."""
    count = args.messages if messages is None else messages
    result = RunResult(rep, name, False, messages=count)
    if not sink.alive():
        result.error = "smtp-sink not running"
        return result
    result.sourceHash = sourceHash(args.repo, SOURCE_DIRECTORIES)
    sinkBefore = sink.cpuSeconds()
    process = subprocess.Popen(
        workerArgs(name, sink.port, args, messages, profileOut),
        cwd=args.repo,
        env=workerEnvironment(args.repo),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = process.communicate(timeout=args.run_timeout)
    except subprocess.TimeoutExpired:
        # Ask the worker where it is stuck (see dumpState), then kill it.
        process.send_signal(signal.SIGUSR1)
        try:
            stdout, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        dump = stderr.decode("utf-8", "replace").strip()
        result.stderr = dump[-6000:]
        hung = [line for line in dump.splitlines() if line.startswith("HUNG ")]
        result.error = f"did not finish within {args.run_timeout:.0f} s" + (
            f"; {hung[-1][5:]}" if hung else ""
        )
        return result
    result.sinkCpuSeconds = sink.cpuSeconds() - sinkBefore
    errors = stderr.decode("utf-8", "replace").strip()
    result.stderr = errors[-2000:]
    try:
        report = json.loads(stdout)
    except ValueError:
        last = errors.splitlines()[-1] if errors else repr(stdout[:80])
        result.error = f"exit {process.returncode}, no report: {last}"
        if not sink.alive():
            result.error += f"; smtp-sink died: {sink.outputTail()}"
        return result
    elapsed = report["seconds"]
    machine = MachineTime(**report["machine"])
    result.ok = True
    result.accepted = report["accepted"]
    result.failed = report["failed"]
    result.errors = report["errors"]
    result.problems = report["problems"]
    result.details = report["details"]
    result.details["messageOctets"] = report["messageOctets"]
    result.seconds = elapsed
    result.valid = result.failed == 0 and result.accepted == count and not result.problems
    result.msgPerSec = result.accepted / elapsed if elapsed > 0 else 0.0
    result.clientCpuSeconds = report["cpuSeconds"]
    result.clientShare = result.clientCpuSeconds / elapsed if elapsed > 0 else 0.0
    result.sinkShare = result.sinkCpuSeconds / elapsed if elapsed > 0 else 0.0
    result.otherShare = otherShare(machine, result.clientCpuSeconds + result.sinkCpuSeconds)
    if not result.valid:
        result.error = "; ".join(
            ([f"{result.failed} of {count} messages failed"] if result.failed else [])
            + result.errors
            + result.problems
        )
    return result


def describeRun(result):
    """One progress line for a run."""
    if not result.ok:
        return f"FAILED: {result.error}"
    line = (
        f"{result.accepted} msgs in {result.seconds:6.2f} s = {result.msgPerSec:7.0f} msg/s "
        f"(client CPU {result.clientShare:.0%}, smtp-sink CPU {result.sinkShare:.0%}, "
        f"other load {result.otherShare:.0%}, attempts {result.attempts})"
    )
    if not result.valid:
        line += f" INVALID: {result.error}"
    return line


def summarise(results, names):
    """Medians per client over its valid runs."""
    summary = {}
    for name in names:
        runs = [r for r in results if r.client == name]
        good = [r for r in runs if r.valid]
        entry = {
            "runs": len(runs),
            "valid": len(good),
            "failedMessages": sum(r.failed for r in runs if r.ok),
            "errors": sorted({r.error for r in runs if not r.valid}),
        }
        if good:
            entry["msgPerSec"] = statistics.median(r.msgPerSec for r in good)
            entry["cpuUsPerMsg"] = statistics.median(
                r.clientCpuSeconds / r.messages * 1e6 for r in good
            )
            entry["clientShare"] = statistics.median(r.clientShare for r in good)
            entry["sinkShare"] = statistics.median(r.sinkShare for r in good)
            entry["other"] = statistics.median(r.otherShare for r in good)
            entry["spread"] = (
                max(r.msgPerSec for r in good) - min(r.msgPerSec for r in good)
            ) / entry["msgPerSec"]
            entry["details"] = good[0].details
        summary[name] = entry
    return summary


def resultsTable(summary, names, unavailableClients):
    """The main results table, as text."""
    header = (
        f"{'client':<13} {'msg/s':>8} {'CPU us/msg':>10} {'client':>6} {'sink':>5} "
        f"{'spread':>6} {'other':>5}" + "".join(f" {'/' + a:>13}" for a in ANCHORS)
    )
    lines = [header, "-" * len(header)]
    for name in names:
        if name in unavailableClients:
            lines.append(f"{name:<13} unavailable")
            continue
        entry = summary[name]
        if "msgPerSec" not in entry:
            lines.append(f"{name:<13} INVALID ({'; '.join(entry['errors'])[:120]})")
            continue
        invalid = entry["runs"] - entry["valid"]
        note = f"  ({invalid} invalid run(s))" if invalid else ""
        lines.append(
            f"{name:<13} {entry['msgPerSec']:>8.0f} {entry['cpuUsPerMsg']:>10.0f} "
            f"{entry['clientShare']:>6.0%} {entry['sinkShare']:>5.0%} "
            f"{entry['spread']:>6.0%} {entry['other']:>5.0%}"
            + "".join(f" {formatRatio(ratio(summary, name, a)):>13}" for a in ANCHORS)
            + note
        )
    return "\n".join(lines)


def evaluateTargets(summary, names):
    """txsmtp's ratios against the targets (and txsmtp-pool4's, for information)."""
    targets = []
    for name in [n for n in ("txsmtp", "txsmtp-pool4") if n in names]:
        for anchor, wanted in TARGETS:
            r = ratio(summary, name, anchor)
            byCpu = cpuRatio(summary, name, anchor)
            if wanted is None or name != "txsmtp":
                verdict = "info"
                what = f"{name} / {anchor}"
            else:
                verdict = "n/a" if r is None else ("PASS" if r >= wanted else "FAIL")
                what = f"{name} >= {wanted:g}x {anchor}"
            targets.append(
                {
                    "target": what,
                    "value": r,
                    "shown": formatRatio(r),
                    "verdict": verdict,
                    "note": ""
                    if byCpu is None
                    else f"by client CPU per message: {formatRatio(byCpu)}",
                }
            )
    return targets


def parseArgs(argv):
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Benchmark txsmtp's client against aiosmtplib, smtplib and "
        "twisted.mail.smtp, all sending to Postfix's smtp-sink."
    )
    parser.add_argument(
        "--messages", type=int, default=5000, help="messages per run (default %(default)s)"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=1024,
        help="octets of each message's body, after its headers (default %(default)s)",
    )
    parser.add_argument(
        "--reps", type=int, default=3, help="repetitions, interleaved (default %(default)s)"
    )
    parser.add_argument(
        "--sessions",
        type=int,
        default=20,
        help="txsmtp's pool size, aiosmtplib's connections, twisted.mail's messages in"
        f" flight (default %(default)s; txsmtp-pool4 always uses {SMALL_POOL})",
    )
    parser.add_argument("--only", help="comma-separated clients: " + ",".join(CLIENT_ORDER))
    parser.add_argument("--json", metavar="FILE", help="also write all results to FILE as JSON")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the benchmark, run the txsmtp client (or the one client named"
        " by --only) once under cProfile and print the top 30 functions by tottime",
    )
    parser.add_argument(
        "--pstats", metavar="FILE", help="with --profile, also keep the profile in FILE"
    )
    parser.add_argument(
        "--repo", default=DEFAULT_REPO, help="txsmtp checkout (default: %(default)s)"
    )
    parser.add_argument(
        "--no-warmup", action="store_true", help="skip the short unrecorded run of each client"
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=120,
        help="limit for one client run, seconds; a run that takes longer prints where it"
        " is stuck (default %(default)s)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10,
        help="before each run, wait up to this many seconds for other load to stop"
        " (default %(default)s)",
    )
    parser.add_argument(
        "--noisy-retries",
        type=int,
        default=2,
        help="repeat a run spoiled by other load up to this many times, keeping the"
        " least disturbed attempt (default %(default)s)",
    )
    parser.add_argument(
        "--keep-tmp", action="store_true", help="keep the temporary directory (smtp-sink output)"
    )
    # The worker side: one client, one run (used by the driver).
    parser.add_argument("--worker", choices=CLIENT_ORDER, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.messages < 1 or args.size < 4 or args.reps < 1 or args.sessions < 1:
        parser.error("--messages, --reps and --sessions must be >= 1, --size >= 4")
    if args.worker and args.port is None:
        parser.error("--worker needs --port")
    args.repo = os.path.abspath(args.repo)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in CLIENT_ORDER]
        if unknown:
            parser.error(
                f"unknown client(s): {', '.join(unknown)}; choose from {', '.join(CLIENT_ORDER)}"
            )
        args.clients = [n for n in CLIENT_ORDER if n in names]
    else:
        args.clients = list(CLIENT_ORDER)
    if args.profile and args.only and len(args.clients) != 1:
        parser.error("--profile profiles one client: give --only a single name")
    return args


def profile(args, sink, tmp):
    """Run one client once under cProfile; print its top 30 functions by tottime."""
    import pstats

    name = args.clients[0] if args.only else "txsmtp"
    reason = unavailable(name, args.repo)
    if reason:
        sys.exit(f"{name}: unavailable: {reason}")
    path = os.path.abspath(args.pstats) if args.pstats else os.path.join(tmp, "client.pstats")
    progress(f"profiling {name}: {args.messages} messages ...")
    result = runWorker(name, sink, args, 1, profileOut=path)
    progress(f"[profile] {name:<13} {describeRun(result)}")
    if result.stderr:
        progress(f"{name} printed on stderr: {result.stderr.splitlines()[-1]}")
    if not result.ok or not os.path.exists(path):
        sys.exit(f"{name}: no profile: {result.error}")
    print(
        f"{name} under cProfile: {result.accepted} of {args.messages} messages accepted, "
        f"{result.msgPerSec:.0f} msg/s (profiling slows it down; compare functions, not totals)"
    )
    stats = pstats.Stats(path, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(30)
    if args.pstats:
        print(f"profile written to {path} (python3 -m pstats {path})")


def main(argv=None):
    """Run the benchmark (or one worker run) and print the report."""
    args = parseArgs(argv)
    if args.worker:
        worker(args)
        return
    if not os.access(SMTP_SINK, os.X_OK):
        sys.exit(f"{SMTP_SINK} not found: apt-get install postfix (see benchmarks/README.md)")

    tmp = tempfile.mkdtemp(prefix="txsmtp-client-bench-")
    sink = Sink(os.path.join(tmp, "sink"))
    try:
        try:
            sink.start()
        except BenchError as e:
            sys.exit(str(e))
        progress(f"started smtp-sink (pid {sink.pid}, port {sink.port})")
        if args.profile:
            profile(args, sink, tmp)
            return
        runBenchmark(args, sink, tmp)
    finally:
        sink.stop()
        if args.keep_tmp:
            progress(f"temporary files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def runBenchmark(args, sink, tmp):
    """The interleaved runs, the report, and the JSON file."""
    unavailableClients = {}
    for name in args.clients:
        reason = unavailable(name, args.repo)
        if reason:
            unavailableClients[name] = reason
            progress(f"{name}: unavailable: {reason}")
    available = [n for n in args.clients if n not in unavailableClients]

    busy = idleCheck()
    if busy > BUSY_WARNING:
        progress(
            f"warning: {busy:.0%} of the CPU time is in use before we start; figures will be noisy"
        )
    report = {
        "machine": machineInfo(args.repo, ("twisted", "aiosmtplib"), SOURCE_DIRECTORIES),
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "worker", "port")},
        "unavailable": unavailableClients,
        "busyBeforeStart": busy,
    }

    if not args.no_warmup:
        count = max(args.sessions, min(200, args.messages // 10))
        for name in available:
            warm = runWorker(name, sink, args, 0, messages=count)
            if not warm.valid:
                progress(f"{name}: warm-up: {warm.error}")

    results = []
    order = list(available)
    restarted = False
    for rep in range(1, args.reps + 1):
        for name in order:
            if not sink.alive() and not restarted:
                # smtp-sink gets one fresh start; the failed run is recorded.
                restarted = True
                sink.stop()
                try:
                    sink.start()
                    progress(f"restarted smtp-sink (pid {sink.pid}, port {sink.port})")
                except BenchError as e:
                    progress(f"could not restart smtp-sink: {e}")
            result = measureQuietly(
                args, runWorker, name, sink, args, rep, accept=lambda r: r.valid
            )
            results.append(result)
            progress(f"[rep {rep}/{args.reps}] {name:<13} {describeRun(result)}")
            if result.stderr and not result.valid:
                progress(f"  {name} printed on stderr:\n" + result.stderr)
            elif result.stderr:
                progress(f"  {name} printed on stderr: {result.stderr.splitlines()[-1][:160]}")
        # Rotate who goes first, so position in the sequence favours no one.
        order = order[1:] + order[:1]

    summary = summarise(results, available)
    machine = report["machine"]
    octets = next((r.details.get("messageOctets") for r in results if r.ok), None)
    out = [
        f"txsmtp client benchmark: {args.messages} messages per run, body {args.size} octets"
        + (f" ({octets} octets with headers)" if octets else "")
        + f", one recipient, to smtp-sink; {args.reps} repetition(s), median shown; "
        f"{machine['cpus']} CPUs, Python {machine['python']}, Twisted {machine['twisted']}, "
        f"aiosmtplib {machine['aiosmtplib']}; txsmtp at {machine['repoRevision']} "
        f"(sources {machine['txsmtpSourceHash']})"
    ]
    for name in ("txsmtp", "txsmtp-pool4"):
        details = summary.get(name, {}).get("details")
        if details:
            out.append(
                f"{name} ran on {details.get('reactor')}, pool size {details.get('poolSize')}"
            )
    for name, reason in unavailableClients.items():
        out.append(f"{name}: unavailable ({reason})")
    noisy = [r for r in results if r.ok and r.otherShare > BUSY_WARNING]
    if busy > BUSY_WARNING or noisy:
        out.append(
            f"WARNING: the machine was busy with other work ({busy:.0%} before the start; "
            f"{len(noisy)} of {len(results)} runs with more than {BUSY_WARNING:.0%} other load): "
            "these figures are noisy."
        )
    versions = sorted({r.sourceHash for r in results if r.sourceHash})
    if len(versions) > 1:
        out.append(
            f"WARNING: txsmtp's sources changed during the benchmark ({', '.join(versions)}):"
            " the runs measured different code."
        )
    invalid = [r for r in results if not r.valid]
    if invalid:
        out.append(f"WARNING: {len(invalid)} invalid run(s) (left out of the medians):")
        for r in invalid:
            out.append(f"  rep {r.rep} {r.client}: {r.error[:300]}")
    out.append("")
    if summary:
        out.append(resultsTable(summary, args.clients, unavailableClients))
        out.append(
            "msg/s (accepted messages over the client's own time, from making the client to\n"
            "its last connection closed) and the client's CPU time per message are medians\n"
            "over the valid runs; 'client' and 'sink' are the client's and smtp-sink's CPU\n"
            "time over the run's time (near 100% = that process set the pace); 'spread' is\n"
            "(max-min)/median of msg/s; 'other' is the median share of the machine's CPU time\n"
            "that went to anything else, hypervisor steal included (high = noisy figure);\n"
            "ratios are this row's median msg/s over the column's client's."
        )
        out.append("")
    targets = evaluateTargets(summary, args.clients)
    if any(n.startswith("txsmtp") for n in args.clients):
        out.append(targetsTable(targets, "txsmtp against its targets (msg/s ratios):", 34, 9))
    print("\n".join(out))

    if args.json:
        report.update(
            runs=[asdict(r) for r in results],
            summary=[{"client": name, **entry} for name, entry in summary.items()],
            ratios={
                name: {
                    anchor: {
                        "throughput": ratio(summary, name, anchor),
                        "cpuPerMessage": cpuRatio(summary, name, anchor),
                    }
                    for anchor in ANCHORS
                }
                for name in ("txsmtp", "txsmtp-pool4")
            },
            targets=targets,
        )
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, default=str)
        progress(f"results written to {args.json}")


if __name__ == "__main__":
    main()
