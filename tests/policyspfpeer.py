"""
policyd-spf (postfix-policyd-spf-python) as a policy service on a unix
socket, its DNS answered from a test's zones.

Postfix runs policyd-spf through spawn(8): one process per connection,
the request on its stdin, the answer on its stdout.  This script does the
same on a unix socket.  policyd-spf asks DNS through dnspython, which
reads /etc/resolv.conf, so the script is run as ``unshare --mount --net
python3 policyspfpeer.py SOCKET CONFIG ZONES_JSON``: in its own network
namespace it brings up the loopback interface and answers on
127.0.0.1:53 from ``ZONES_JSON`` (``{"name": {"TXT": [...], "A":
[...]}}``), bind-mounts over /etc/resolv.conf (in its own mount
namespace) a file naming that server, listens on the unix socket
``SOCKET`` (a path: reachable from the test's namespace) and starts
``policyd-spf CONFIG`` for each connection, with the connection as its
stdin and stdout.  It prints ``ready`` once it listens, and ends when its
stdin closes.
"""

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading

from twisted.names import dns

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def serveDNS(sock: socket.socket, zones: dict) -> None:
    zones = {name.lower().rstrip("."): data for name, data in zones.items()}
    while True:
        data, peer = sock.recvfrom(4096)
        query = dns.Message()
        query.fromStr(data)
        answer = dns.Message(id=query.id, answer=1, recDes=query.recDes, recAv=1, auth=1)
        answer.queries = query.queries
        asked = query.queries[0]
        name = asked.name.name.decode().lower().rstrip(".")
        zone = zones.get(name)
        if zone is None:
            answer.rCode = dns.ENAME
        elif asked.type == dns.TXT:
            answer.answers = [
                dns.RRHeader(asked.name.name, dns.TXT, dns.IN, 60, dns.Record_TXT(text.encode()))
                for text in zone.get("TXT", [])
            ]
        elif asked.type == dns.A:
            answer.answers = [
                dns.RRHeader(asked.name.name, dns.A, dns.IN, 60, dns.Record_A(address))
                for address in zone.get("A", [])
            ]
        sock.sendto(answer.toStr(), peer)


def main() -> int:
    path, config, zones = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ifreq = struct.pack("16sH", b"lo", 0)
    flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, ifreq)[:18])[1]
    fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))
    sock.bind(("127.0.0.1", 53))
    threading.Thread(target=serveDNS, args=(sock, zones), daemon=True).start()
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as conf:
        conf.write("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")
    try:
        subprocess.run(["mount", "--bind", conf.name, "/etc/resolv.conf"], check=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
        threading.Thread(target=accept, args=(listener, config), daemon=True).start()
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        # The test ends this process by closing its stdin.
        sys.stdin.read()
        return 0
    finally:
        os.unlink(conf.name)


def accept(listener: socket.socket, config: str) -> None:
    while True:
        connection, _ = listener.accept()
        subprocess.Popen(["policyd-spf", config], stdin=connection.fileno(), stdout=connection.fileno(), close_fds=True)
        connection.close()


if __name__ == "__main__":
    sys.exit(main())
