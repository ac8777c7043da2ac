"""
A DNS of a test's own inside a private network namespace, for programs
that only ask the system's resolver (OpenDKIM's ``opendkim-testmsg``,
policyd-spf).  Run from a script started as ``unshare --mount --net
python3 SCRIPT ...`` (root): :func:`privateResolver` brings up the
loopback interface, answers on 127.0.0.1:53 from zones given as data, and
bind-mounts over /etc/resolv.conf (in the script's own mount namespace) a
file naming that server.  Used by tests/opendkimpeer.py and
tests/policyspfpeer.py.
"""

import contextlib
import fcntl
import os
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator

from twisted.names import dns

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def _strings(text: str | bytes) -> list[bytes]:
    """A TXT record's character-strings: at most 255 octets each (RFC 1035 §3.3.14)."""
    data = text.encode() if isinstance(text, str) else text
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


def _serve(sock: socket.socket, zones: dict) -> None:
    while True:
        data, peer = sock.recvfrom(4096)
        query = dns.Message()
        query.fromStr(data)
        answer = dns.Message(id=query.id, answer=1, recDes=query.recDes, recAv=1, auth=1)
        answer.queries = query.queries
        asked = query.queries[0]
        zone = zones.get(asked.name.name.decode().lower().rstrip("."))
        if zone is None:
            answer.rCode = dns.ENAME
        elif asked.type == dns.TXT:
            answer.answers = [
                dns.RRHeader(asked.name.name, dns.TXT, dns.IN, 60, dns.Record_TXT(*_strings(text)))
                for text in zone.get("TXT", [])
            ]
        elif asked.type == dns.A:
            answer.answers = [
                dns.RRHeader(asked.name.name, dns.A, dns.IN, 60, dns.Record_A(address))
                for address in zone.get("A", [])
            ]
        sock.sendto(answer.toStr(), peer)


@contextlib.contextmanager
def privateResolver(zones: dict) -> Iterator[None]:
    """
    Serve ``zones`` (``{"name": {"TXT": [str or bytes, ...], "A": [...]}}``;
    other names NXDOMAIN) as this namespace's resolver while the block runs.
    """
    zones = {name.lower().rstrip("."): data for name, data in zones.items()}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ifreq = struct.pack("16sH", b"lo", 0)
    flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, ifreq)[:18])[1]
    fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))
    sock.bind(("127.0.0.1", 53))
    threading.Thread(target=_serve, args=(sock, zones), daemon=True).start()
    # The file is removed at the end; the mount over /etc/resolv.conf ends
    # with this process's mount namespace.
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as conf:
        conf.write("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")
    try:
        subprocess.run(["mount", "--bind", conf.name, "/etc/resolv.conf"], check=True)
        yield
    finally:
        os.unlink(conf.name)
