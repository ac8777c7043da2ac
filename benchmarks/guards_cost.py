"""
What the guards in front of a delivery cost per message on the server's
hot path: the same conversation through txsmtp's server (in memory,
:class:`txsmtp.testing.ServerHarness`: no sockets, so the guards' share is
not hidden by I/O), to a :class:`~txsmtp.testing.MemoryDelivery` alone and
behind :class:`~txsmtp.guards.GuardedDelivery` with ``twistd smtp``'s
default limits (a per-address connection cap of 20, no rates; the client
not exempt, so every MAIL and RCPT goes through the guard), in
interleaved rounds; CPU time of this
process, median of the rounds, and the ratio.

    python3 benchmarks/guards_cost.py [--messages 5000] [--rounds 7] [--rates]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(delivery: object, messages: int) -> float:
    from txsmtp.testing import ServerHarness

    h = ServerHarness(delivery)
    h.command(b"EHLO client.example")
    body = b"Subject: x\r\n\r\n" + b"y" * 1000 + b"\r\n.\r\n"
    start = time.process_time()
    for _ in range(messages):
        h.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        h.send(body)
    spent = time.process_time() - start
    h.disconnect()
    return spent / messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rates", action="store_true", help="also a message and a recipient rate (never reached)")
    args = parser.parse_args()

    from twisted.internet import task

    from txsmtp.guards import GuardedDelivery
    from txsmtp.limits import LimitsGuard, parseRate
    from txsmtp.testing import MemoryDelivery

    def plain() -> object:
        return MemoryDelivery()

    def guarded() -> object:
        rates = dict(messageRate=parseRate("1000000/1s"), recipientRate=parseRate("1000000/1s")) if args.rates else {}
        guard = LimitsGuard(task.Clock(), maxConnections=20, exempt=(), **rates)
        return GuardedDelivery(MemoryDelivery(), [guard])

    results: dict[str, list[float]] = {"plain": [], "guarded": []}
    for _ in range(args.rounds):
        for name, make in (("plain", plain), ("guarded", guarded)):
            results[name].append(run(make(), args.messages))
    p, g = statistics.median(results["plain"]), statistics.median(results["guarded"])
    print(f"CPU µs per message (median of {args.rounds} rounds of {args.messages}):")
    print(f"  delivery alone          {p:8.1f}")
    print(f"  behind the limits guard {g:8.1f}   ratio {g / p:.2f}x (+{g - p:.1f} µs)")


if __name__ == "__main__":
    main()
