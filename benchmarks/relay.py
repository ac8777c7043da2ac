"""
The relay end to end: messages per second from ``smtp-source`` through a
relay's durable queue into ``smtp-sink``, txsmtp beside a real Postfix.

Every relay runs on this machine in the same run, on 127.0.0.1, their
queues on the same disk (``--dir``, not a tmpfs), fsync on for all, and
pass every message to the same ``smtp-sink``: ``txsmtp`` is ``twistd -n smtp
--queue DIR --relay-host [127.0.0.1]:SINKPORT --relay-tls none
--relay-networks 127.0.0.0/8`` from the checkout (``--repo``); ``postfix``
is ``postfix -c CONFDIR start-fg`` with a private configuration written by
``tests/postfixd.py`` (``relayhost = [127.0.0.1]:SINKPORT``, every limit
at Postfix's default).  With ``--queue postgresql://...`` two more:
``txsmtp-pg``, the same ``twistd`` with ``--queue URL --queue-node n1``,
and ``txsmtp-pg2``, two of them (``n1``, ``n2``) on one queue, each
configuration on a fresh schema of that database.

A run: ``smtp-source -s SESSIONS -m MESSAGES -l 1024 -d`` into the relay
(into each node of ``txsmtp-pg2`` at once, the messages and sessions split
in two); the clock stops when ``smtp-sink -c`` has counted MESSAGES more
messages.  Runs are interleaved (the order rotating each repetition) after
one unrecorded warm-up each; medians and their ratios (to Postfix, and
PostgreSQL to SQLite) are reported, with txsmtp's resident set.  Then the
queue at size: a fresh process fills a txsmtp SQLite store with
``--queued`` (100,000) messages through its API and times opening it,
``nextDue()`` and ``claim(owner, 100, 600)``; then ``twistd`` starts on
that queue and relays it into smtp-sink for ``--serve-seconds``
(``--drain``: all of it) while its memory is read.  With ``--queue``, the
same fill and claims against a PostgresStore.

With ``--mailauth``, the relays of benchmarks/relay_mailauth.py join the
rounds: txsmtp signing (``--dkim``) or checking (``--verify-inbound``)
every message; the relay's CPU time per message is recorded for every
txsmtp relay, and the cost of signing or verifying reported as the
difference from the plain txsmtp relay.

Run as root (Postfix's master must start as root; smtp-sink gets ``-u
nobody``).  Not part of the tests; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
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

import relay_pg  # noqa: E402
from _bench import BenchError, machineInfo, progress, waitForQuiet  # noqa: E402
from relay_mailauth import NAMES as MAILAUTH_NAMES  # noqa: E402
from relay_mailauth import MailAuth, checkLog  # noqa: E402
from relay_nodes import Postfix, Sink, Txsmtp, TxsmtpNodes, run  # noqa: E402
from relay_queue import claimWorker, queueAtSize  # noqa: E402

#: The txsmtp configurations on PostgreSQL, and their number of nodes.
PG_NODES = {"txsmtp-pg": 1, "txsmtp-pg2": 2}

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
    parser.add_argument(
        "--only",
        help="relays to run, from txsmtp,txsmtp-pg,txsmtp-pg2,postfix,"
        "txsmtp-dkim,txsmtp-dkim-ed,txsmtp-verify"
        " (default: txsmtp,postfix, the -pg ones with --queue, the others with --mailauth)",
    )
    parser.add_argument(
        "--queue",
        metavar="postgresql://...",
        help="also txsmtp on this PostgreSQL database, 1 and 2 nodes (each on a fresh schema)",
    )
    parser.add_argument(
        "--pg-options",
        metavar="'OPTIONS'",
        help="more twistd smtp options for the PostgreSQL nodes, e.g. '--queue-pool 4'",
    )
    parser.add_argument(
        "--mailauth",
        action="store_true",
        help="also txsmtp-dkim (every message DKIM-signed, RSA 2048) and txsmtp-verify"
        " (SPF, DKIM and DMARC checked on every message), beside the plain txsmtp relay",
    )
    parser.add_argument(
        "--ed25519", action="store_true", help="with --mailauth: txsmtp-dkim-ed too (Ed25519)"
    )
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=100)
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
    if args.queue and not relay_pg.isPostgres(args.queue):
        parser.error("--queue takes a postgresql:// URL")
    if args.only is None:
        args.only = "txsmtp,txsmtp-pg,txsmtp-pg2,postfix" if args.queue else "txsmtp,postfix"
        if args.mailauth:
            extra = ["txsmtp-dkim", *(["txsmtp-dkim-ed"] if args.ed25519 else []), "txsmtp-verify"]
            args.only = args.only.replace("txsmtp,", "txsmtp," + ",".join(extra) + ",", 1)
    for name in args.only.split(","):
        if name and name not in ("txsmtp", "postfix", *PG_NODES, *MAILAUTH_NAMES):
            parser.error(f"--only: no relay {name!r}")
        if name in PG_NODES and not args.queue:
            parser.error(f"--only {name} needs --queue postgresql://...")
    if args.quick:
        args.reps, args.messages, args.queued, args.claims = 1, 300, 10_000, 10
    return args


def startRelay(name: str, args, workdir: str, sink: Sink, schemas: list[str], mailauth=None):
    os.makedirs(workdir, exist_ok=True)
    if name in MAILAUTH_NAMES:
        return mailauth.start(name, workdir, sink.port)
    if name == "txsmtp":
        return Txsmtp(args.repo, workdir, sink.port)
    if name in PG_NODES:
        schema, url = relay_pg.createSchema(args.queue, "relaybench_" + name.replace("-", "_"))
        schemas.append(schema)
        progress(f"  {name}: schema {schema}")
        extra = tuple(shlex.split(args.pg_options or ""))
        return TxsmtpNodes(args.repo, workdir, sink.port, url, PG_NODES[name], name, extra)
    return Postfix(workdir, sink.port)


def sinkAndOptions(name: str, sink: Sink, options: dict) -> tuple[Sink, dict]:
    """The sink a relay delivers to, and the rest of what run() is given for it."""
    rest = dict(options.get(name, {}))
    return rest.pop("sink", sink), rest


def main(argv=None) -> int:
    args = parseArgs(argv)
    if args.claim_worker:
        # The store of the checkout measured, not of this script's.
        sys.path.insert(0, os.path.abspath(args.repo))
        if relay_pg.isPostgres(args.claim_worker):
            relay_pg.claimWorker(args.claim_worker, args.queued, args.claims)
        else:
            claimWorker(args.claim_worker, args.queued, args.claims)
        return 0
    workdir = tempfile.mkdtemp(prefix="relay-bench.", dir=args.dir)
    os.chmod(workdir, 0o755)
    names = [n for n in args.only.split(",") if n]
    unavailable = {"txsmtp": Txsmtp.unavailable(args.repo), "postfix": Postfix.unavailable()}
    if args.queue:
        pgUnavailable = unavailable["txsmtp"] or relay_pg.unavailable(args.queue, args.repo)
        unavailable.update(dict.fromkeys(PG_NODES, pgUnavailable))
    unavailable.update(dict.fromkeys(MAILAUTH_NAMES, unavailable["txsmtp"]))
    results: dict = {"runs": {n: [] for n in names}, "errors": {}, "unavailable": {}, "rss": {}}
    sink = Sink(workdir)
    relays: dict = {}
    schemas: list[str] = []
    mailauth = None
    options: dict = {}
    try:
        if any(n in MAILAUTH_NAMES and not unavailable[n] for n in names):
            mailauth = MailAuth(args.repo, workdir, args.size)
            options = {n: mailauth.runOptions(n) for n in names if n in MAILAUTH_NAMES}
        for name in names:
            if unavailable.get(name):
                results["unavailable"][name] = unavailable[name]
                progress(f"{name}: unavailable: {unavailable[name]}")
                continue
            progress(f"starting {name} ...")
            relays[name] = startRelay(
                name, args, os.path.join(workdir, name), sink, schemas, mailauth
            )
        reuse = not args.new_connections
        for name, relay in relays.items():
            try:
                runSink, runOptions = sinkAndOptions(name, sink, options)
                run(
                    relay, runSink, 50, min(args.sessions, 10), args.size, reuse,
                    args.run_timeout, **runOptions,
                )  # fmt: skip
            except (BenchError, subprocess.TimeoutExpired) as e:
                # Counted as a failed run; the measured runs still go ahead.
                results["errors"].setdefault(name, []).append(f"warm-up: {e}")
                progress(f"  {name}: warm-up FAILED: {e}")
        order = list(relays)
        for rep in range(args.reps):
            for name in order[rep % len(order) :] + order[: rep % len(order)]:
                waitForQuiet(args.quiet_wait)
                try:
                    runSink, runOptions = sinkAndOptions(name, sink, options)
                    r = run(
                        relays[name],
                        runSink,
                        args.messages,
                        args.sessions,
                        args.size,
                        reuse,
                        args.run_timeout,
                        **runOptions,
                    )
                except (BenchError, subprocess.TimeoutExpired) as e:
                    results["errors"].setdefault(name, []).append(str(e))
                    progress(f"  {name}: FAILED: {e}")
                    continue
                results["runs"][name].append(r)
                progress(
                    f"  rep {rep + 1} {name}: {r['msgPerSec']:.0f} msg/s end to end,"
                    f" accepted at {r['acceptPerSec']:.0f} msg/s,"
                    f" machine {r['machineBusy']:.0%} busy"
                    + (f", relay CPU {r['cpuMsPerMsg']:.2f} ms/msg" if "cpuMsPerMsg" in r else "")
                )
        for name, relay in relays.items():
            if name != "postfix":
                results["rss"][name] = relay.rss()
            if name in MAILAUTH_NAMES:
                results.setdefault("mailauthLog", {})[name] = checkLog(relay)
        if "txsmtp" in results["rss"]:
            results["txsmtpRss"] = results["rss"]["txsmtp"]
        for relay in relays.values():
            relay.stop()
        relays.clear()
        if not args.no_queue and "txsmtp" in names and not unavailable["txsmtp"]:
            results["queue"] = queueAtSize(args, workdir, sink)
        if not args.no_queue and args.queue and not unavailable["txsmtp-pg"]:
            results["pgQueue"] = relay_pg.claimsAtSize(args)
    finally:
        for relay in relays.values():
            relay.stop()
        if mailauth is not None:
            mailauth.stop()
        sink.stop()
        if not args.keep_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
            for schema in schemas:
                relay_pg.dropSchema(args.queue, schema)
        else:
            progress(
                f"kept {workdir}" + (f" and the schemas {', '.join(schemas)}" if schemas else "")
            )
    report(args, results)
    return 0 if not results["errors"] else 1


#: The ratios reported, numerator / denominator, when both ran.
RATIOS = (
    ("txsmtp", "postfix", "txsmtp (SQLite) / Postfix", " (goal: at least 1.00x)"),
    ("txsmtp-pg", "postfix", "txsmtp-pg (1 node) / Postfix", ""),
    ("txsmtp-pg2", "postfix", "txsmtp-pg2 (2 nodes) / Postfix", ""),
    ("txsmtp-pg", "txsmtp", "PostgreSQL / SQLite, 1 node each", ""),
    ("txsmtp-pg2", "txsmtp-pg", "PostgreSQL, 2 nodes / 1 node", ""),
)


MAILAUTH_LABELS = {
    "txsmtp-dkim": "DKIM signing, RSA 2048",
    "txsmtp-dkim-ed": "DKIM signing, Ed25519",
    "txsmtp-verify": "SPF + DKIM verify + DMARC",
}


def reportMailAuth(results, summary) -> None:
    """
    The ``--mailauth`` relays against the plain txsmtp relay and Postfix:
    the cost per message is the difference in the relay's median CPU ms
    per message (and, from throughput alone, in wall-clock ms per message).
    """
    names = [n for n in MAILAUTH_NAMES if n in summary]
    if not names or "txsmtp" not in summary:
        return
    base = summary["txsmtp"]
    print(
        "mail authentication, per message, against the plain txsmtp relay"
        f" ({base['msgPerSec']:,.0f} msg/s, {base.get('cpuMsPerMsg', 0):.2f} CPU ms/msg):"
    )
    print(
        f"{'relay':<16}{'msg/s':>8}{'/txsmtp':>9}{'/Postfix':>10}{'CPU ms/msg':>12}"
        f"{'+CPU ms':>9}{'+wall ms':>10}  checked"
    )
    mailauth = results.setdefault("mailauth", {})
    for name in names:
        s = summary[name]
        vsBase = s["msgPerSec"] / base["msgPerSec"]
        vsPostfix = s["msgPerSec"] / summary["postfix"]["msgPerSec"] if "postfix" in summary else None
        cost = s["cpuMsPerMsg"] - base["cpuMsPerMsg"] if "cpuMsPerMsg" in s else None
        wall = 1000 / s["msgPerSec"] - 1000 / base["msgPerSec"]
        log = results.get("mailauthLog", {}).get(name, {})
        if "checked" in log:
            checked = f"{log['allPass']:,} of {log['checked']:,} spf+dkim+dmarc pass"
        else:
            checked = f"{log.get('notSigned', '?')} not signed"
        if "otherCpuMsPerMsg" in s:
            checked += f"; DNS server {s['otherCpuMsPerMsg']:.2f} CPU ms/msg besides"
        print(
            f"{name:<16}{s['msgPerSec']:>8,.0f}{vsBase:>8.2f}x"
            + (f"{vsPostfix:>9.2f}x" if vsPostfix else f"{'-':>10}")
            + f"{s.get('cpuMsPerMsg', float('nan')):>12.2f}"
            + (f"{cost:>+9.2f}" if cost is not None else f"{'-':>9}")
            + f"{wall:>+10.2f}  {checked}"
        )
        mailauth[name] = {
            "what": MAILAUTH_LABELS[name],
            "ratioToTxsmtp": vsBase,
            "ratioToPostfix": vsPostfix,
            "cpuMsPerMsgAdded": cost,
            "wallMsPerMsgAdded": wall,
            **log,
        }
        results["ratios"][f"{name}/txsmtp"] = vsBase
        if vsPostfix:
            results["ratios"][f"{name}/postfix"] = vsPostfix


def claimsLine(label: str, q: dict) -> str:
    p95 = f", p95 {q['claimP95Ms']:.1f} ms" if "claimP95Ms" in q else ""
    return (
        f"{label} of {q['queued']:,} messages (filled in {q['fillSeconds']:.0f} s,"
        f" {q['queued'] / q['fillSeconds']:,.0f} msg/s): open {q['openMs']:.0f} ms,"
        f" nextDue {q['nextDueMs']:.1f} ms, claim(100) median {q['claimMedianMs']:.1f} ms{p95},"
        f" max {q['claimMaxMs']:.1f} ms over {q['claims']} claims"
    )


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
            for key in ("cpuMsPerMsg", "otherCpuMsPerMsg"):
                if all(key in r for r in runs):
                    summary[name][key] = statistics.median(r[key] for r in runs)
    results["summary"] = summary
    mode = "new connection per message" if args.new_connections else "reused connections (-d)"
    print(
        f"relay end to end: {args.messages:,} messages of {args.size} octets,"
        f" {args.sessions} sessions, {mode}, median of {args.reps}"
    )
    if any(name in summary for name in PG_NODES):
        print(
            "txsmtp: SQLite queue; txsmtp-pg: PostgreSQL queue, 1 node;"
            " txsmtp-pg2: 2 nodes on one PostgreSQL queue, the load split between them"
        )
    print(f"{'relay':<12}{'msg/s end to end':>18}{'accepted msg/s':>18}{'machine busy':>15}")
    for name, s in summary.items():
        print(
            f"{name:<12}{s['msgPerSec']:>18,.0f}{s['acceptPerSec']:>18,.0f}{s['machineBusy']:>15.0%}"
        )
    print(
        f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
        f" ({os.cpu_count()} CPUs)"
    )
    for name, reason in results["unavailable"].items():
        print(f"{name:<12}  unavailable: {reason}")
    for name, errors in results["errors"].items():
        print(f"{name:<12}  {len(errors)} failed run(s): {errors[0]}")
    results["ratios"] = {}
    for top, bottom, label, goal in RATIOS:
        if top in summary and bottom in summary:
            ratio = summary[top]["msgPerSec"] / summary[bottom]["msgPerSec"]
            results["ratios"][f"{top}/{bottom}"] = ratio
            print(f"{label}: {ratio:.2f}x end to end{goal}")
    if "txsmtp/postfix" in results["ratios"]:
        results["ratio"] = results["ratios"]["txsmtp/postfix"]
    reportMailAuth(results, summary)
    for name, r in results["rss"].items():
        nodes = f" ({PG_NODES[name]} nodes together)" if PG_NODES.get(name, 1) > 1 else ""
        print(
            f"{name} RSS after the runs{nodes}: {r['rssKiB'] / 1024:.1f} MiB"
            f" (peak {r['peakKiB'] / 1024:.1f} MiB)"
        )
    q = results.get("queue")
    if q:
        print(claimsLine("SQLite queue", q))
        if "served" in q:
            print(
                f"twistd started on it: RSS {q['rssKiB'] / 1024:.1f} MiB"
                f" (peak {q['peakKiB'] / 1024:.1f} MiB)"
                f" after relaying {q['served']:,} of them into smtp-sink in {q['serveSeconds']:.0f} s"
                f" ({q['servePerSec']:,.0f} msg/s{', all' if q['drained'] else ''})"
            )
    p = results.get("pgQueue")
    if p:
        print(claimsLine("PostgreSQL queue", p))
        if q:
            ratio = p["claimMedianMs"] / q["claimMedianMs"]
            results["ratios"]["claimMedian pg/sqlite"] = ratio
            print(f"claim(100) median, PostgreSQL / SQLite: {ratio:.2f}x")
    if args.json:
        extra = {"postgresql": relay_pg.serverVersion(args.queue)} if args.queue else None
        results["args"] = {k: v for k, v in vars(args).items() if k != "claim_worker"}
        if args.queue:
            results["args"]["queue"] = relay_pg.redact(args.queue)
        results["machine"] = machineInfo(args.repo, ["twisted", "psycopg"], ["txsmtp"], extra)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
