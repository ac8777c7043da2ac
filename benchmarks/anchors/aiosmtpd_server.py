"""
Anchor server: aiosmtpd's SMTP protocol with the ``Sink`` handler.

A plain single-process asyncio server (no ``Controller`` thread): the event
loop's ``create_server`` listens on 127.0.0.1 and builds one
``aiosmtpd.smtp.SMTP`` protocol per connection, each handing its messages to
``aiosmtpd.handlers.Sink``, which drops them.

Usage::

    python3 aiosmtpd_server.py --port 0

Once the port is listening, ``LISTENING <port>`` is printed on stdout.
"""

import argparse
import asyncio
import sys

from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP

#: aiosmtpd refuses messages above 32 MiB by default; the benchmarks send
#: up to 100 MiB, so allow far more than that.
DATA_SIZE_LIMIT = 2_000_000_000


async def serve(port, backlog):
    """Listen on 127.0.0.1:port, announce the port, then serve forever."""
    loop = asyncio.get_running_loop()
    handler = Sink()

    def protocolFactory():
        return SMTP(
            handler,
            data_size_limit=DATA_SIZE_LIMIT,
            hostname="aiosmtpd.bench.invalid",
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
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.port, args.backlog))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
