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

import subprocess
import sys

from nsresolver import privateResolver


def main() -> int:
    program, name, record = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
    with privateResolver({name: {"TXT": [record]}}):
        result = subprocess.run([program], stdin=sys.stdin.buffer, capture_output=True)
    sys.stdout.buffer.write(result.stdout)
    sys.stderr.buffer.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
