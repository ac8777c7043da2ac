"""
A real DNSSEC setup on loopback for the DANE tests: zones signed with
``ldns-signzone``, served by ``nsd``, validated by ``unbound``.

:func:`startUnbound` (in a trial test case) does, in a temporary directory:

1. writes each zone of a :class:`Zone` list as a master file; for a signed
   zone, makes a key with ``ldns-keygen`` (ECDSA P-256, used as a combined
   KSK/ZSK), signs the zone with ``ldns-signzone`` and keeps the DS record
   as a trust anchor; a zone with ``corrupt`` set has the rdata of its
   records of that owner and type changed *after* signing, so that their
   signatures no longer verify (bogus);
2. runs ``nsd -d`` (foreground) as the authoritative server of every zone
   on 127.0.0.1 and an ephemeral port, with its own configuration (no
   chroot, no privilege change, no control socket);
3. runs ``unbound -d`` as a validating resolver on 127.0.0.1 and another
   ephemeral port: one ``stub-zone`` per zone pointing at nsd,
   ``do-not-query-localhost: no``, the DS records of the signed zones in a
   ``trust-anchor-file``.  Unsigned zones have no anchor: their answers are
   validated as *insecure* (no AD bit).

Readiness is checked with real DNS queries with short timeouts, in a
bounded loop (no sleeps): nsd must answer the SOA of the first zone, then
unbound must answer it too.  Both processes are stopped in the test's
cleanup.  The programs are found through :func:`tests.peers.requirePeer`
(Debian packages ``nsd``, ``unbound``, ``ldnsutils``): missing, the test
is skipped, or fails under ``TXSMTP_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.names import dns
from twisted.trial import unittest

from tests.peers import requirePeer

__all__ = ["Zone", "RunningUnbound", "startUnbound"]

_REACTOR: Any = reactor

#: The bounded number of readiness probes, and each one's timeout.
_PROBES = 60
_PROBE_TIMEOUT = 0.25


@dataclass
class Zone:
    """
    A zone to serve.

    :ivar origin: the zone's name, without the final dot.
    :ivar records: master file lines relative to the origin (``"mx IN A
        127.0.0.1"``); the SOA and NS records are added.
    :ivar signed: sign it and trust its key.
    :ivar corrupt: ``(owner, type)`` (owner relative to the origin) whose
        rdata is altered after signing.
    """

    origin: str
    records: list[str] = field(default_factory=list)
    signed: bool = True
    corrupt: tuple[str, str] | None = None


@dataclass
class RunningUnbound:
    """The running pair: where to ask."""

    #: unbound's address and port (the validating resolver)
    host: str
    port: int
    #: nsd's port (authoritative, on the same host)
    authPort: int
    directory: str


def _freePort() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the kernel's choice)."""
    for _ in range(20):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
        finally:
            tcp.close()
            udp.close()
    raise RuntimeError("no free port")


def _zoneText(zone: Zone) -> str:
    origin = zone.origin + "."
    lines = [
        f"$ORIGIN {origin}",
        "$TTL 300",
        f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 300",
        f"@ IN NS ns.{origin}",
        "ns IN A 127.0.0.1",
    ]
    return "\n".join(lines + zone.records) + "\n"


def _run(args: list[str], cwd: str) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _corrupt(path: str, zone: Zone) -> None:
    """Change one hex digit of the rdata of the corrupt owner/type."""
    assert zone.corrupt is not None
    owner, rrType = zone.corrupt
    fqdn = f"{owner}.{zone.origin}." if owner != "@" else zone.origin + "."
    with open(path) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        parts = line.split()
        if len(parts) > 4 and parts[0].lower() == fqdn.lower() and parts[3] == rrType:
            last = parts[-1]
            parts[-1] = last[:-1] + ("0" if last[-1] != "0" else "1")
            lines[i] = "\t".join(parts)
            break
    else:
        raise RuntimeError(f"no {rrType} record at {fqdn} to corrupt")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _prepareZones(directory: str, zones: list[Zone], keygen: str, signzone: str) -> tuple[list[str], list[str]]:
    """Write (and sign) the zones; return the zone file paths and the DS records."""
    files, anchors = [], []
    for zone in zones:
        path = os.path.join(directory, f"{zone.origin}.zone")
        with open(path, "w") as f:
            f.write(_zoneText(zone))
        if zone.signed:
            base = _run([keygen, "-a", "ECDSAP256SHA256", "-k", zone.origin], directory).strip()
            _run([signzone, "-f", path + ".signed", path, base], directory)
            with open(os.path.join(directory, base + ".ds")) as f:
                anchors.append(f.read().strip())
            path += ".signed"
            if zone.corrupt is not None:
                _corrupt(path, zone)
        files.append(path)
    return files, anchors


class _Process(protocol.ProcessProtocol):
    """A child whose output is kept (bounded) and whose end is awaited."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.output = b""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-16384:]

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.running = False
        self.ended.callback(None)

    async def stop(self) -> None:
        if not self.running:
            return
        assert self.transport is not None
        self.transport.signalProcess("TERM")
        timer = _REACTOR.callLater(10, self._kill)
        await self.ended
        if timer.active():
            timer.cancel()

    def _kill(self) -> None:
        if self.running and self.transport is not None:
            self.transport.signalProcess(signal.SIGKILL)


def _spawn(testCase: unittest.TestCase, name: str, args: list[str]) -> _Process:
    process = _Process(name)
    _REACTOR.spawnProcess(process, args[0], args, env=os.environ.copy(), childFDs={0: "w", 1: "r", 2: "r"})
    testCase.addCleanup(lambda: defer.Deferred.fromCoroutine(process.stop()))
    return process


class _Probe(protocol.DatagramProtocol):
    """One SOA query from an unconnected socket: no answer is a timeout."""

    def __init__(self, port: int, name: str) -> None:
        self.port = port
        self.message = dns.Message(id=os.getpid() & 0xFFFF, recDes=1)
        self.message.queries = [dns.Query(name, dns.SOA, dns.IN)]
        self.answered: defer.Deferred[None] = defer.Deferred()

    def startProtocol(self) -> None:
        assert self.transport is not None
        self.transport.write(self.message.toStr(), ("127.0.0.1", self.port))

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        answer = dns.Message()
        try:
            answer.fromStr(data)
        except Exception:
            return
        if answer.id == self.message.id and answer.rCode == dns.OK and answer.answers and not self.answered.called:
            self.answered.callback(None)


async def _waitReady(process: _Process, port: int, name: str) -> None:
    """Real queries, each with a short timeout, a bounded number of times."""
    for _ in range(_PROBES):
        if not process.running:
            break
        probe = _Probe(port, name)
        listening = _REACTOR.listenUDP(0, probe, interface="127.0.0.1")
        try:
            await probe.answered.addTimeout(_PROBE_TIMEOUT, _REACTOR)
            return
        except defer.TimeoutError:
            continue
        finally:
            await defer.maybeDeferred(listening.stopListening)
    raise RuntimeError(
        f"{process.name} did not answer on 127.0.0.1:{port}: {process.output.decode('utf-8', 'replace')}"
    )


async def startUnbound(testCase: unittest.TestCase, zones: list[Zone]) -> RunningUnbound:
    """
    Sign and serve ``zones`` and start a validating unbound in front of
    them; everything is stopped and removed in ``testCase``'s cleanup.
    """
    nsd = requirePeer("nsd")
    unbound = requirePeer("unbound")
    keygen = requirePeer("ldns-keygen")
    signzone = requirePeer("ldns-signzone")

    directory = tempfile.mkdtemp(prefix="txsmtp-unbound-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    files, anchors = _prepareZones(directory, zones, keygen, signzone)

    authPort = _freePort()
    nsdConf = os.path.join(directory, "nsd.conf")
    with open(nsdConf, "w") as f:
        f.write(
            "server:\n"
            f"  ip-address: 127.0.0.1\n  port: {authPort}\n"
            '  username: ""\n  chroot: ""\n  database: ""\n'
            f'  zonesdir: "{directory}"\n  pidfile: "{directory}/nsd.pid"\n'
            f'  xfrdfile: "{directory}/xfrd.state"\n  zonelistfile: "{directory}/zone.list"\n'
            f'  xfrdir: "{directory}"\n  logfile: "{directory}/nsd.log"\n'
            "  server-count: 1\n  verbosity: 1\n  hide-version: yes\n  reuseport: no\n"
            "remote-control:\n  control-enable: no\n"
        )
        for zone, path in zip(zones, files, strict=True):
            f.write(f"zone:\n  name: {zone.origin}\n  zonefile: \"{path}\"\n")
    nsdProcess = _spawn(testCase, "nsd", [nsd, "-d", "-c", nsdConf])
    await _waitReady(nsdProcess, authPort, zones[0].origin)

    port = _freePort()
    anchorFile = os.path.join(directory, "anchors.ds")
    with open(anchorFile, "w") as f:
        f.write("\n".join(anchors) + "\n")
    unboundConf = os.path.join(directory, "unbound.conf")
    with open(unboundConf, "w") as f:
        f.write(
            "server:\n"
            f"  interface: 127.0.0.1\n  port: {port}\n"
            '  chroot: ""\n  username: ""\n'
            f'  directory: "{directory}"\n  pidfile: "{directory}/unbound.pid"\n'
            '  logfile: ""\n  use-syslog: no\n  do-daemonize: no\n'
            "  do-ip6: no\n  do-not-query-localhost: no\n  num-threads: 1\n"
            "  verbosity: 1\n  val-log-level: 2\n"
            '  module-config: "validator iterator"\n'
            f'  trust-anchor-file: "{anchorFile}"\n'
            "  access-control: 127.0.0.0/8 allow\n"
            # unbound answers the special-use names of RFC 6761 (test.
            # among them) itself, unless told not to.
            '  local-zone: "test." nodefault\n'
            "  prefetch: no\n  qname-minimisation: no\n"
            "  so-reuseport: no\n  outgoing-range: 64\n"
            "remote-control:\n  control-enable: no\n"
        )
        for zone in zones:
            f.write(f"stub-zone:\n  name: {zone.origin}\n  stub-addr: 127.0.0.1@{authPort}\n")
    unboundProcess = _spawn(testCase, "unbound", [unbound, "-d", "-c", unboundConf])
    await _waitReady(unboundProcess, port, zones[0].origin)
    return RunningUnbound(host="127.0.0.1", port=port, authPort=authPort, directory=directory)
