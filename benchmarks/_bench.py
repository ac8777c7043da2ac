"""
Helpers shared by benchmarks/server.py and benchmarks/client.py.

Errors and progress, free ports, CPU time of the machine and of a process
(from /proc), waiting for a quiet machine, repeating a run that other load
disturbed, the ratios between medians, the targets table, and the versions
and machine facts recorded with the results.

This is not part of txsmtp and is not run by itself: both scripts import it
from their own directory (see benchmarks/README.md).
"""

import hashlib
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

HOST = "127.0.0.1"
#: Share of the machine's CPU time spent elsewhere above which we warn.
BUSY_WARNING = 0.10


class BenchError(Exception):
    """A measurement could not be made; the message says why."""


def progress(message):
    """Progress goes to stderr; the report goes to stdout."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Ports, /proc, a quiet machine
# ---------------------------------------------------------------------------


def freePort():
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def readCpuSeconds(pid):
    """User plus system CPU time consumed so far by process C{pid}."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # Fields after the command name start at field 3 (state); utime and
    # stime are fields 14 and 15.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class MachineTime:
    """CPU time of the whole machine, summed over all CPUs, in seconds."""

    total: float
    busy: float
    steal: float

    @classmethod
    def now(cls):
        """Read the counters from the first line of /proc/stat."""
        with open("/proc/stat", encoding="ascii") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:9]]
        # user nice system idle iowait irq softirq steal; guest time is
        # already counted in user and nice.
        hz = os.sysconf("SC_CLK_TCK")
        idle = ticks[3] + ticks[4]
        return cls(sum(ticks) / hz, (sum(ticks) - idle - ticks[7]) / hz, ticks[7] / hz)

    def __sub__(self, other):
        return MachineTime(
            self.total - other.total, self.busy - other.busy, self.steal - other.steal
        )


def otherShare(machine, ownSeconds):
    """
    The share of the machine's CPU time (a L{MachineTime} difference) that
    went to none of the measured processes, whose CPU time is
    C{ownSeconds} (server.py: the server and its load client; client.py:
    the client and smtp-sink): other processes plus hypervisor steal.

    A high share means the run competed with something else and its figure
    is noisy.
    """
    if machine.total <= 0:
        return 0.0
    return max(0.0, machine.busy - ownSeconds + machine.steal) / machine.total


def idleCheck(seconds=1.0):
    """
    How busy the machine is: the share of CPU time used (or stolen) by
    others during C{seconds} in which we do nothing ourselves.
    """
    before = MachineTime.now()
    time.sleep(seconds)
    spent = MachineTime.now() - before
    return otherShare(spent, 0.0)


def waitForQuiet(limit, window=0.5):
    """
    Wait until the machine is quiet (other load below L{BUSY_WARNING} over
    C{window} seconds), for at most C{limit} seconds.

    @return: whether it became quiet in time.
    """
    deadline = time.monotonic() + limit
    while True:
        if idleCheck(window) <= BUSY_WARNING:
            return True
        if time.monotonic() >= deadline:
            return False


def measureQuietly(args, measure, *measureArgs, accept=lambda result: result.ok):
    """
    One measurement, C{measure(*measureArgs)}, protected against other work
    on a shared machine.

    Waits (bounded by C{args.quiet_wait}) for the machine to be quiet first;
    when other load nevertheless spoiled the run, runs it again, up to
    C{args.noisy_retries} times, and keeps the attempt with the least other
    load.

    @param measure: returns a result with C{otherShare} and C{attempts}.
    @param accept: whether a result is worth keeping; one that is not is
        returned at once, without further attempts.
    """
    best = None
    for attempt in range(1, args.noisy_retries + 2):
        waitForQuiet(args.quiet_wait)
        result = measure(*measureArgs)
        result.attempts = attempt
        if not accept(result):
            return result
        if best is None or result.otherShare < best.otherShare:
            best = result
        if result.otherShare <= BUSY_WARNING:
            break
    return best


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def ratio(summary, name, anchor):
    """
    C{name}'s median msg/s over C{anchor}'s, or C{None}.

    C{name} and C{anchor} are keys of C{summary}: a client's name
    (client.py) or a C{(scenario key, server name)} pair (server.py).
    """
    mine = summary.get(name, {}).get("msgPerSec")
    theirs = summary.get(anchor, {}).get("msgPerSec")
    if mine is None or not theirs:
        return None
    return mine / theirs


def cpuRatio(summary, name, anchor):
    """
    C{anchor}'s median CPU time per message over C{name}'s, or C{None}
    (keys as for L{ratio}; the server's CPU time in server.py, the client's
    in client.py): the speed-up as the CPU sees it, which other load on the
    machine disturbs less than wall-clock throughput.
    """
    mine = summary.get(name, {}).get("cpuUsPerMsg")
    theirs = summary.get(anchor, {}).get("cpuUsPerMsg")
    if not mine or theirs is None:
        return None
    return theirs / mine


def formatRatio(value):
    """A ratio as ``1.23x`` or ``-``."""
    return "-" if value is None else f"{value:.2f}x"


def targetsTable(targets, title, targetWidth, shownWidth):
    """The targets, as text: C{title}, then one line per target."""
    lines = [title]
    for t in targets:
        note = f"  ({t['note']})" if t["note"] else ""
        lines.append(
            f"  {t['verdict']:<5} {t['target']:<{targetWidth}} {t['shown']:>{shownWidth}}{note}"
        )
    return "\n".join(lines)


def sourceHash(repo, directories):
    """
    A short hash of the Python sources under C{directories} (relative to
    C{repo}), which tells apart runs of an uncommitted working tree.
    """
    digest = hashlib.sha256()
    for top in directories:
        for directory, _, files in sorted(os.walk(os.path.join(repo, top))):
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    digest.update(os.path.relpath(path, repo).encode())
                    with open(path, "rb") as f:
                        digest.update(f.read())
    return digest.hexdigest()[:12]


def machineInfo(repo, modules, sourceDirectories, extra=None):
    """
    Versions and machine facts recorded alongside the results.

    @param modules: names of the modules whose C{__version__} is recorded
        (C{None} for one that cannot be imported).
    @param sourceDirectories: what L{sourceHash} hashes.
    @param extra: further facts, recorded after the modules' versions.
    """
    info = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }
    for module in modules:
        try:
            info[module] = __import__(module).__version__
        except Exception:
            info[module] = None
    info.update(extra or {})
    info["txsmtpSourceHash"] = sourceHash(repo, sourceDirectories)
    try:
        rev = subprocess.run(
            ["git", "-C", repo, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        info["repoRevision"] = rev.stdout.strip() if rev.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        info["repoRevision"] = None
    return info
