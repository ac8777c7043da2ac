"""
Maildir commits and the reactor: ``twistd -n smtp --deliver maildir:DIR``
from one or more checkouts, side by side, interleaved.

Postfix's ``smtp-source`` sends MESSAGES 1 KiB messages over SESSIONS
sessions (``-d``: one connection per session) into a Maildir on local disk
(under ``--dir``, /root by default: not a tmpfs, where fsync costs
nothing); meanwhile a probe session sends NOOP after NOOP and times each
reply, which is how long the reactor leaves an idle session waiting.  Each
checkout runs ROUNDS times; medians are printed.  Not part of the tests:
run it by hand.

Compare two commits::

    git archive OLD | (mkdir -p /tmp/old && tar -x -C /tmp/old)
    git archive NEW | (mkdir -p /tmp/new && tar -x -C /tmp/new)
    python3 benchmarks/maildir_commit.py --sessions 100 --messages 2000 --rounds 5 /tmp/old /tmp/new
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def probe(port: int, stop: threading.Event, times: list[float]) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s, s.makefile("rb") as f:
        f.readline()
        s.sendall(b"EHLO probe.invalid\r\n")
        while f.readline()[3:4] != b" ":
            pass
        while not stop.is_set():
            start = time.perf_counter()
            s.sendall(b"NOOP\r\n")
            f.readline()
            times.append(time.perf_counter() - start)
            stop.wait(0.002)


def run(checkout: str, sessions: int, messages: int, port: int, top: str) -> tuple[float, float, float]:
    """One run: messages per second, and the probe's median and 99th percentile NOOP time in ms."""
    work = tempfile.mkdtemp(prefix="maildir-bench.", dir=top)
    log = os.path.join(work, "twistd.log")
    server = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         f"--logfile={log}", "smtp", "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--deliver", f"maildir:{work}/Maildir", "--hostname", "bench.invalid"],
        cwd=work, env=dict(os.environ, PYTHONPATH=os.path.abspath(checkout)),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (os.path.exists(log) and "listening on" in open(log).read()):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"twistd from {checkout} did not start; see {log}")
            time.sleep(0.1)
        stop, times = threading.Event(), []
        prober = threading.Thread(target=probe, args=(port, stop, times))
        prober.start()
        start = time.perf_counter()
        subprocess.run(
            ["smtp-source", "-d", "-s", str(sessions), "-m", str(messages), "-l", "1024",
             "-f", "a@example.org", "-t", "b@example.com", f"127.0.0.1:{port}"],
            check=True,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        stop.set()
        prober.join()
        stored = len(os.listdir(os.path.join(work, "Maildir", "new")))
        if stored != messages:
            raise SystemExit(f"{checkout}: {stored} of {messages} messages stored")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    times.sort()
    return messages / elapsed, times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", help="directories holding a txsmtp checkout")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8731)
    parser.add_argument("--dir", default="/root", help="where the Maildirs go (a disk, not a tmpfs)")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float, float]]] = {c: [] for c in args.checkouts}
    for _ in range(args.rounds):
        for checkout in args.checkouts:
            rate, p50, p99 = run(checkout, args.sessions, args.messages, args.port, args.dir)
            results[checkout].append((rate, p50, p99))
            print(f"  {checkout}: {rate:.0f} msg/s, NOOP p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
    for checkout, runs in results.items():
        print(
            f"{checkout} ({args.sessions} sessions): {statistics.median(r[0] for r in runs):.0f} msg/s, "
            f"NOOP p50 {statistics.median(r[1] for r in runs):.2f} ms, p99 {statistics.median(r[2] for r in runs):.2f} ms"
        )


if __name__ == "__main__":
    main()
