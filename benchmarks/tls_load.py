"""
A STARTTLS load client: one message per connection, each upgraded to TLS.

Postfix's ``smtp-source`` cannot do TLS, so the benchmarks use this instead
for the STARTTLS scenario.  It keeps ``--sessions`` connections busy at once
(default 20) until ``--messages`` messages (default 2000) have been sent.
Every session does, waiting for each reply before the next command::

    connect, 220 greeting
    EHLO                      250
    STARTTLS                  220
    (TLS handshake: a full one every time, no session resumption)
    EHLO                      250
    MAIL FROM:<...>           250
    RCPT TO:<...>             250
    DATA                      354
    message, final dot        250
    QUIT                      221
    close

Every reply code is checked; the first unexpected one, or a timeout, stops
the run with exit status 1 and a message on stderr.

It is a single asyncio process, on uvloop when uvloop is installed (its TLS
layer costs the client about a quarter less CPU than asyncio's own;
``--loop`` chooses).  The server certificate is not verified (less client
work; the benchmark's own certificate is self-signed), and the client offers
its default TLS versions, so TLS 1.3 is negotiated with servers that have
it.  The report includes the client's own CPU time, so that a run whose
client was the bottleneck can be recognised: a client using close to 100 %
of one CPU is the limit, not the server.

Usage::

    python3 tls_load.py --port 8025 [--sessions 20] [--messages 2000] [--size 1024] [--json]

It needs Python 3.11 or later (``StreamWriter.start_tls``).

Without ``--json`` a line for people is printed; with it, one JSON object
(messages, seconds, msgPerSec, clientCpuSeconds, clientCpuShare, tls, loop).
The time is measured from the first connection to the last close, so
interpreter start-up does not count.
"""

import argparse
import asyncio
import json
import ssl
import sys
import time

CLIENT_NAME = "client.bench.invalid"
SENDER = "sender@bench.invalid"
RECIPIENT = "recipient@bench.invalid"


class LoadError(Exception):
    """The server answered something unexpected; the message says what."""


def makeBody(size):
    """
    A message of exactly C{size} octets (C{size} >= 200): a few headers,
    then lines of at most 78 characters, every line ending in CRLF, with no
    line starting with a dot.
    """
    header = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: tls benchmark\r\n"
        "Message-ID: <bench@bench.invalid>\r\n\r\n"
    ).encode("ascii")
    remaining = size - len(header)
    if remaining < 2:
        raise ValueError("--size too small")
    lines = []
    while remaining > 0:
        n = min(80, remaining)
        if remaining - n == 1:
            # Never leave a single octet: a line needs at least CRLF.
            n -= 1
        lines.append(b"x" * (n - 2) + b"\r\n")
        remaining -= n
    body = header + b"".join(lines)
    assert len(body) == size
    return body


def clientContext():
    """TLS for the client: no certificate verification, default versions."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def readReply(reader, expected, what):
    """Read one (possibly multi-line) reply; raise LoadError unless its code is C{expected}."""
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise LoadError(
                f"connection closed waiting for the reply to {what} (got {line[:80]!r})"
            )
        if len(line) < 4 or line[3:4] != b"-":
            break
    if line[:3] != expected:
        raise LoadError(f"{what}: expected {expected.decode()}, got {line.rstrip()[:120]!r}")


class Load:
    """Shared state of one run: what is left to send and what was seen."""

    def __init__(self, host, port, messages, body, context, timeout):
        self.host = host
        self.port = port
        self.remaining = messages
        self.sent = 0
        self.body = body
        self.context = context
        self.timeout = timeout
        self.tlsVersion = None
        self.cipher = None
        self.commands = (
            b"EHLO " + CLIENT_NAME.encode() + b"\r\n",
            b"MAIL FROM:<" + SENDER.encode() + b">\r\n",
            b"RCPT TO:<" + RECIPIENT.encode() + b">\r\n",
        )

    async def oneMessage(self):
        """One connection, one message, as described at the top."""
        async with asyncio.timeout(self.timeout):
            await self._oneMessage()

    async def _oneMessage(self):
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            ehlo, mail, rcpt = self.commands
            await readReply(reader, b"220", "the greeting")
            writer.write(ehlo)
            await readReply(reader, b"250", "EHLO")
            writer.write(b"STARTTLS\r\n")
            await readReply(reader, b"220", "STARTTLS")
            await writer.start_tls(self.context)
            if self.tlsVersion is None:
                sslObject = writer.get_extra_info("ssl_object")
                self.tlsVersion = sslObject.version()
                self.cipher = sslObject.cipher()[0]
            writer.write(ehlo)
            await readReply(reader, b"250", "EHLO after STARTTLS")
            writer.write(mail)
            await readReply(reader, b"250", "MAIL")
            writer.write(rcpt)
            await readReply(reader, b"250", "RCPT")
            writer.write(b"DATA\r\n")
            await readReply(reader, b"354", "DATA")
            writer.write(self.body + b".\r\n")
            await readReply(reader, b"250", "the final dot")
            writer.write(b"QUIT\r\n")
            await readReply(reader, b"221", "QUIT")
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 5)
            except (OSError, ssl.SSLError, asyncio.TimeoutError):
                # The server closed first; that is fine after 221.
                pass

    async def worker(self):
        while self.remaining > 0:
            self.remaining -= 1
            await self.oneMessage()
            self.sent += 1


async def run(host, port, sessions, messages, size, timeout):
    load = Load(host, port, messages, makeBody(size), clientContext(), timeout)
    cpuBefore = time.process_time()
    started = time.perf_counter()
    workers = [asyncio.ensure_future(load.worker()) for _ in range(min(sessions, messages))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpuBefore
    return {
        "messages": load.sent,
        "sessions": sessions,
        "size": size,
        "seconds": elapsed,
        "msgPerSec": load.sent / elapsed,
        "clientCpuSeconds": cpu,
        "clientCpuShare": cpu / elapsed,
        "tls": f"{load.tlsVersion}/{load.cipher}",
    }


def eventLoopRunner(choice):
    """
    Return C{(name, run)}: the event loop to use and a function running a
    coroutine on it, for C{choice} "auto", "uvloop" or "asyncio".
    """
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit(
                    "tls_load: --loop uvloop: uvloop is not installed (pip install uvloop)"
                ) from None
        else:
            return "uvloop", uvloop.run
    return "asyncio", asyncio.run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--sessions", type=int, default=20, help="concurrent sessions (default %(default)s)"
    )
    parser.add_argument(
        "--messages", type=int, default=2000, help="messages in all (default %(default)s)"
    )
    parser.add_argument(
        "--size", type=int, default=1024, help="message size in octets (default %(default)s)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60,
        help="limit for one session, seconds (default %(default)s)",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop: uvloop when installed (auto, the default), or asyncio's own",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.messages < 1 or args.size < 200:
        parser.error("--sessions and --messages must be at least 1, --size at least 200")
    loopName, runner = eventLoopRunner(args.loop)
    try:
        result = runner(
            run(args.host, args.port, args.sessions, args.messages, args.size, args.timeout)
        )
    except TimeoutError:
        print(f"tls_load: a session took longer than {args.timeout:g} s", file=sys.stderr)
        return 1
    except (LoadError, OSError, ssl.SSLError) as e:
        what = str(e) or type(e).__name__
        print(f"tls_load: {what}", file=sys.stderr)
        return 1
    result["loop"] = loopName
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['messages']} messages in {result['seconds']:.2f} s = {result['msgPerSec']:.0f} msg/s "
            f"({args.sessions} sessions, {result['tls']}, {loopName}; "
            f"client CPU {result['clientCpuShare']:.0%} of one core, "
            f"{result['clientCpuSeconds'] / result['messages'] * 1e6:.0f} us per message)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
