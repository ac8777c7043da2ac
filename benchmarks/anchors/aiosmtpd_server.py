"""
Anchor server: aiosmtpd's SMTP protocol with the ``Sink`` handler.

A plain single-process asyncio server (no ``Controller`` thread): the event
loop's ``create_server`` listens on 127.0.0.1 and builds one
``aiosmtpd.smtp.SMTP`` protocol per connection, each handing its messages to
``aiosmtpd.handlers.Sink``, which drops them.

With ``--tls-cert`` (and ``--tls-key``) it offers STARTTLS, the way
aiosmtpd's documentation shows: ``SMTP(handler, tls_context=context,
require_starttls=False)`` with a server context from
``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)``, limited to TLS 1.2
and later like txsmtp's.

Usage::

    python3 aiosmtpd_server.py --port 0 [--tls-cert cert.pem --tls-key key.pem]

Once the port is listening, ``LISTENING <port>`` is printed on stdout.
"""

import argparse
import asyncio
import ssl
import sys

from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP

#: aiosmtpd refuses messages above 32 MiB by default; the benchmarks send
#: up to 100 MiB, so allow far more than that.
DATA_SIZE_LIMIT = 2_000_000_000


def serverContext(certPath, keyPath):
    """A server-side TLS context for STARTTLS (TLS 1.2 and later)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certPath, keyPath)
    return context


async def serve(port, backlog, tlsContext=None):
    """Listen on 127.0.0.1:port, announce the port, then serve forever."""
    loop = asyncio.get_running_loop()
    handler = Sink()

    def protocolFactory():
        return SMTP(
            handler,
            data_size_limit=DATA_SIZE_LIMIT,
            hostname="aiosmtpd.bench.invalid",
            tls_context=tlsContext,
            require_starttls=False,
            loop=loop,
        )

    server = await loop.create_server(protocolFactory, host="127.0.0.1", port=port, backlog=backlog)
    actualPort = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"LISTENING {actualPort}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def main(argv=None):
    """Parse the command line and run the server until killed."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument("--backlog", type=int, default=1024, help="listen(2) backlog")
    parser.add_argument("--tls-cert", help="PEM certificate chain: offer STARTTLS")
    parser.add_argument("--tls-key", help="PEM private key (default: the --tls-cert file)")
    args = parser.parse_args(argv)
    tlsContext = None
    if args.tls_cert:
        tlsContext = serverContext(args.tls_cert, args.tls_key or args.tls_cert)
    elif args.tls_key:
        parser.error("--tls-key needs --tls-cert")
    try:
        asyncio.run(serve(args.port, args.backlog, tlsContext))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
