"""
The relay end to end: messages per second from ``smtp-source`` through a
relay's durable queue into ``smtp-sink``, txsmtp beside a real Postfix.

Both relays run on this machine in the same run, on 127.0.0.1, their
queues on the same disk (``--dir``, not a tmpfs), fsync on for both, and
pass every message to the same ``smtp-sink``: ``txsmtp`` is ``twistd -n smtp
--queue DIR --relay-host [127.0.0.1]:SINKPORT --relay-tls none
--relay-networks 127.0.0.0/8`` from the checkout (``--repo``); ``postfix``
is ``postfix -c CONFDIR start-fg`` with a private configuration written by
``tests/postfixd.py`` (``relayhost = [127.0.0.1]:SINKPORT``, every limit
at Postfix's default).

A run: ``smtp-source -s SESSIONS -m MESSAGES -l 1024 -d`` into the relay;
the clock stops when ``smtp-sink -c`` has counted MESSAGES more messages.
Runs are interleaved (the order rotating each repetition) after one
unrecorded warm-up each; medians and txsmtp / Postfix are reported, with
txsmtp's resident set.  Then the queue at size: a fresh process fills a
txsmtp SQLite store with ``--queued`` (100,000) messages through its API
and times opening it, ``nextDue()`` and ``claim(owner, 100, 600)``; then
``twistd`` starts on that queue and relays it into smtp-sink for
``--serve-seconds`` (``--drain``: all of it) while its memory is read.

Run as root (Postfix's master must start as root; smtp-sink gets ``-u
nobody``).  Not part of the tests; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in map(os.path.abspath, sys.path):
    sys.path.insert(0, HERE)
REPO = os.path.dirname(HERE)
if REPO not in map(os.path.abspath, sys.path):
    # tests/postfixd.py writes Postfix's configuration.
    sys.path.insert(0, REPO)

from _bench import (  # noqa: E402
    BenchError,
    MachineTime,
    freePort,
    machineInfo,
    progress,
    waitForQuiet,
)

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

    def __init__(self, workdir: str) -> None:
        self.port = freePort()
        argv = [SMTP_SINK]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
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
    name = "txsmtp"

    def __init__(self, repo: str, workdir: str, sinkPort: int, queue: str | None = None) -> None:
        self.repo, self.workdir = repo, workdir
        os.makedirs(workdir, exist_ok=True)
        self.queue = queue or os.path.join(workdir, "queue")
        self.log = os.path.join(workdir, "twistd.log")
        self.port = freePort()
        argv = [*TWISTD, "-n", "--pidfile=", f"--logfile={self.log}", "smtp",
                "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                "--hostname", "relay.bench.invalid", "--queue", self.queue,
                "--relay-host", f"[127.0.0.1]:{sinkPort}", "--relay-tls", "none",
                "--relay-networks", "127.0.0.0/8"]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=repo, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(argv, cwd=workdir, env=env)
        self.pid = self.process.pid
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


class Postfix:
    name = "postfix"

    def __init__(self, workdir: str, sinkPort: int) -> None:
        from tests.postfixd import writeConfig

        root = os.path.join(workdir, "postfix")
        os.mkdir(root)
        os.chmod(root, 0o755)
        self.port = freePort()
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


def run(
    relay, sink: Sink, messages: int, sessions: int, size: int, reuse: bool, timeout: float
) -> dict:
    """smtp-source into ``relay``; the time until smtp-sink counted every message."""
    target = sink.count + messages
    argv = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", SENDER, "-t", RECIPIENT, "-M", "client.bench.invalid"]  # fmt: skip
    if reuse:
        argv.append("-d")
    argv.append(f"127.0.0.1:{relay.port}")
    machine = MachineTime.now()
    start = time.perf_counter()
    source = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    accepted = time.perf_counter() - start
    if source.returncode != 0 or source.stdout.strip() or source.stderr.strip():
        raise BenchError(
            f"smtp-source into {relay.name}: exit {source.returncode}: {source.stdout}{source.stderr}"
        )
    if not sink.waitFor(target, timeout):
        raise BenchError(
            f"{relay.name}: smtp-sink counted {sink.count - target + messages} of {messages}"
        )
    elapsed = time.perf_counter() - start
    spent = MachineTime.now() - machine
    return {
        # The machine's CPU in use during the run, everything included (the
        # relay, smtp-source, smtp-sink and whatever else runs): near 100 %
        # the run was CPU-bound, and other work on the machine slowed it.
        "machineBusy": (spent.busy + spent.steal) / spent.total if spent.total else 0.0,
        "msgPerSec": messages / elapsed,
        "acceptPerSec": messages / accepted,
        "seconds": elapsed,
    }


# ---------------------------------------------------------------------------
# The queue at size (a worker process of its own)
# ---------------------------------------------------------------------------


def claimWorker(directory: str, count: int, claims: int) -> None:
    """Fill a store with ``count`` messages, then time claim(); print one JSON line."""
    from twisted.internet import defer, task

    from txsmtp.queue.model import QueuedRecipient
    from txsmtp.queue.sqlite import SQLiteStore

    body = b"Subject: queued\r\n\r\n" + b"x" * 1000 + b"\r\n"

    async def fill(reactor) -> float:
        store = SQLiteStore(directory, reactor=reactor, sync=False)
        await store.open()
        start = time.perf_counter()
        inFlight = 256
        done = 0
        while done < count:
            batch = []
            for _ in range(min(inFlight, count - done)):
                writer = store.newMessage()
                writer.write(body)
                batch.append(writer.commit(SENDER, [QueuedRecipient(0, RECIPIENT)], {}))
            await defer.gatherResults(batch, consumeErrors=True)
            done += len(batch)
        elapsed = time.perf_counter() - start
        await store.close()
        return elapsed

    async def measure(reactor) -> dict:
        fillSeconds = await fill(reactor)
        store = SQLiteStore(directory, reactor=reactor)
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


def queueAtSize(args, workdir: str, sink: Sink) -> dict:
    directory = os.path.join(workdir, "bigqueue")
    progress(f"filling a queue with {args.queued:,} messages through the store's API ...")
    env = dict(os.environ, PYTHONPATH=args.repo)
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--claim-worker", directory,
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


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def parseArgs(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1 repetition, 300 messages, 10,000 queued",
    )
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument(
        "--new-connections", action="store_true", help="one connection per message (no -d)"
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default="txsmtp,postfix")
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=20)
    parser.add_argument("--no-queue", action="store_true", help="skip the queue at size")
    parser.add_argument(
        "--serve-seconds",
        type=float,
        default=15.0,
        help="how long twistd relays the big queue while its memory is watched (15)",
    )
    parser.add_argument(
        "--drain", action="store_true", help="relay the whole big queue into smtp-sink"
    )
    parser.add_argument(
        "--dir", default="/var/tmp", help="where the queues go (a disk, not a tmpfs)"
    )
    parser.add_argument("--repo", default=REPO)
    parser.add_argument("--run-timeout", type=float, default=300.0)
    parser.add_argument("--quiet-wait", type=float, default=10.0)
    parser.add_argument("--json")
    parser.add_argument("--keep-tmp", action="store_true")
    parser.add_argument("--claim-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.messages, args.queued, args.claims = 1, 300, 10_000, 10
    return args


def main(argv=None) -> int:
    args = parseArgs(argv)
    if args.claim_worker:
        # The store of the checkout measured, not of this script's.
        sys.path.insert(0, os.path.abspath(args.repo))
        claimWorker(args.claim_worker, args.queued, args.claims)
        return 0
    workdir = tempfile.mkdtemp(prefix="relay-bench.", dir=args.dir)
    os.chmod(workdir, 0o755)
    names = [n for n in args.only.split(",") if n]
    unavailable = {"txsmtp": Txsmtp.unavailable(args.repo), "postfix": Postfix.unavailable()}
    results: dict = {"runs": {n: [] for n in names}, "errors": {}, "unavailable": {}}
    sink = Sink(workdir)
    relays = {}
    try:
        for name in names:
            if unavailable.get(name):
                results["unavailable"][name] = unavailable[name]
                progress(f"{name}: unavailable: {unavailable[name]}")
                continue
            progress(f"starting {name} ...")
            os.makedirs(os.path.join(workdir, name), exist_ok=True)
            if name == "txsmtp":
                relays[name] = Txsmtp(args.repo, os.path.join(workdir, name), sink.port)
            else:
                relays[name] = Postfix(os.path.join(workdir, name), sink.port)
        reuse = not args.new_connections
        for relay in relays.values():
            run(relay, sink, 50, min(args.sessions, 10), args.size, reuse, args.run_timeout)
        order = list(relays)
        for rep in range(args.reps):
            for name in order[rep % len(order) :] + order[: rep % len(order)]:
                waitForQuiet(args.quiet_wait)
                try:
                    r = run(
                        relays[name],
                        sink,
                        args.messages,
                        args.sessions,
                        args.size,
                        reuse,
                        args.run_timeout,
                    )
                except (BenchError, subprocess.TimeoutExpired) as e:
                    results["errors"].setdefault(name, []).append(str(e))
                    progress(f"  {name}: FAILED: {e}")
                    continue
                results["runs"][name].append(r)
                progress(
                    f"  rep {rep + 1} {name}: {r['msgPerSec']:.0f} msg/s end to end, accepted at {r['acceptPerSec']:.0f} msg/s,"
                    f" machine {r['machineBusy']:.0%} busy"
                )
        if "txsmtp" in relays:
            results["txsmtpRss"] = relays["txsmtp"].rss()
        for relay in relays.values():
            relay.stop()
        relays.clear()
        if not args.no_queue and "txsmtp" in names and not unavailable["txsmtp"]:
            results["queue"] = queueAtSize(args, workdir, sink)
    finally:
        for relay in relays.values():
            relay.stop()
        sink.stop()
        if not args.keep_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    report(args, results)
    return 0 if not results["errors"] else 1


def report(args, results) -> None:
    summary = {}
    for name, runs in results["runs"].items():
        if runs:
            summary[name] = {
                "msgPerSec": statistics.median(r["msgPerSec"] for r in runs),
                "acceptPerSec": statistics.median(r["acceptPerSec"] for r in runs),
                "machineBusy": statistics.median(r["machineBusy"] for r in runs),
                "runs": len(runs),
            }
    results["summary"] = summary
    mode = "new connection per message" if args.new_connections else "reused connections (-d)"
    print(
        f"relay end to end: {args.messages:,} messages of {args.size} octets, {args.sessions} sessions, {mode}, median of {args.reps}"
    )
    print(f"{'relay':<10}{'msg/s end to end':>20}{'accepted msg/s':>18}{'machine busy':>15}")
    for name, s in summary.items():
        print(
            f"{name:<10}{s['msgPerSec']:>20,.0f}{s['acceptPerSec']:>18,.0f}{s['machineBusy']:>15.0%}"
        )
    print(
        f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs)"
    )
    for name, reason in results["unavailable"].items():
        print(f"{name:<10}  unavailable: {reason}")
    for name, errors in results["errors"].items():
        print(f"{name:<10}  {len(errors)} failed run(s): {errors[0]}")
    if "txsmtp" in summary and "postfix" in summary:
        results["ratio"] = summary["txsmtp"]["msgPerSec"] / summary["postfix"]["msgPerSec"]
        print(f"txsmtp / Postfix: {results['ratio']:.2f}x end to end (goal: at least 1.00x)")
    if "txsmtpRss" in results:
        r = results["txsmtpRss"]
        print(
            f"txsmtp RSS after the runs: {r['rssKiB'] / 1024:.1f} MiB (peak {r['peakKiB'] / 1024:.1f} MiB)"
        )
    q = results.get("queue")
    if q:
        print(
            f"queue of {q['queued']:,} messages (filled in {q['fillSeconds']:.0f} s): open {q['openMs']:.0f} ms, "
            f"nextDue {q['nextDueMs']:.1f} ms, claim(100) median {q['claimMedianMs']:.1f} ms, "
            f"max {q['claimMaxMs']:.1f} ms over {q['claims']} claims"
        )
        if "served" in q:
            print(
                f"twistd started on it: RSS {q['rssKiB'] / 1024:.1f} MiB (peak {q['peakKiB'] / 1024:.1f} MiB)"
                f" after relaying {q['served']:,} of them into smtp-sink in {q['serveSeconds']:.0f} s"
                f" ({q['servePerSec']:,.0f} msg/s{', all' if q['drained'] else ''})"
            )
    if args.json:
        results["machine"] = machineInfo(args.repo, ["twisted"], ["txsmtp"])
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
