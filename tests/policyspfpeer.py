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

import json
import socket
import subprocess
import sys
import threading

from nsresolver import privateResolver


def main() -> int:
    path, config, zones = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    with privateResolver(zones):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
        threading.Thread(target=accept, args=(listener, config), daemon=True).start()
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        # The test ends this process by closing its stdin.
        sys.stdin.read()
    return 0


def accept(listener: socket.socket, config: str) -> None:
    while True:
        connection, _ = listener.accept()
        subprocess.Popen(["policyd-spf", config], stdin=connection.fileno(), stdout=connection.fileno(), close_fds=True)
        connection.close()


if __name__ == "__main__":
    sys.exit(main())
