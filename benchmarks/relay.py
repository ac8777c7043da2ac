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
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in map(os.path.abspath, sys.path):
    sys.path.insert(0, HERE)
REPO = os.path.dirname(HERE)
if REPO not in map(os.path.abspath, sys.path):
    # tests/postfixd.py writes Postfix's configuration.
    sys.path.insert(0, REPO)

from _bench import BenchError, machineInfo, progress, waitForQuiet  # noqa: E402
from relay_nodes import Postfix, Sink, Txsmtp, run  # noqa: E402
from relay_queue import claimWorker, queueAtSize  # noqa: E402

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
