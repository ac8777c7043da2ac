"""
The processes of the relay benchmark (benchmarks/relay.py): smtp-sink
counting what arrives, the relays (``twistd smtp`` from the checkout, a
private Postfix), and one timed run of smtp-source into a relay.

Not part of txsmtp; see benchmarks/README.md.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

from _bench import BenchError, MachineTime, freePort, readCpuSeconds

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
SENDER = "sender@bench.invalid"
RECIPIENT = "recipient@remote.bench.invalid"
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
START_TIMEOUT = 60.0


def readStatusKiB(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {name}")


def waitUntil(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate()`` (a benchmark may poll; the tests never do)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def fileContains(path: str, text: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return text in f.read()
    except FileNotFoundError:
        return False


def greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            ok = s.recv(512).startswith(b"220")
            s.sendall(b"QUIT\r\n")
            return ok
    except OSError:
        return False


# ---------------------------------------------------------------------------
# smtp-sink, counting
# ---------------------------------------------------------------------------


class Sink:
    """``smtp-sink -c``: its running counter of messages (``mesg=N``) read from stdout."""

    def __init__(self, workdir: str, lmtp: bool = False) -> None:
        self.port = freePort()
        argv = [SMTP_SINK]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        argv += ["-L"] if lmtp else []
        argv += ["-c", "-m", "1000", f"127.0.0.1:{self.port}", "1024"]
        self.count = 0
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        threading.Thread(target=self._read, daemon=True).start()
        waitUntil(lambda: greets(self.port), 15, "smtp-sink to listen")

    def _read(self) -> None:
        pending = b""
        assert self.process.stdout is not None
        while True:
            data = self.process.stdout.read1(65536)  # type: ignore[attr-defined]
            if not data:
                return
            pending += data
            *fields, pending = re.split(rb"[\r\n]", pending)
            counts = [int(m.group(1)) for f in fields if (m := re.search(rb"mesg=(\d+)", f))]
            if counts:
                with self._changed:
                    self.count = max(self.count, *counts)
                    self._changed.notify_all()

    def waitFor(self, total: int, timeout: float) -> bool:
        """Wait until ``total`` messages have been counted; whether they were in time."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.count < total:
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    return False
                self._changed.wait(min(left, 1.0))
            return True

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# ---------------------------------------------------------------------------
# The relays
# ---------------------------------------------------------------------------


class Txsmtp:
    """One ``twistd smtp`` relaying into smtp-sink; ``extra`` options go after the others."""

    def __init__(
        self,
        repo: str,
        workdir: str,
        sinkPort: int,
        queue: str | None = None,
        extra: tuple[str, ...] = (),
        name: str = "txsmtp",
        networks: str | None = "127.0.0.0/8",
    ) -> None:
        self.name = name
        self.repo, self.workdir = repo, workdir
        os.makedirs(workdir, exist_ok=True)
        self.queue = queue or os.path.join(workdir, "queue")
        self.log = os.path.join(workdir, "twistd.log")
        self.port = freePort()
        self.ports = [self.port]
        argv = [*TWISTD, "-n", "--pidfile=", f"--logfile={self.log}", "smtp",
                "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                "--hostname", "relay.bench.invalid", "--queue", self.queue,
                "--relay-host", f"[127.0.0.1]:{sinkPort}", "--relay-tls", "none",
                *(("--relay-networks", networks) if networks else ()), *extra]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=repo, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(argv, cwd=workdir, env=env)
        self.pid = self.process.pid
        #: The processes whose CPU time a run records.
        self.pids = [self.pid]
        waitUntil(
            lambda: (
                self.process.poll() is not None or fileContains(self.log, "txsmtp listening on")
            ),
            START_TIMEOUT,
            "twistd to listen",
        )
        if self.process.poll() is not None:
            raise BenchError(f"twistd exited ({self.process.returncode}); see {self.log}")

    def rss(self) -> dict[str, int]:
        return {
            "rssKiB": readStatusKiB(self.pid, "VmRSS"),
            "peakKiB": readStatusKiB(self.pid, "VmHWM"),
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @staticmethod
    def unavailable(repo: str) -> str | None:
        env = dict(os.environ, PYTHONPATH=repo)
        # From the checkout's directory: `python -c` puts the working directory first on sys.path.
        out = subprocess.run(
            [*TWISTD, "smtp", "--help"],
            env=env,
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if "--relay-host" not in out.stdout:
            return "this checkout's twistd smtp has no --relay-host (the relay is not there yet)"
        return None


class TxsmtpNodes:
    """
    ``count`` ``twistd smtp`` nodes on one PostgreSQL queue (``--queue URL
    --queue-node nK``), each on a port of its own: a run splits its messages
    and sessions across them, as HAProxy would.
    """

    def __init__(
        self,
        repo: str,
        workdir: str,
        sinkPort: int,
        url: str,
        count: int,
        name: str,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.nodes: list[Txsmtp] = []
        try:
            for k in range(1, count + 1):
                self.nodes.append(
                    Txsmtp(
                        repo,
                        os.path.join(workdir, f"n{k}"),
                        sinkPort,
                        queue=url,
                        extra=("--queue-node", f"n{k}", *extra),
                        name=f"{name}/n{k}",
                    )
                )
        except BaseException:
            self.stop()
            raise
        self.ports = [node.port for node in self.nodes]
        self.pids = [node.pid for node in self.nodes]

    def rss(self) -> dict[str, int]:
        """The nodes' resident sets, summed."""
        total = {"rssKiB": 0, "peakKiB": 0}
        for node in self.nodes:
            for key, value in node.rss().items():
                total[key] += value
        return total

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class Postfix:
    name = "postfix"
    #: Postfix's work is spread over processes that come and go: no CPU time recorded.
    pids: list[int] = []

    def __init__(self, workdir: str, sinkPort: int) -> None:
        from tests.postfixd import writeConfig

        root = os.path.join(workdir, "postfix")
        os.mkdir(root)
        os.chmod(root, 0o755)
        self.port = freePort()
        self.ports = [self.port]
        self.maillog = os.path.join(root, "maillog")
        self.layout = writeConfig(
            root,
            self.port,
            relayHost=f"[127.0.0.1]:{sinkPort}",
            hostname="postfix.bench.invalid",
            maillog=self.maillog,
        )
        with open(os.path.join(root, "start-fg.out"), "wb") as out:
            self.process = subprocess.Popen(
                [POSTFIX, "-c", self.layout.conf, "start-fg"], cwd=root, stdout=out, stderr=out
            )
        waitUntil(
            lambda: self.process.poll() is not None or fileContains(self.maillog, "daemon started"),
            START_TIMEOUT,
            "Postfix to start",
        )
        if self.process.poll() is not None or not greets(self.port):
            raise BenchError(f"Postfix did not start; see {self.maillog}")

    def stop(self) -> None:
        subprocess.run([POSTFIX, "-c", self.layout.conf, "stop"], capture_output=True, timeout=60)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            subprocess.run(
                [POSTFIX, "-c", self.layout.conf, "abort"], capture_output=True, timeout=60
            )
            self.process.kill()
            self.process.wait()

    @staticmethod
    def unavailable() -> str | None:
        if not os.access(POSTFIX, os.X_OK):
            return f"{POSTFIX} not found (apt-get install postfix)"
        if os.geteuid() != 0:
            return "Postfix's master must be started as root"
        return None


# ---------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------


def share(total: int, parts: int, k: int) -> int:
    """Part ``k`` of ``total`` split as evenly as can be into ``parts``."""
    return total // parts + (1 if k < total % parts else 0)


def run(
    relay,
    sink: Sink,
    messages: int,
    sessions: int,
    size: int,
    reuse: bool,
    timeout: float,
    sender: str = SENDER,
    recipient: str = RECIPIENT,
    messageFile: str | None = None,
    otherPids: tuple[int, ...] = (),
) -> dict:
    """
    smtp-source into ``relay``; the time until smtp-sink counted every
    message.  A relay of several nodes gets one smtp-source per node at the
    same time, the messages and sessions split between them.

    ``messageFile``: smtp-source sends it (``-F``, its lines ending in LF)
    instead of a message of its own of ``size`` octets.  The CPU time of
    ``relay.pids`` is recorded (``cpuMsPerMsg``), and that of ``otherPids``
    (``otherCpuMsPerMsg``: a helper such as the DNS server).
    """
    target = sink.count + messages
    ports = relay.ports
    argvs = []
    for k, port in enumerate(ports):
        argv = [SMTP_SOURCE, "-s", str(max(1, share(sessions, len(ports), k))),
                "-m", str(share(messages, len(ports), k)),
                "-f", sender, "-t", recipient, "-M", "client.bench.invalid"]  # fmt: skip
        argv += ["-F", messageFile] if messageFile else ["-l", str(size)]
        if reuse:
            argv.append("-d")
        argv.append(f"127.0.0.1:{port}")
        argvs.append(argv)
    machine = MachineTime.now()
    cpu = [readCpuSeconds(pid) for pid in relay.pids]
    otherCpu = [readCpuSeconds(pid) for pid in otherPids]
    start = time.perf_counter()
    sources = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for argv in argvs
    ]
    deadline = time.monotonic() + timeout
    try:
        for source in sources:
            out, _ = source.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if source.returncode != 0 or out.strip():
                raise BenchError(f"smtp-source into {relay.name}: exit {source.returncode}: {out}")
    finally:
        for source in sources:
            if source.poll() is None:
                source.kill()
                source.wait()
    accepted = time.perf_counter() - start
    if not sink.waitFor(target, timeout):
        raise BenchError(
            f"{relay.name}: smtp-sink counted {sink.count - target + messages} of {messages}"
        )
    elapsed = time.perf_counter() - start
    spent = MachineTime.now() - machine
    cpuSeconds = sum(readCpuSeconds(pid) for pid in relay.pids) - sum(cpu)
    otherSeconds = sum(readCpuSeconds(pid) for pid in otherPids) - sum(otherCpu)
    cpuFigures = {"cpuMsPerMsg": cpuSeconds * 1000 / messages} if relay.pids else {}
    if otherPids:
        cpuFigures["otherCpuMsPerMsg"] = otherSeconds * 1000 / messages
    return {
        **cpuFigures,
        # The machine's CPU in use during the run, everything included (the
        # relay, smtp-source, smtp-sink and whatever else runs): near 100 %
        # the run was CPU-bound, and other work on the machine slowed it.
        "machineBusy": (spent.busy + spent.steal) / spent.total if spent.total else 0.0,
        "msgPerSec": messages / elapsed,
        "acceptPerSec": messages / accepted,
        "seconds": elapsed,
    }
