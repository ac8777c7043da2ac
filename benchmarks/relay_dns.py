"""
The DNS of the relay benchmark's ``--mailauth`` runs (benchmarks/relay.py):
an authoritative twisted.names server on 127.0.0.1, in a process of its
own, serving the zones given as JSON on stdin (the format of
``tests/dnsserver.py``, which does the serving).  It prints its port on a
line of stdout, then serves until it is terminated.

Not part of the tests; see benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Cleanups:
    """What startDNSServer asks of a test case: somewhere to put its cleanups."""

    def __init__(self) -> None:
        self.cleanups: list = []

    def addCleanup(self, f, *args, **kwargs) -> None:
        self.cleanups.append((f, args, kwargs))


def main() -> int:
    sys.path.insert(0, REPO)
    from twisted.internet import reactor

    from tests.dnsserver import startDNSServer

    zones = json.loads(sys.stdin.readline())
    for entry in zones.values():
        if isinstance(entry, dict) and "MX" in entry:
            entry["MX"] = [tuple(mx) for mx in entry["MX"]]
    running = startDNSServer(_Cleanups(), zones)  # type: ignore[arg-type]
    print(running.port, flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
