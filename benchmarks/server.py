"""
Benchmark txsmtp's SMTP server side by side with its anchors.

Every server under test runs as its own process on 127.0.0.1 and discards
what it receives; Postfix's ``smtp-source`` supplies the load.  The
throughput scenarios are interleaved (for each repetition, for each
scenario, for each server) so that any drift of the machine hits every
server alike, and the median of the repetitions is reported together with
txsmtp's ratio to twisted.mail.smtp and to aiosmtpd.

A fourth scenario measures STARTTLS: every message on its own connection,
upgraded with STARTTLS (a full TLS handshake each time), with load from
``benchmarks/tls_load.py`` since smtp-source cannot do TLS.  Servers that
cannot offer STARTTLS (smtp-sink) sit it out.  The servers get a
self-signed certificate made for the run.

Two more measure LMTP (``smtp-source -L``, 1 KiB messages, reused
connections) against each server's LMTP listener, over TCP and over a UNIX
socket: txsmtp's ``twistd smtp --lmtp``, aiosmtpd's ``aiosmtpd.lmtp.LMTP``
and ``smtp-sink -L``.  twisted.mail has no LMTP server and sits them out.

Two memory measurements follow, on fresh server processes:

- one 100 MiB message, delivered by txsmtp into a Maildir (the anchors
  discard it): growth of the server's resident set while it arrives;
- 5,000 idle connections that have read their greeting: growth of the
  server's resident set per connection.

This is not part of the test suite.  Run ``python3 benchmarks/server.py
--help`` for the options; see benchmarks/README.md.
"""

import argparse
import errno
import importlib.util
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in map(os.path.abspath, sys.path):
    # `python3 benchmarks/server.py` (also as the aiosmtpd LMTP anchor) puts
    # this directory first on sys.path already, but `python3 -P` and `-m` do not.
    sys.path.insert(0, HERE)

from _bench import (  # noqa: E402 (helpers shared with client.py)
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
    targetsTable,
)

DEFAULT_REPO = os.path.dirname(HERE)

#: listen(2) backlog given to every server that lets us choose one.
LISTEN_BACKLOG = 1024
#: File descriptor limit for the driver and for every server it starts.
NOFILE_LIMIT = 20000
#: Largest message any server must accept (txsmtp --max-size).
MAX_MESSAGE_SIZE = 2_000_000_000

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
#: The STARTTLS load client (smtp-source cannot do TLS).
TLS_LOAD = os.path.join(HERE, "tls_load.py")
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
#: Identity smtp-source uses in HELO, MAIL FROM and RCPT TO.
CLIENT_NAME = "client.bench.invalid"
SENDER = "sender@bench.invalid"
RECIPIENT = "recipient@bench.invalid"

KIB = 1024
MIB = 1024 * 1024
#: MB/s uses decimal megabytes.
MB = 1_000_000

SERVER_ORDER = ("txsmtp", "txsmtp+metrics", "twisted.mail", "aiosmtpd", "smtp-sink")
#: The throughput scenarios, in the order they run (see makeScenarios).
SCENARIO_KEYS = ("1k-new", "1k-reuse", "1m", "tls-new", "lmtp", "lmtp-unix")
#: Servers for which the memory measurements are made.
MEMORY_SERVERS = ("txsmtp", "twisted.mail", "aiosmtpd")
#: What sourceHash() hashes: the txsmtp package and its twistd plugin.
SOURCE_DIRECTORIES = ("txsmtp", os.path.join("twisted", "plugins"))


# ---------------------------------------------------------------------------
# Small helpers: limits, /proc
# ---------------------------------------------------------------------------


def raiseFileLimit(wanted=NOFILE_LIMIT):
    """
    Raise this process's RLIMIT_NOFILE towards C{wanted}.

    Used in the driver and, through C{preexec_fn}, in every server it
    starts, so that thousands of idle connections fit on both sides.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    if hard == resource.RLIM_INFINITY or hard >= wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return
    try:
        # Raising the hard limit needs privilege (CAP_SYS_RESOURCE).
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def readStatusKiB(pid, name):
    """Read one ``Vm*`` line (in KiB) from /proc/PID/status."""
    prefix = name + ":"
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(prefix):
                return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {name}")


def childrenCpuSeconds():
    """User plus system CPU time of this process's waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def resetPeakRss(pid):
    """
    Reset the kernel's peak-RSS counter (VmHWM) of process C{pid}.

    Writing 5 to /proc/PID/clear_refs does this (Linux >= 4.0).

    @return: whether the reset worked.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def waitRssSettled(pid, timeout=3.0, interval=0.1, toleranceKiB=64):
    """
    Poll VmRSS until two readings in a row agree (bounded by C{timeout}).

    @return: the last reading, in KiB.
    """
    deadline = time.monotonic() + timeout
    last = readStatusKiB(pid, "VmRSS")
    while time.monotonic() < deadline:
        time.sleep(interval)
        current = readStatusKiB(pid, "VmRSS")
        if abs(current - last) <= toleranceKiB:
            return current
        last = current
    return last


class RssSampler(threading.Thread):
    """Sample a process's VmRSS every C{interval} seconds; keep the peak."""

    def __init__(self, pid, interval=0.02):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peakKiB = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                self.peakKiB = max(self.peakKiB, readStatusKiB(self.pid, "VmRSS"))
            except (OSError, BenchError):
                return
            self._halt.wait(self.interval)

    def stop(self):
        """Stop sampling and wait for the thread (bounded)."""
        self._halt.set()
        self.join(timeout=5)


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------


class ServerKind:
    """
    One kind of server under test: how to tell whether it can run here and
    how to start it on a given port.
    """

    name = ""
    description = ""
    #: Whether the server can offer STARTTLS (the TLS scenario).
    supportsTLS = False
    #: Whether the server can speak LMTP (the LMTP scenarios).
    supportsLMTP = False

    def unavailable(self):
        """Return C{None} when the server can run, else the reason it cannot."""
        return None

    def command(self, port, workdir, deliver, tls=None, lmtp=None):
        """
        The argv that starts the server listening on C{HOST}:C{port}.

        @param workdir: a private temporary directory (cwd, logs).
        @param deliver: C{None} to discard messages, or a Maildir path.
        @param tls: C{None}, or C{(certificate path, key path)} to offer
            STARTTLS with (only when L{supportsTLS}).
        @param lmtp: C{None} for SMTP; C{"tcp"} for LMTP on C{HOST}:C{port}
            instead; or C{"unix:PATH"} for LMTP on that UNIX socket (only
            when L{supportsLMTP}).
        """
        raise NotImplementedError

    def environment(self):
        """The environment for the server process."""
        return dict(os.environ)


class TxsmtpKind(ServerKind):
    """txsmtp's ``twistd smtp`` plugin, run from the checkout."""

    name = "txsmtp"
    description = "twistd smtp (this checkout)"
    supportsTLS = True
    supportsLMTP = True

    def __init__(self, repo):
        self.repo = repo

    def environment(self):
        env = dict(os.environ)
        paths = [self.repo] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def _twistd(self):
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

    def unavailable(self):
        plugin = os.path.join(self.repo, "twisted", "plugins", "txsmtp_plugin.py")
        if not os.path.exists(plugin):
            return f"{plugin} does not exist"
        with tempfile.TemporaryDirectory(prefix="txsmtp-bench-probe-") as cwd:
            try:
                probe = subprocess.run(
                    self._twistd() + ["smtp", "--help"],
                    cwd=cwd,
                    env=self.environment(),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
            except subprocess.TimeoutExpired:
                return "`twistd smtp --help` did not finish within 60 s"
        if probe.returncode != 0:
            lines = (probe.stderr or probe.stdout).strip().splitlines()
            return "`twistd smtp --help` failed: " + (
                lines[-1] if lines else f"exit {probe.returncode}"
            )
        return None

    def command(self, port, workdir, deliver, tls=None, lmtp=None):
        target = "discard" if deliver is None else f"maildir:{deliver}"
        tlsArgs = [] if tls is None else ["--tls-cert", tls[0], "--tls-key", tls[1]]
        listen = ["--listen", f"tcp:{port}:interface={HOST}:backlog={LISTEN_BACKLOG}"]
        if lmtp == "tcp":
            listen = ["--lmtp", f"tcp:{port}:interface={HOST}:backlog={LISTEN_BACKLOG}"]
        elif lmtp is not None:
            listen = ["--lmtp", f"{lmtp}:backlog={LISTEN_BACKLOG}"]
        return (
            self._twistd()
            + [
                "-n",
                "--pidfile=",
                "--logfile=" + os.path.join(workdir, "twistd.log"),
                "smtp",
                "--hostname",
                "txsmtp.bench.invalid",
                *listen,
                "--deliver",
                target,
                "--max-size",
                str(MAX_MESSAGE_SIZE),
            ]
            + tlsArgs
        )


class TxsmtpMetricsKind(TxsmtpKind):
    """
    The same ``twistd smtp`` with ``--metrics`` on (its Prometheus
    endpoint listening, never scraped during the run): what counting every
    connection, refusal and message costs, against the C{txsmtp} row.
    """

    name = "txsmtp+metrics"
    description = "twistd smtp --metrics (this checkout)"

    def unavailable(self):
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            return "prometheus_client is not installed (pip install 'txsmtp[metrics]')"
        return super().unavailable()

    def command(self, port, workdir, deliver, tls=None, lmtp=None):
        metrics = ["--metrics", f"tcp:{freePort()}:interface={HOST}"]
        return super().command(port, workdir, deliver, tls, lmtp) + metrics


class TwistedMailKind(ServerKind):
    """The twisted.mail.smtp ESMTP anchor (anchors/twisted_mail_server.py)."""

    name = "twisted.mail"
    description = "twisted.mail.smtp ESMTP, discarding"
    supportsTLS = True

    def unavailable(self):
        if importlib.util.find_spec("twisted.mail") is None:
            return "twisted.mail is not importable"
        return None

    def command(self, port, workdir, deliver, tls=None, lmtp=None):
        tlsArgs = [] if tls is None else ["--tls-cert", tls[0], "--tls-key", tls[1]]
        return [
            sys.executable,
            os.path.join(HERE, "anchors", "twisted_mail_server.py"),
            "--port",
            str(port),
            "--backlog",
            str(LISTEN_BACKLOG),
            # Log to a file, as twistd would (and as txsmtp does).
            "--logfile",
            os.path.join(workdir, "twisted-mail.log"),
        ] + tlsArgs


class AiosmtpdKind(ServerKind):
    """The aiosmtpd Sink anchor (anchors/aiosmtpd_server.py)."""

    name = "aiosmtpd"
    description = "aiosmtpd SMTP + Sink handler"
    supportsTLS = True
    supportsLMTP = True

    def unavailable(self):
        if importlib.util.find_spec("aiosmtpd") is None:
            return "aiosmtpd is not installed (pip install aiosmtpd)"
        return None

    def command(self, port, workdir, deliver, tls=None, lmtp=None):
        if lmtp is not None:
            # aiosmtpd.lmtp.LMTP, run by this script (see aiosmtpdLMTPMain).
            where = ["--port", str(port)] if lmtp == "tcp" else ["--unix", lmtp[len("unix:") :]]
            return [
                sys.executable,
                os.path.abspath(__file__),
                AIOSMTPD_LMTP,
                *where,
                "--backlog",
                str(LISTEN_BACKLOG),
            ]
        tlsArgs = [] if tls is None else ["--tls-cert", tls[0], "--tls-key", tls[1]]
        return [
            sys.executable,
            os.path.join(HERE, "anchors", "aiosmtpd_server.py"),
            "--port",
            str(port),
            "--backlog",
            str(LISTEN_BACKLOG),
        ] + tlsArgs


class SmtpSinkKind(ServerKind):
    """Postfix's smtp-sink, a C server that does nothing: the ceiling."""

    name = "smtp-sink"
    description = "Postfix smtp-sink (C, reference)"
    supportsLMTP = True

    def unavailable(self):
        if not os.access(SMTP_SINK, os.X_OK):
            return f"{SMTP_SINK} not found (apt-get install postfix)"
        return None

    def command(self, port, workdir, deliver, tls=None, lmtp=None):
        argv = [SMTP_SINK]
        if os.geteuid() == 0:
            # smtp-sink refuses to keep running as root.
            argv += ["-u", "nobody"]
        if lmtp is not None:
            argv.append("-L")
        where = f"{HOST}:{port}" if lmtp in (None, "tcp") else lmtp
        return argv + [where, str(LISTEN_BACKLOG)]


class ServerProcess:
    """A running server under test, started on a free port of 127.0.0.1."""

    def __init__(self, kind, workdir, deliver=None, tls=None, lmtp=None):
        """
        @param lmtp: C{None} (SMTP), C{"tcp"} (LMTP on the port) or
            C{"unix"} (LMTP on a UNIX socket in C{workdir}).
        """
        self.kind = kind
        self.workdir = workdir
        self.deliver = deliver
        self.tls = tls
        self.lmtp = lmtp
        #: The UNIX socket the server listens on (lmtp="unix"), else None.
        self.socketPath = os.path.join(workdir, "lmtp.sock") if lmtp == "unix" else None
        self.port = None
        self.process = None
        self._output = None

    @property
    def pid(self):
        """The server's process id (the launcher is the server itself)."""
        return self.process.pid

    def alive(self):
        """Whether the server process is still running."""
        return self.process is not None and self.process.poll() is None

    def start(self, readyTimeout=15.0):
        """Start the server and wait until it answers with a 220 greeting."""
        os.makedirs(self.workdir, exist_ok=True)
        self.port = freePort()
        self._output = open(os.path.join(self.workdir, "output.txt"), "ab")
        lmtp = self.lmtp if self.socketPath is None else f"unix:{self.socketPath}"
        self.process = subprocess.Popen(
            self.kind.command(self.port, self.workdir, self.deliver, self.tls, lmtp),
            cwd=self.workdir,
            env=self.kind.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            preexec_fn=raiseFileLimit,
            start_new_session=True,
        )
        try:
            self._waitReady(readyTimeout)
        except BenchError:
            self.stop()
            raise

    @property
    def target(self):
        """Where load clients connect: C{HOST:PORT} or C{unix:PATH} (smtp-source syntax)."""
        if self.socketPath is not None:
            return f"unix:{self.socketPath}"
        return f"{HOST}:{self.port}"

    def _connect(self):
        if self.socketPath is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(2)
            try:
                sock.connect(self.socketPath)
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection((HOST, self.port), timeout=2)

    def _waitReady(self, timeout):
        """Poll-connect until the server greets us (bounded by C{timeout})."""
        deadline = time.monotonic() + timeout
        lastError = "no attempt"
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(
                    f"{self.kind.name} exited with status {self.process.returncode}: "
                    + self.outputTail()
                )
            try:
                with self._connect() as sock:
                    greeting = sock.recv(512)
                    if greeting.startswith(b"220"):
                        sock.sendall(b"QUIT\r\n")
                        return
                    lastError = f"unexpected greeting {greeting[:60]!r}"
            except OSError as e:
                lastError = str(e)
            time.sleep(0.05)
        raise BenchError(
            f"{self.kind.name} not ready on {self.target} after {timeout:.0f} s "
            f"({lastError}): {self.outputTail()}"
        )

    def outputTail(self, lines=3):
        """The last few lines the server printed, for error messages."""
        try:
            with open(os.path.join(self.workdir, "output.txt"), "rb") as f:
                text = f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout=10.0):
        """Terminate the server (SIGTERM, then SIGKILL), bounded."""
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

    def rssKiB(self):
        """The server's current resident set size, in KiB."""
        return readStatusKiB(self.pid, "VmRSS")

    def cpuSeconds(self):
        """The server's CPU time so far, in seconds."""
        return readCpuSeconds(self.pid)


# ---------------------------------------------------------------------------
# Throughput scenarios
# ---------------------------------------------------------------------------


@dataclass
class Scenario:
    """One load pattern: smtp-source, or tls_load.py for STARTTLS."""

    key: str
    title: str
    size: int
    messages: int
    sessions: int
    reuse: bool
    #: STARTTLS on every connection, load from tls_load.py.
    tls: bool = False
    #: LMTP (smtp-source -L): C{"tcp"} or C{"unix"} (a UNIX socket); None for SMTP.
    lmtp: str | None = None
    #: Recipients per message (smtp-source -r).
    recipients: int = 1

    @property
    def variant(self):
        """Which server process the scenario runs against (see runThroughput)."""
        if self.tls:
            return "tls"
        if self.lmtp:
            return "lmtp-" + self.lmtp
        return "plain"

    def tlsLoadArgs(self, port, messages=None):
        """The tls_load.py command line for this scenario against C{port}."""
        return [
            sys.executable,
            TLS_LOAD,
            "--port",
            str(port),
            "--sessions",
            str(self.sessions),
            "--messages",
            str(self.messages if messages is None else messages),
            "--size",
            str(self.size),
            "--json",
        ]

    def runOnce(self, server, timeout, messages=None):
        """
        Run the load once against C{server} (a L{ServerProcess}, or a port).

        @return: C{(elapsed seconds, details)}: details is what tls_load.py
            reported, or C{{}} for smtp-source.
        """
        port = server if isinstance(server, int) else server.port
        if self.tls:
            return runTlsLoad(self.tlsLoadArgs(port, messages), timeout)
        target = f"{HOST}:{port}" if isinstance(server, int) else server.target
        return runSmtpSource(self.smtpSourceArgs(port, messages, target), timeout), {}

    def smtpSourceArgs(self, port, messages=None, target=None):
        """
        The smtp-source command line for this scenario against C{port} (or
        C{target}: C{HOST:PORT} or C{unix:PATH}).
        """
        argv = [
            SMTP_SOURCE,
            "-s",
            str(self.sessions),
            "-m",
            str(self.messages if messages is None else messages),
            "-l",
            str(self.size),
            "-M",
            CLIENT_NAME,
            "-f",
            SENDER,
            "-t",
            RECIPIENT,
        ]
        if self.reuse:
            argv.append("-d")
        if self.lmtp:
            argv.append("-L")
        if self.recipients > 1:
            # RCPT TO <Nrecipient@...> ... <2recipient@...>, <recipient@...>
            argv += ["-r", str(self.recipients)]
        return argv + [target or f"{HOST}:{port}"]


def makeScenarios(args):
    """The throughput scenarios, sized and chosen from the command line."""
    scenarios = [
        Scenario("1k-new", "1 KiB, new connection per message", 1024, args.n_new, 20, False),
        Scenario("1k-reuse", "1 KiB, reused connection", 1024, args.n_reuse, 20, True),
        Scenario("1m", "1 MiB messages", MIB, args.n_large, 4, True),
        Scenario(
            "tls-new",
            "1 KiB, STARTTLS per connection",
            1024,
            args.n_tls,
            args.tls_sessions,
            False,
            tls=True,
        ),
        Scenario(
            "lmtp",
            f"1 KiB LMTP over TCP{rcptTitle(args)}",
            1024,
            args.n_lmtp,
            20,
            True,
            lmtp="tcp",
            recipients=args.lmtp_rcpts,
        ),
        Scenario(
            "lmtp-unix",
            f"1 KiB LMTP, UNIX socket{rcptTitle(args)}",
            1024,
            args.n_lmtp,
            20,
            True,
            lmtp="unix",
            recipients=args.lmtp_rcpts,
        ),
    ]
    return [s for s in scenarios if s.key in args.scenarios]


def rcptTitle(args):
    """The LMTP scenarios' titles mention more than one recipient."""
    return "" if args.lmtp_rcpts == 1 else f", {args.lmtp_rcpts} rcpts"


def runsOn(scenario, kind):
    """Whether C{kind} of server takes part in C{scenario}."""
    if scenario.tls:
        return kind.supportsTLS
    if scenario.lmtp:
        return kind.supportsLMTP
    return True


#: Why a server sits a scenario out, by what the scenario needs.
SKIPPED = {"tls": "offers no STARTTLS", "lmtp": "has no LMTP server"}


@dataclass
class RunResult:
    """The outcome of one smtp-source run against one server."""

    rep: int
    scenario: str
    server: str
    ok: bool
    messages: int = 0
    size: int = 0
    seconds: float = 0.0
    msgPerSec: float = 0.0
    mbPerSec: float = 0.0
    serverCpuSeconds: float = 0.0
    clientCpuSeconds: float = 0.0
    #: The load client's CPU time over the run's time: near 1.0 means the
    #: client, not the server, set the pace.
    clientShare: float = 0.0
    otherShare: float = 0.0
    attempts: int = 1
    error: str = ""


def runSmtpSource(argv, timeout):
    """
    Run smtp-source once and time the whole subprocess.

    @return: the elapsed seconds.
    @raise BenchError: on a non-zero exit, any output, or a timeout.
    """
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"smtp-source did not finish within {timeout:.0f} s") from None
    elapsed = time.perf_counter() - started
    output = (done.stdout + done.stderr).decode("utf-8", "replace").strip()
    if done.returncode != 0 or output:
        first = output.splitlines()[0] if output else ""
        raise BenchError(f"smtp-source exit {done.returncode}: {first}".strip())
    return elapsed


def runTlsLoad(argv, timeout):
    """
    Run tls_load.py once.

    @return: C{(elapsed seconds, its JSON report)}; the time is the client's
        own, from its first connection to its last close, so that Python's
        start-up is not counted.
    @raise BenchError: on a non-zero exit, anything on stderr, or a timeout.
    """
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"tls_load.py did not finish within {timeout:.0f} s") from None
    errors = done.stderr.decode("utf-8", "replace").strip()
    if done.returncode != 0 or errors:
        first = errors.splitlines()[0] if errors else ""
        raise BenchError(f"tls_load.py exit {done.returncode}: {first}".strip())
    try:
        report = json.loads(done.stdout)
    except ValueError:
        raise BenchError(f"tls_load.py printed no report: {done.stdout[:80]!r}") from None
    return report["seconds"], report


def measureThroughput(server, scenario, rep, timeout):
    """Run one scenario against one running server and return the result."""
    result = RunResult(rep, scenario.key, server.kind.name, False, scenario.messages, scenario.size)
    if not server.alive():
        result.error = "server not running"
        return result
    try:
        serverBefore = server.cpuSeconds()
        clientBefore = childrenCpuSeconds()
        machineBefore = MachineTime.now()
        elapsed, details = scenario.runOnce(server, timeout)
        machine = MachineTime.now() - machineBefore
        result.serverCpuSeconds = server.cpuSeconds() - serverBefore
        result.clientCpuSeconds = childrenCpuSeconds() - clientBefore
        result.otherShare = otherShare(machine, result.serverCpuSeconds + result.clientCpuSeconds)
        # tls_load.py reports its CPU time over its own timed span (without
        # interpreter start-up); smtp-source's is taken over its whole run.
        result.clientShare = details.get("clientCpuShare", result.clientCpuSeconds / elapsed)
    except (BenchError, OSError) as e:
        result.error = str(e)
        if not server.alive():
            result.error += f"; server died: {server.outputTail()}"
        return result
    result.ok = True
    result.seconds = elapsed
    result.msgPerSec = scenario.messages / elapsed
    result.mbPerSec = scenario.messages * scenario.size / elapsed / MB
    return result


def warmUp(server, scenarios, timeout):
    """A short unrecorded run of each scenario, so start-up costs don't count."""
    for scenario in scenarios:
        count = max(scenario.sessions, min(200, scenario.messages // 10))
        try:
            scenario.runOnce(server, timeout, messages=count)
        except BenchError as e:
            return f"warm-up {scenario.key}: {e}"
    return None


def makeCertificate(directory, keyType="ec"):
    """
    Write a self-signed certificate for C{HOST} and its key as PEM files in
    C{directory}, with the cryptography package (which pyOpenSSL, and so
    Twisted's TLS, depends on).

    @param keyType: C{"ec"} (ECDSA P-256, what certbot issues by default) or
        C{"rsa"} (RSA 2048).
    @return: C{(certificate path, key path)}.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    if keyType == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.invalid")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("bench.invalid"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certPath = os.path.join(directory, "bench-cert.pem")
    keyPath = os.path.join(directory, "bench-key.pem")
    with open(certPath, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(keyPath, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.chmod(keyPath, 0o600)
    return certPath, keyPath


# ---------------------------------------------------------------------------
# Memory measurements
# ---------------------------------------------------------------------------


def findDeliveredFile(maildir, minimum, timeout=10.0):
    """Wait (bounded) for a file of at least C{minimum} bytes in Maildir/new."""
    newDir = os.path.join(maildir, "new")
    deadline = time.monotonic() + timeout
    largest = 0
    while True:
        try:
            names = os.listdir(newDir)
        except FileNotFoundError:
            names = []
        for name in names:
            try:
                largest = max(largest, os.path.getsize(os.path.join(newDir, name)))
            except OSError:
                pass
        if largest >= minimum or time.monotonic() >= deadline:
            return largest
        time.sleep(0.1)


def measureLargeMessage(kind, workdir, sizeBytes, timeout):
    """
    RSS growth of a fresh server while one message of C{sizeBytes} arrives.

    txsmtp delivers it into a Maildir (whose file is then checked); the
    anchors discard it.  The peak is the larger of a 20 ms VmRSS sampler
    and VmHWM (reset just before the send); growth is peak minus the RSS
    read just before the send.
    """
    maildir = os.path.join(workdir, "Maildir") if kind.name == "txsmtp" else None
    record = {
        "server": kind.name,
        "ok": False,
        "bytes": sizeBytes,
        "delivery": "maildir" if maildir else "discard",
    }
    server = ServerProcess(kind, workdir, deliver=maildir)
    try:
        server.start()
        # One small message first, so that first-use costs are not counted.
        small = Scenario("warm", "", 1024, 1, 1, False)
        runSmtpSource(small.smtpSourceArgs(server.port), timeout)
        before = waitRssSettled(server.pid)
        hwmReset = resetPeakRss(server.pid)
        sampler = RssSampler(server.pid)
        sampler.start()
        try:
            big = Scenario("big", "", sizeBytes, 1, 1, False)
            elapsed = runSmtpSource(big.smtpSourceArgs(server.port), timeout)
        finally:
            sampler.stop()
        peak = sampler.peakKiB
        if hwmReset:
            peak = max(peak, readStatusKiB(server.pid, "VmHWM"))
        after = waitRssSettled(server.pid)
        record.update(
            ok=True,
            seconds=elapsed,
            rssBeforeMiB=before / KIB,
            rssPeakMiB=peak / KIB,
            growthMiB=(peak - before) / KIB,
            retainedMiB=(after - before) / KIB,
            peakMethod="VmHWM+sampler" if hwmReset else "sampler",
        )
        if maildir is not None:
            delivered = findDeliveredFile(maildir, sizeBytes)
            record["deliveredBytes"] = delivered
            if delivered < sizeBytes:
                record["ok"] = False
                record["error"] = (
                    f"largest file in Maildir/new is {delivered} bytes, expected >= {sizeBytes}"
                )
    except (BenchError, OSError) as e:
        record["error"] = str(e)
    finally:
        server.stop()
        if maildir is not None:
            shutil.rmtree(maildir, ignore_errors=True)
    return record


def openIdleConnections(port, count, timeout, inFlight=200):
    """
    Open C{count} connections to C{port} and read each one's 220 greeting.

    At most C{inFlight} connections wait for their greeting at a time, so the
    listen queue never overflows.  Everything is non-blocking and bounded by
    C{timeout} seconds.

    @return: the list of connected sockets (the caller closes them).
    """
    selector = selectors.DefaultSelector()
    greeted = []
    pending = {}
    started = 0
    deadline = time.monotonic() + timeout
    try:
        while len(greeted) < count:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"only {len(greeted)} of {count} connections greeted within {timeout:.0f} s"
                )
            while started < count and len(pending) < inFlight:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                code = sock.connect_ex((HOST, port))
                if code not in (0, errno.EINPROGRESS):
                    sock.close()
                    raise BenchError(f"connect #{started + 1}: {os.strerror(code)}")
                selector.register(sock, selectors.EVENT_READ)
                pending[sock] = bytearray()
                started += 1
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError as e:
                    raise BenchError(f"after {len(greeted)} greeted connections: {e}") from e
                if not data:
                    raise BenchError(
                        f"server closed a connection after {len(greeted)} were greeted"
                    )
                buffer = pending[sock]
                buffer += data
                if b"\n" in buffer:
                    if not buffer.startswith(b"220"):
                        raise BenchError(f"unexpected greeting {bytes(buffer[:60])!r}")
                    selector.unregister(sock)
                    del pending[sock]
                    greeted.append(sock)
    except BaseException:
        for sock in greeted + list(pending):
            sock.close()
        raise
    finally:
        selector.close()
    return greeted


def measureIdleConnections(kind, workdir, count, timeout):
    """RSS growth per idle (greeted) connection, on a fresh server."""
    record = {"server": kind.name, "ok": False, "connections": count}
    server = ServerProcess(kind, workdir)
    sockets = []
    try:
        server.start()
        # Pay first-connection costs before the baseline.
        for sock in openIdleConnections(server.port, min(50, count), timeout):
            sock.close()
        before = waitRssSettled(server.pid)
        started = time.perf_counter()
        sockets = openIdleConnections(server.port, count, timeout)
        elapsed = time.perf_counter() - started
        after = waitRssSettled(server.pid)
        if not server.alive():
            raise BenchError("server died while holding the connections")
        record.update(
            ok=True,
            seconds=elapsed,
            rssBeforeMiB=before / KIB,
            rssAfterMiB=after / KIB,
            kibPerConnection=(after - before) / count,
        )
    except (BenchError, OSError) as e:
        record["error"] = str(e)
    finally:
        for sock in sockets:
            sock.close()
        server.stop()
    return record


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def summarise(results, scenarios, serverNames):
    """Median msg/s and MB/s per (scenario, server) over successful runs."""
    summary = {}
    for scenario in scenarios:
        for name in serverNames:
            runs = [r for r in results if r.scenario == scenario.key and r.server == name]
            good = [r for r in runs if r.ok]
            entry = {
                "runs": len(runs),
                "ok": len(good),
                "errors": sorted({r.error for r in runs if not r.ok}),
            }
            if not runs and (scenario.tls or scenario.lmtp):
                entry["skipped"] = SKIPPED["tls" if scenario.tls else "lmtp"]
            if good:
                entry["clientShare"] = statistics.median(r.clientShare for r in good)
                entry["msgPerSec"] = statistics.median(r.msgPerSec for r in good)
                entry["mbPerSec"] = statistics.median(r.mbPerSec for r in good)
                entry["cpuUsPerMsg"] = statistics.median(
                    r.serverCpuSeconds / r.messages * 1e6 for r in good
                )
                entry["other"] = statistics.median(r.otherShare for r in good)
                entry["spread"] = (
                    max(r.msgPerSec for r in good) - min(r.msgPerSec for r in good)
                ) / entry["msgPerSec"]
            summary[(scenario.key, name)] = entry
    return summary


def throughputTable(summary, scenarios, serverNames, unavailable):
    """The main results table, as text."""
    header = (
        f"{'scenario':<36} {'server':<14} {'msg/s':>9} {'MB/s':>8} {'CPU us/msg':>10} "
        f"{'client':>6} {'spread':>6} {'other':>5} {'/twisted.mail':>13} {'/aiosmtpd':>9}"
    )
    lines = [header, "-" * len(header)]
    for scenario in scenarios:
        for name in serverNames:
            if name in unavailable:
                lines.append(f"{scenario.title:<36} {name:<14} unavailable")
                continue
            entry = summary[(scenario.key, name)]
            if "skipped" in entry:
                lines.append(f"{scenario.title:<36} {name:<14} n/a ({entry['skipped']})")
                continue
            if "msgPerSec" not in entry:
                lines.append(
                    f"{scenario.title:<36} {name:<14} FAILED ({'; '.join(entry['errors'])[:80]})"
                )
                continue
            failed = (
                "" if entry["ok"] == entry["runs"] else f"  ({entry['runs'] - entry['ok']} failed)"
            )
            mine = (scenario.key, name)
            byTwisted = ratio(summary, mine, (scenario.key, "twisted.mail"))
            byAiosmtpd = ratio(summary, mine, (scenario.key, "aiosmtpd"))
            lines.append(
                f"{scenario.title:<36} {name:<14} {entry['msgPerSec']:>9.0f} "
                f"{entry['mbPerSec']:>8.1f} {entry['cpuUsPerMsg']:>10.0f} "
                f"{entry['clientShare']:>6.0%} {entry['spread']:>6.0%} {entry['other']:>5.0%} "
                f"{formatRatio(byTwisted):>13} {formatRatio(byAiosmtpd):>9}{failed}"
            )
        lines.append("")
    return "\n".join(lines)


def memoryTable(largeRecords, idleRecords, bigSize, idleCount):
    """The memory measurements, as text."""
    lines = []
    if largeRecords:
        lines.append(
            f"One {bigSize / MIB:.0f} MiB message (txsmtp into a Maildir, anchors discard it):"
        )
        for rec in largeRecords:
            if rec.get("ok"):
                extra = ""
                if "deliveredBytes" in rec:
                    extra = f", Maildir file {rec['deliveredBytes'] / MIB:.1f} MiB"
                lines.append(
                    f"  {rec['server']:<13} RSS growth {rec['growthMiB']:8.1f} MiB "
                    f"(before {rec['rssBeforeMiB']:.1f}, peak {rec['rssPeakMiB']:.1f}, "
                    f"retained {rec['retainedMiB']:+.1f}; {rec['seconds']:.1f} s{extra})"
                )
            else:
                lines.append(f"  {rec['server']:<13} FAILED: {rec.get('error', '?')}")
    if idleRecords:
        lines.append(f"{idleCount} idle connections (greeted, then left open):")
        for rec in idleRecords:
            if rec.get("ok"):
                lines.append(
                    f"  {rec['server']:<13} {rec['kibPerConnection']:6.2f} KiB per connection "
                    f"(RSS {rec['rssBeforeMiB']:.1f} -> {rec['rssAfterMiB']:.1f} MiB; "
                    f"opened in {rec['seconds']:.1f} s)"
                )
            else:
                lines.append(f"  {rec['server']:<13} FAILED: {rec.get('error', '?')}")
    return "\n".join(lines)


def evaluateTargets(summary, largeRecords, idleRecords, bigSize, idleCount):
    """Compare txsmtp's figures with the project's targets."""
    targets = []

    def add(what, value, shown, passed, note=""):
        verdict = "n/a" if value is None else ("PASS" if passed else "FAIL")
        targets.append(
            {"target": what, "value": value, "shown": shown, "verdict": verdict, "note": note}
        )

    throughputTargets = (
        ("1k-new", "1 KiB new conn", "twisted.mail", 1.5),
        ("1k-new", "1 KiB new conn", "aiosmtpd", 3.0),
        ("1k-reuse", "1 KiB reused conn", "twisted.mail", 1.5),
        ("1k-reuse", "1 KiB reused conn", "aiosmtpd", 3.0),
        ("1m", "1 MiB messages", "twisted.mail", 4.0),
    )
    for key, title, anchor, wanted in throughputTargets:
        r = ratio(summary, (key, "txsmtp"), (key, anchor))
        byCpu = cpuRatio(summary, (key, "txsmtp"), (key, anchor))
        add(
            f"{title}: >= {wanted:g}x {anchor}",
            r,
            formatRatio(r),
            r is not None and r >= wanted,
            "" if byCpu is None else f"by server CPU per message: {formatRatio(byCpu)}",
        )

    large = next((rec for rec in largeRecords if rec["server"] == "txsmtp" and rec.get("ok")), None)
    growth = large["growthMiB"] if large else None
    note = "" if bigSize == 100 * MIB else f"measured with {bigSize / MIB:.0f} MiB, not 100 MiB"
    add(
        "100 MiB into Maildir: < 5 MiB RSS growth",
        growth,
        "-" if growth is None else f"{growth:.1f} MiB",
        growth is not None and growth < 5,
        note,
    )

    idle = next((rec for rec in idleRecords if rec["server"] == "txsmtp" and rec.get("ok")), None)
    perConn = idle["kibPerConnection"] if idle else None
    note = "" if idleCount == 5000 else f"measured with {idleCount} connections, not 5000"
    add(
        "idle connections: <= 2 KiB each",
        perConn,
        "-" if perConn is None else f"{perConn:.2f} KiB",
        perConn is not None and perConn <= 2,
        note,
    )
    return targets


def lmtpComparison(summary, scenarios):
    """
    txsmtp's LMTP figures side by side: against aiosmtpd and smtp-sink on
    each transport, the UNIX socket against TCP, and LMTP against SMTP on
    1 KiB reused connections (the same smtp-source load but for -L).

    @return: a dict of ratios (C{None} where a figure is missing).
    """
    keys = {s.key for s in scenarios}
    result = {}
    for key in ("lmtp", "lmtp-unix"):
        if key in keys:
            result[key] = {
                anchor: {
                    "throughput": ratio(summary, (key, "txsmtp"), (key, anchor)),
                    "cpuPerMessage": cpuRatio(summary, (key, "txsmtp"), (key, anchor)),
                }
                for anchor in ("aiosmtpd", "smtp-sink")
            }
    if {"lmtp", "lmtp-unix"} <= keys:
        mine = summary.get(("lmtp-unix", "txsmtp"), {}).get("msgPerSec")
        tcp = summary.get(("lmtp", "txsmtp"), {}).get("msgPerSec")
        result["txsmtpUnixOverTcp"] = mine / tcp if mine and tcp else None
    if {"lmtp", "1k-reuse"} <= keys:
        lmtp = summary.get(("lmtp", "txsmtp"), {}).get("msgPerSec")
        smtp = summary.get(("1k-reuse", "txsmtp"), {}).get("msgPerSec")
        result["txsmtpLmtpOverSmtp"] = lmtp / smtp if lmtp and smtp else None
    return result


def lmtpText(comparison):
    """The LMTP comparison, as text."""
    lines = ["txsmtp's LMTP listener:"]
    for key, where in (("lmtp", "over TCP"), ("lmtp-unix", "over a UNIX socket")):
        if key in comparison:
            parts = []
            for anchor in ("aiosmtpd", "smtp-sink"):
                r = comparison[key][anchor]
                parts.append(
                    f"{formatRatio(r['throughput'])} {anchor}'s msg/s "
                    f"(by server CPU per message {formatRatio(r['cpuPerMessage'])})"
                )
            lines.append(f"  {where:<19} " + "; ".join(parts))
    if "txsmtpUnixOverTcp" in comparison:
        lines.append(
            f"  UNIX socket / TCP:  {formatRatio(comparison['txsmtpUnixOverTcp'])} (msg/s)"
        )
    if "txsmtpLmtpOverSmtp" in comparison:
        lines.append(
            "  LMTP / SMTP, 1 KiB reused connections, over TCP: "
            f"{formatRatio(comparison['txsmtpLmtpOverSmtp'])} (msg/s)"
        )
    return "\n".join(lines)


def metricsComparison(summary, scenarios):
    """
    What --metrics costs: the C{txsmtp+metrics} row over the C{txsmtp} row
    of the same run, by msg/s and by server CPU per message, per scenario.
    """
    result = {}
    for s in scenarios:
        mine, plain = (s.key, "txsmtp+metrics"), (s.key, "txsmtp")
        if "msgPerSec" in summary.get(mine, {}) and "msgPerSec" in summary.get(plain, {}):
            result[s.key] = {
                "throughput": ratio(summary, mine, plain),
                "cpuPerMessage": cpuRatio(summary, mine, plain),
            }
    return result


def metricsText(comparison, scenarios):
    lines = ["txsmtp with --metrics / without (same run):"]
    titles = {s.key: s.title for s in scenarios}
    for key, r in comparison.items():
        lines.append(
            f"  {titles[key]:<36} msg/s {formatRatio(r['throughput'])}, "
            f"server CPU per message {formatRatio(r['cpuPerMessage'])}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def parseArgs(argv):
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Benchmark txsmtp's server against twisted.mail.smtp and aiosmtpd."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: small message counts, 1 repetition, small memory tests",
    )
    parser.add_argument(
        "--reps", type=int, help="repetitions of every scenario (default 3; 1 with --quick)"
    )
    parser.add_argument("--only", help="comma-separated servers: " + ",".join(SERVER_ORDER))
    parser.add_argument("--json", metavar="FILE", help="also write all results to FILE as JSON")
    parser.add_argument(
        "--repo", default=DEFAULT_REPO, help="txsmtp checkout (default: %(default)s)"
    )
    parser.add_argument(
        "--n-new", type=int, help="messages, 1 KiB new-connection scenario (default 5000)"
    )
    parser.add_argument(
        "--n-reuse", type=int, help="messages, 1 KiB reused-connection scenario (default 20000)"
    )
    parser.add_argument("--n-large", type=int, help="messages, 1 MiB scenario (default 400)")
    parser.add_argument(
        "--n-tls", type=int, help="messages, 1 KiB STARTTLS-per-connection scenario (default 2000)"
    )
    parser.add_argument(
        "--n-lmtp", type=int, help="messages, each 1 KiB LMTP scenario (default 20000)"
    )
    parser.add_argument(
        "--lmtp-rcpts",
        type=int,
        default=1,
        help="recipients per message in the LMTP scenarios (smtp-source -r; default %(default)s)",
    )
    parser.add_argument(
        "--no-lmtp", action="store_true", help="skip the LMTP scenarios (lmtp, lmtp-unix)"
    )
    parser.add_argument(
        "--tls-sessions",
        type=int,
        default=20,
        help="concurrent sessions of the STARTTLS scenario (default %(default)s)",
    )
    parser.add_argument(
        "--tls-key-type",
        choices=("ec", "rsa"),
        default="ec",
        help="the servers' certificate key: ECDSA P-256 or RSA 2048 (default %(default)s)",
    )
    parser.add_argument(
        "--scenarios",
        help="comma-separated throughput scenarios to run: "
        + ",".join(SCENARIO_KEYS)
        + " (default: all)",
    )
    parser.add_argument("--no-tls", action="store_true", help="skip the STARTTLS scenario")
    parser.add_argument(
        "--big-mib", type=int, help="size of the single large message in MiB (default 100)"
    )
    parser.add_argument("--idle", type=int, help="idle connections to hold (default 5000)")
    parser.add_argument(
        "--no-throughput", action="store_true", help="skip the throughput scenarios"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=300,
        help="limit for one smtp-source run, seconds (default %(default)s)",
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
        "--keep-tmp", action="store_true", help="keep the temporary directory (logs)"
    )
    args = parser.parse_args(argv)

    quick = {
        "reps": 1,
        "n_new": 500,
        "n_reuse": 2000,
        "n_large": 20,
        "n_tls": 300,
        "n_lmtp": 2000,
        "big_mib": 10,
        "idle": 500,
    }
    full = {
        "reps": 3,
        "n_new": 5000,
        "n_reuse": 20000,
        "n_large": 400,
        "n_tls": 2000,
        "n_lmtp": 20000,
        "big_mib": 100,
        "idle": 5000,
    }
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    if args.scenarios:
        keys = [k.strip() for k in args.scenarios.split(",") if k.strip()]
        unknown = [k for k in keys if k not in SCENARIO_KEYS]
        if unknown:
            parser.error(
                f"unknown scenario(s): {', '.join(unknown)}; choose from {', '.join(SCENARIO_KEYS)}"
            )
        args.scenarios = [k for k in SCENARIO_KEYS if k in keys]
    else:
        args.scenarios = list(SCENARIO_KEYS)
    if args.no_tls and "tls-new" in args.scenarios:
        args.scenarios.remove("tls-new")
    if args.no_lmtp:
        args.scenarios = [k for k in args.scenarios if not k.startswith("lmtp")]
    if args.lmtp_rcpts < 1:
        parser.error("--lmtp-rcpts must be at least 1")

    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SERVER_ORDER]
        if unknown:
            parser.error(
                f"unknown server(s): {', '.join(unknown)}; choose from {', '.join(SERVER_ORDER)}"
            )
        args.servers = [n for n in SERVER_ORDER if n in names]
    else:
        args.servers = list(SERVER_ORDER)
    return args


def runThroughput(args, kinds, available, tmp):
    """
    Start every available server once, then run the interleaved scenarios.

    Servers that offer STARTTLS get a second process, started with a
    certificate, for the TLS scenario, so that the plain scenarios measure
    the servers exactly as before.
    """
    scenarios = makeScenarios(args)
    results = []
    servers = {}
    tlsFiles = None
    if any(s.tls for s in scenarios):
        tlsFiles = makeCertificate(tmp, args.tls_key_type)
    try:
        labels = {
            "plain": "",
            "tls": " (STARTTLS)",
            "lmtp-tcp": " (LMTP)",
            "lmtp-unix": " (LMTP, UNIX)",
        }
        for name in available:
            variants = {s.variant: s for s in scenarios if runsOn(s, kinds[name])}
            for variant in sorted(variants):
                scenario = variants[variant]
                label = name + labels[variant]
                suffix = "" if variant == "plain" else "-" + variant
                workdir = os.path.join(tmp, "throughput", name + suffix)
                server = ServerProcess(
                    kinds[name],
                    workdir,
                    tls=tlsFiles if scenario.tls else None,
                    lmtp=scenario.lmtp,
                )
                try:
                    server.start()
                    progress(f"started {label} (pid {server.pid}, {server.target})")
                except BenchError as e:
                    progress(f"could not start {label}: {e}")
                servers[(name, variant)] = server
        for (name, variant), server in servers.items():
            if server.alive():
                problem = warmUp(
                    server, [s for s in scenarios if s.variant == variant], args.run_timeout
                )
                if problem:
                    progress(f"{name}: {problem}")

        order = list(available)
        restarted = set()
        for rep in range(1, args.reps + 1):
            for scenario in scenarios:
                for name in order:
                    if not runsOn(scenario, kinds[name]):
                        continue
                    key = (name, scenario.variant)
                    server = servers[key]
                    if server.process is not None and not server.alive() and key not in restarted:
                        # A server that died gets one fresh start; its failed
                        # run has been recorded already.
                        restarted.add(key)
                        server.stop()
                        try:
                            server.start()
                            progress(f"restarted {name} (pid {server.pid}, {server.target})")
                        except BenchError as e:
                            progress(f"could not restart {name}: {e}")
                    result = measureQuietly(
                        args, measureThroughput, server, scenario, rep, args.run_timeout
                    )
                    results.append(result)
                    if result.ok:
                        progress(
                            f"[rep {rep}/{args.reps}] {scenario.title:<34} {name:<13} "
                            f"{result.messages} msgs in {result.seconds:6.2f} s = "
                            f"{result.msgPerSec:8.0f} msg/s {result.mbPerSec:7.1f} MB/s "
                            f"(server CPU {result.serverCpuSeconds / result.seconds:.0%}, "
                            f"client CPU {result.clientShare:.0%}, "
                            f"other load {result.otherShare:.0%}, attempts {result.attempts})"
                        )
                    else:
                        progress(
                            f"[rep {rep}/{args.reps}] {scenario.title:<34} {name:<13} FAILED: {result.error}"
                        )
            # Rotate who goes first, so position in the sequence favours no one.
            order = order[1:] + order[:1]
    finally:
        for server in servers.values():
            server.stop()
    return scenarios, results


def runMemory(args, kinds, available, tmp):
    """The large-message and idle-connection measurements, fresh servers each."""
    largeRecords, idleRecords = [], []
    names = [n for n in available if n in MEMORY_SERVERS]
    bigSize = args.big_mib * MIB
    for name in names:
        progress(f"{name}: one {args.big_mib} MiB message ...")
        rec = measureLargeMessage(
            kinds[name], os.path.join(tmp, "large", name), bigSize, args.run_timeout
        )
        progress(f"  {rec}")
        largeRecords.append(rec)
    for name in names:
        progress(f"{name}: {args.idle} idle connections ...")
        rec = measureIdleConnections(
            kinds[name], os.path.join(tmp, "idle", name), args.idle, timeout=120
        )
        progress(f"  {rec}")
        idleRecords.append(rec)
    return largeRecords, idleRecords


#: The first argument that makes this script the aiosmtpd LMTP anchor.
AIOSMTPD_LMTP = "--aiosmtpd-lmtp-anchor"


def aiosmtpdLMTPMain(argv):
    """
    The LMTP anchor: C{aiosmtpd.lmtp.LMTP} on a plain asyncio server (no
    Controller thread), like anchors/aiosmtpd_server.py does for SMTP, with
    a handler that drops every message.

    aiosmtpd's LMTP class changes only the greeting commands: the replies
    after the data are the handler's to give, and its default is a single
    C{250 OK}.  The handler here answers once per recipient (RFC 2033
    §4.2), as smtp-source -L expects.  Listens on C{HOST}:C{--port} or on
    the UNIX socket C{--unix} and prints C{LISTENING <where>}.
    """
    import asyncio

    from aiosmtpd.lmtp import LMTP

    parser = argparse.ArgumentParser(prog=f"server.py {AIOSMTPD_LMTP}")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--unix", help="listen on this UNIX socket instead")
    parser.add_argument("--backlog", type=int, default=LISTEN_BACKLOG)
    args = parser.parse_args(argv)

    class LMTPSink:
        async def handle_DATA(self, server, session, envelope):
            return "\r\n".join(["250 2.0.0 OK"] * len(envelope.rcpt_tos))

    async def serve():
        loop = asyncio.get_running_loop()
        handler = LMTPSink()

        def protocolFactory():
            return LMTP(
                handler,
                data_size_limit=MAX_MESSAGE_SIZE,
                hostname="aiosmtpd.bench.invalid",
                loop=loop,
            )

        if args.unix:
            server = await loop.create_unix_server(
                protocolFactory, path=args.unix, backlog=args.backlog
            )
            where = f"unix:{args.unix}"
        else:
            server = await loop.create_server(
                protocolFactory, host=HOST, port=args.port, backlog=args.backlog
            )
            where = str(server.sockets[0].getsockname()[1])
        sys.stdout.write(f"LISTENING {where}\n")
        sys.stdout.flush()
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


def main(argv=None):
    """Run the benchmarks and print the report."""
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == [AIOSMTPD_LMTP]:
        aiosmtpdLMTPMain(argv[1:])
        return
    args = parseArgs(argv)
    if not os.access(SMTP_SOURCE, os.X_OK):
        sys.exit(f"{SMTP_SOURCE} not found: apt-get install postfix (see benchmarks/README.md)")
    raiseFileLimit()

    kinds = {
        "txsmtp": TxsmtpKind(os.path.abspath(args.repo)),
        "txsmtp+metrics": TxsmtpMetricsKind(os.path.abspath(args.repo)),
        "twisted.mail": TwistedMailKind(),
        "aiosmtpd": AiosmtpdKind(),
        "smtp-sink": SmtpSinkKind(),
    }
    unavailable = {}
    for name in args.servers:
        reason = kinds[name].unavailable()
        if reason:
            unavailable[name] = reason
            progress(f"{name}: unavailable: {reason}")
    available = [n for n in args.servers if n not in unavailable]

    busy = idleCheck()
    if busy > BUSY_WARNING:
        progress(
            f"warning: {busy:.0%} of the CPU time is in use before we start; figures will be noisy"
        )
    tmp = tempfile.mkdtemp(prefix="txsmtp-bench-")
    report = {
        "machine": machineInfo(
            args.repo,
            ("twisted", "aiosmtpd", "uvloop"),
            SOURCE_DIRECTORIES,
            {"openssl": ssl.OPENSSL_VERSION},
        ),
        "config": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "unavailable": unavailable,
        "busyBeforeStart": busy,
    }
    scenarios, results, summary = makeScenarios(args), [], {}
    largeRecords, idleRecords = [], []
    try:
        if not args.no_throughput and available:
            scenarios, results = runThroughput(args, kinds, available, tmp)
            summary = summarise(results, scenarios, available)
        if not args.no_memory and available:
            largeRecords, idleRecords = runMemory(args, kinds, available, tmp)
    finally:
        if args.keep_tmp:
            progress(f"temporary files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    bigSize = args.big_mib * MIB
    out = []
    out.append(
        f"txsmtp server benchmark: {args.reps} repetition(s), median shown; "
        f"{report['machine']['cpus']} CPUs, Python {report['machine']['python']}, "
        f"Twisted {report['machine']['twisted']}, aiosmtpd {report['machine']['aiosmtpd']}; "
        f"txsmtp at {report['machine']['repoRevision']} (sources {report['machine']['txsmtpSourceHash']})"
    )
    if any(s.tls for s in scenarios):
        loop = (
            f"uvloop {report['machine']['uvloop']}"
            if report["machine"]["uvloop"]
            else "asyncio (no uvloop)"
        )
        out.append(
            f"STARTTLS scenario: tls_load.py on {loop}, {report['machine']['openssl']}, "
            f"{args.tls_key_type.upper()} certificate, {args.tls_sessions} sessions"
        )
    if any(s.lmtp for s in scenarios):
        out.append(
            f"LMTP scenarios: smtp-source -L -s 20 -d, {args.lmtp_rcpts} recipient(s) per "
            "message; txsmtp twistd smtp --lmtp, aiosmtpd.lmtp.LMTP, smtp-sink -L "
            "(twisted.mail has no LMTP server)"
        )
    for name, reason in unavailable.items():
        out.append(f"{name}: unavailable ({reason})")
    noisy = [r for r in results if r.ok and r.otherShare > BUSY_WARNING]
    if busy > BUSY_WARNING or noisy:
        out.append(
            f"WARNING: the machine was busy with other work ({busy:.0%} before the start; "
            f"{len(noisy)} of {len(results)} runs with more than {BUSY_WARNING:.0%} other load): "
            "these figures are noisy."
        )
    out.append("")
    if summary:
        out.append(throughputTable(summary, scenarios, args.servers, unavailable))
        out.append(
            "msg/s, MB/s (10^6 bytes of message payload) and the server's CPU time per message\n"
            "are medians over the repetitions; 'client' is the load client's CPU time over the\n"
            "run's time (near 100% = the client set the pace, not the server); 'spread' is\n"
            "(max-min)/median of msg/s; 'other' is the median share of the machine's CPU time\n"
            "that went to anything but the server and the load client (smtp-source, or\n"
            "tls_load.py for STARTTLS), hypervisor steal included (high = noisy figure);\n"
            "ratios are this row's median msg/s over the anchor's."
        )
        out.append("")
    lmtp = lmtpComparison(summary, scenarios) if summary else {}
    if lmtp and "txsmtp" in available:
        out.append(lmtpText(lmtp))
        out.append("")
    metrics = metricsComparison(summary, scenarios) if summary else {}
    if metrics:
        out.append(metricsText(metrics, scenarios))
        out.append("")
    if largeRecords or idleRecords:
        out.append(memoryTable(largeRecords, idleRecords, bigSize, args.idle))
        out.append("")
    targets = evaluateTargets(summary, largeRecords, idleRecords, bigSize, args.idle)
    if "txsmtp" in args.servers:
        out.append(targetsTable(targets, "txsmtp against its targets:", 44, 10))
    print("\n".join(out))

    if args.json:
        report.update(
            runs=[asdict(r) for r in results],
            summary=[
                {"scenario": key, "server": name, **entry} for (key, name), entry in summary.items()
            ],
            ratios={
                s.key: {
                    anchor: {
                        "throughput": ratio(summary, (s.key, "txsmtp"), (s.key, anchor)),
                        "cpuPerMessage": cpuRatio(summary, (s.key, "txsmtp"), (s.key, anchor)),
                    }
                    for anchor in ("twisted.mail", "aiosmtpd", "smtp-sink")
                }
                for s in scenarios
            },
            lmtp=lmtp,
            metrics=metrics,
            largeMessage=largeRecords,
            idleConnections=idleRecords,
            targets=targets,
        )
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, default=str)
        progress(f"results written to {args.json}")


if __name__ == "__main__":
    main()
