"""
OpenDKIM's ``opendkim-testmsg`` verifies a message with the key of a test,
without real DNS.

It takes its keys from DNS only, through the C library's resolver, so this
script is run as ``unshare --mount --net python3 opendkimpeer.py PROGRAM
NAME RECORD_HEX < message``: in its own network namespace it brings up the
loopback interface, answers on 127.0.0.1:53 the TXT query for ``NAME`` with
``RECORD``, bind-mounts over /etc/resolv.conf (in its own mount namespace) a
file naming that server, and runs ``PROGRAM`` on the message on stdin,
passing on its output and exit status (0: the signature verified).
"""

import fcntl
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


def main() -> int:
    program, name, record = sys.argv[1], sys.argv[2].encode(), bytes.fromhex(sys.argv[3])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ifreq = struct.pack("16sH", b"lo", 0)
    flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, ifreq)[:18])[1]
    fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))
    sock.bind(("127.0.0.1", 53))

    # The file is removed once the program ran; the mount over
    # /etc/resolv.conf ends with this process's mount namespace.
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as conf:
        conf.write("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")
    try:
        subprocess.run(["mount", "--bind", conf.name, "/etc/resolv.conf"], check=True)
        return _serveAndRun(sock, program, name, record)
    finally:
        os.unlink(conf.name)


def _serveAndRun(sock: socket.socket, program: str, name: bytes, record: bytes) -> int:
    """
    Answer DNS queries on ``sock`` in a thread while ``program`` runs.
    """

    def serve() -> None:
        while True:
            data, peer = sock.recvfrom(4096)
            query = dns.Message()
            query.fromStr(data)
            answer = dns.Message(id=query.id, answer=1, recDes=query.recDes, recAv=1, auth=1)
            answer.queries = query.queries
            asked = query.queries[0]
            if asked.name.name.lower().rstrip(b".") == name.lower() and asked.type == dns.TXT:
                # A TXT record is strings of at most 255 bytes, concatenated.
                strings = [record[i:i + 255] for i in range(0, len(record), 255)]
                answer.answers = [
                    dns.RRHeader(asked.name.name, dns.TXT, dns.IN, 60, dns.Record_TXT(*strings))
                ]
            else:
                answer.rCode = dns.ENAME
            sock.sendto(answer.toStr(), peer)

    threading.Thread(target=serve, daemon=True).start()
    result = subprocess.run([program], stdin=sys.stdin.buffer, capture_output=True)
    sys.stdout.buffer.write(result.stdout)
    sys.stderr.buffer.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
